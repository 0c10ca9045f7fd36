import { isIPv4 } from "node:net";

/**
 * The network a client address belongs to for limits and greylisting: its /24 for IPv4, its /64
 * for IPv6 (one customer's allocation; a host rotates freely inside it).
 */
export function clientNet(ip: string): string {
  if (isIPv4(ip)) return `${ip.split(".").slice(0, 3).join(".")}.0/24`;
  return `${expandIpv6(ip).slice(0, 4).join(":")}::/64`;
}

/** The eight groups of an IPv6 address, without leading zeros ("2001:db8::1" → 2001, db8, 0 … 1). */
function expandIpv6(ip: string): string[] {
  const [head, tail = ""] = ip.toLowerCase().split("::");
  const part = (text: string) => (text === "" ? [] : text.split(":"));
  const left = part(head);
  const right = part(tail);
  // An embedded IPv4 tail (::ffff:192.0.2.1) fills two groups; only the first four groups matter here.
  const fill = Array(Math.max(0, 8 - left.length - right.length)).fill("0");
  return [...left, ...(ip.includes("::") ? fill : []), ...right].map((group) => group.replace(/^0+(?=.)/, ""));
}
