import { BlockList, isIP, isIPv4 } from "node:net";

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** "127.0.0.1:2525", "[::1]:2525" or "mx.example.test:25" → { host, port }; undefined when malformed. */
export function parseHostPort(text: string): HostPort | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(text.trim());
  if (!match) return undefined;
  const host = match[1] ?? match[2];
  const port = Number(match[3]);
  // Port 0 asks the OS for a free port (tests, and `--listen 127.0.0.1:0`).
  if (port > 65535) return undefined;
  if (match[1] !== undefined && isIP(host) !== 6) return undefined;
  return { host, port };
}

export function formatHostPort({ host, port }: HostPort): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Strips the `::ffff:` prefix of IPv4-mapped IPv6 addresses, so one client has one form. */
export function normalizeIp(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return mapped ? mapped[1] : ip.toLowerCase();
}

/**
 * The client a connection counts against for per-client limits: an IPv4 address as it is, an IPv6
 * address by its /64 ("2001:db8:1:2::/64"), since one site is routinely given a whole /64 and can
 * take a new address from it for every connection.
 */
export function clientGroup(ip: string): string {
  const address = normalizeIp(ip);
  if (isIP(address) !== 6) return address;
  const hextets = ipv6Hextets(address);
  return `${hextets.slice(0, 4).join(":")}::/64`;
}

/** The eight groups of a valid IPv6 address, in lower-case hex without leading zeros. */
export function ipv6Hextets(address: string): string[] {
  let text = address.split("%")[0];
  // A trailing dotted quad (::ffff:192.0.2.1, 64:ff9b::192.0.2.1) stands for the last two groups.
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (quad) {
    const [a, b, c, d] = quad.slice(1).map(Number);
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split("::");
  const left = head ? head.split(":") : [];
  const right = tail === undefined ? [] : tail ? tail.split(":") : [];
  const zeros = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill("0");
  return [...left, ...zeros, ...right].map((group) => Number.parseInt(group, 16).toString(16));
}

export interface Cidr {
  readonly address: string;
  readonly prefix: number;
  readonly family: 4 | 6;
}

/** "192.0.2.0/24", "2001:db8::/32" or a bare address (a /32 or /128); undefined when malformed. */
export function parseCidr(text: string): Cidr | undefined {
  const [address, prefixText, extra] = text.trim().split("/");
  if (extra !== undefined) return undefined;
  const family = isIP(address);
  if (family === 0) return undefined;
  const max = family === 4 ? 32 : 128;
  if (prefixText !== undefined && !/^\d{1,3}$/.test(prefixText)) return undefined;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (prefix > max) return undefined;
  return { address, prefix, family: family as 4 | 6 };
}

/** Client addresses a NetworkList remembers its answer for; the map starts over when full. */
const REMEMBERED_ANSWERS = 4096;

/** A set of networks; `has` answers for IPv4, IPv6 and IPv4-mapped IPv6 addresses alike. */
export class NetworkList {
  readonly #blocks = new BlockList();
  readonly #answers = new Map<string, boolean>();
  readonly size: number;

  constructor(entries: Iterable<string | Cidr>) {
    let size = 0;
    for (const entry of entries) {
      const cidr = typeof entry === "string" ? parseCidr(entry) : entry;
      if (!cidr) throw new Error(`"${String(entry)}" is not an IP address or CIDR network`);
      this.#blocks.addSubnet(cidr.address, cidr.prefix, cidr.family === 4 ? "ipv4" : "ipv6");
      size++;
    }
    this.size = size;
  }

  has(ip: string): boolean {
    // BlockList.check builds a SocketAddress per call, and the same client is asked about at every
    // phase (relay access, trust, rate-limit exemptions): answers are remembered.
    let answer = this.#answers.get(ip);
    if (answer === undefined) {
      if (this.#answers.size >= REMEMBERED_ANSWERS) this.#answers.clear();
      const address = normalizeIp(ip);
      answer = isIP(address) !== 0 && this.#blocks.check(address, isIPv4(address) ? "ipv4" : "ipv6");
      this.#answers.set(ip, answer);
    }
    return answer;
  }
}
