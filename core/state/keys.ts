import { isIPv4 } from "node:net";
import { ipv6Hextets } from "../toolkit/netaddr.js";

/**
 * The network a client address belongs to for limits and greylisting: its /24 for IPv4, its /64
 * for IPv6 (one customer's allocation; a host rotates freely inside it).
 */
export function clientNet(ip: string): string {
  if (isIPv4(ip)) return `${ip.split(".").slice(0, 3).join(".")}.0/24`;
  return `${ipv6Hextets(ip).slice(0, 4).join(":")}::/64`;
}
