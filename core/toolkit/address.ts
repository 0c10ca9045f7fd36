/**
 * Envelope address syntax (RFC 5321 §4.1.2, with RFC 6531 UTF-8) and the one canonical domain form
 * that relay checks, policy matching and delivery all use. Anything ambiguous is refused here, so a
 * later stage never has to guess which domain an address "really" names.
 */

import { isIPv4, isIPv6 } from "node:net";
import { domainToASCII, domainToUnicode } from "node:url";
import type { Address } from "../contract/api.js";
import { type Reply, reply } from "../contract/decision.js";

export interface AddressProblem {
  readonly reply: Reply;
  /** For the log only; the client sees `reply`. */
  readonly reason: string;
}

export function isAddressProblem(result: Address | AddressProblem): result is AddressProblem {
  return "reply" in result;
}

const BAD_SENDER = reply(501, "5.1.3", "Bad sender address syntax");
const BAD_RECIPIENT = reply(501, "5.1.3", "Bad recipient address syntax");

// RFC 5321 §4.5.3.1: limits in octets; the path limit counts the angle brackets.
const MAX_LOCAL = 64;
const MAX_DOMAIN = 255;
const MAX_PATH = 256;
const MAX_LABEL = 63;

// C0, DEL and C1: never valid anywhere in a path, not even quoted or as UTF-8.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
// atext plus UTF-8 (RFC 6531); C1 controls are excluded by starting at U+00A0.
const DOT_STRING =
  /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u00a0-\u{10ffff}]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u00a0-\u{10ffff}]+)*$/u;
const QUOTED_STRING = /^"(?:[\u0020\u0021\u0023-\u005b\u005d-\u007e\u00a0-\u{10ffff}]|\\[\u0020-\u007e])*"$/u;
// Only used to find where a quoted local part ends; QUOTED_STRING then checks its content.
const QUOTED_PREFIX = /^"(?:[^"\\]|\\.)*"/su;
const LDH_LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
const PLAIN_LABEL = /^[A-Za-z0-9-]+$/;
const ACE_PREFIX = /^xn--/i;
// RFC 5321 §4.1.2 A-d-l: "@a.test,@b.test:" before the mailbox.
const SOURCE_ROUTE = /^(@[^,:@]*(?:,@[^,:@]*)*):/;

/**
 * Lower-case ASCII (punycode) form of a domain, trailing dot removed; undefined when it is not a
 * valid host name. A Unicode label must already be in its IDNA-mapped form (only case may differ):
 * full-width letters or an ideographic full stop would otherwise turn into a different domain than
 * the one the client wrote, and an all-numeric last label (`0x7f.1` → `127.0.0.1`) into an address.
 */
export function asciiDomain(domain: string): string | undefined {
  // The same few names come by again and again (senders, PTR names, HELO names): answers are kept.
  const known = asciiDomains.get(domain);
  if (known !== undefined) return known ?? undefined;
  if (asciiDomains.size >= REMEMBERED_DOMAINS) asciiDomains.clear();
  const ascii = toAsciiDomain(domain);
  asciiDomains.set(domain, ascii ?? null);
  return ascii;
}

/** Domains whose ASCII form (or null: not a host name) asciiDomain remembers; it starts over when full. */
const REMEMBERED_DOMAINS = 10_000;
const asciiDomains = new Map<string, string | null>();

function toAsciiDomain(domain: string): string | undefined {
  const name = domain.endsWith(".") ? domain.slice(0, -1) : domain;
  if (name === "" || Buffer.byteLength(name) > MAX_DOMAIN) return undefined;
  // domainToASCII silently drops tab, CR and LF (WHATWG URL rules): "in\r\njected" would pass as "injected".
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
  if (/[\u0000-\u0020\u007f]/.test(name)) return undefined;
  const labels = name.split(".");
  const asciiLabels: string[] = [];
  for (const label of labels) {
    // Most labels are plain ASCII letters, digits and hyphens, for which IDNA only lower-cases
    // (measured: domainToASCII was 1–2 % of the gateway's CPU); "xn--" labels still go
    // through it to be checked.
    const ascii = PLAIN_LABEL.test(label) && !ACE_PREFIX.test(label) ? label.toLowerCase() : domainToASCII(label);
    if (!LDH_LABEL.test(ascii) || ascii.length > MAX_LABEL) return undefined;
    if (/\P{ASCII}/u.test(label) && domainToUnicode(ascii) !== label.toLowerCase()) return undefined;
    asciiLabels.push(ascii);
  }
  if (/^\d+$/.test(asciiLabels[asciiLabels.length - 1])) return undefined;
  const ascii = asciiLabels.join(".");
  return ascii.length > MAX_DOMAIN ? undefined : ascii;
}

/** `[192.0.2.1]` or `[IPv6:2001:db8::1]`, lower-cased; undefined for anything else in brackets. */
function addressLiteral(domain: string): string | undefined {
  const inner = domain.slice(1, -1);
  if (isIPv4(inner)) return `[${inner}]`;
  const v6 = /^ipv6:(.*)$/i.exec(inner);
  // A zone index (`%eth0`) names an interface of the sender's host, not anything we could reach.
  if (v6 && isIPv6(v6[1]) && !v6[1].includes("%")) return `[ipv6:${v6[1].toLowerCase()}]`;
  return undefined;
}

function splitMailbox(mailbox: string): { local: string; domain: string } | undefined {
  if (mailbox.startsWith('"')) {
    const quoted = QUOTED_PREFIX.exec(mailbox);
    if (!quoted || mailbox[quoted[0].length] !== "@") return undefined;
    return { local: quoted[0], domain: mailbox.slice(quoted[0].length + 1) };
  }
  const at = mailbox.indexOf("@");
  if (at < 0) return undefined;
  // Everything after the first unquoted "@" is the domain, so `a@b@c` fails as a domain with "@" in it.
  return { local: mailbox.slice(0, at), domain: mailbox.slice(at + 1) };
}

function localPartProblem(local: string): string | undefined {
  if (local === "" || local === '""') return "empty local part";
  if (Buffer.byteLength(local) > MAX_LOCAL) return `local part longer than ${MAX_LOCAL} octets`;
  if (local.startsWith('"') ? !QUOTED_STRING.test(local) : !DOT_STRING.test(local)) return "invalid local part";
  return undefined;
}

/**
 * Parses an envelope address as smtp-server hands it over (without the angle brackets; a source
 * route, which smtp-server strips already, is checked and dropped here too).
 *
 * `nullAllowed` says which command the address came with: true for MAIL FROM (`""` is the null
 * sender), false for RCPT TO (the domainless `postmaster` of RFC 5321 §4.1.1.3 is allowed and comes
 * back as local "postmaster", domain ""). It also picks the sender or recipient wording of the 501.
 *
 * The returned `domain` is the lower-case ASCII form (see `asciiDomain`) or a lower-cased address
 * literal; `local` is kept exactly as written, quotes included, since local parts are case-sensitive.
 *
 * @example
 * parseEnvelopeAddress("User@Bücher.example", {}, { nullAllowed: false })
 * // → { address: "User@Bücher.example", local: "User", domain: "xn--bcher-kva.example", args: {} }
 */
export function parseEnvelopeAddress(
  raw: string,
  args: Record<string, string | boolean>,
  options: { nullAllowed: boolean },
): Address | AddressProblem {
  const bad = options.nullAllowed ? BAD_SENDER : BAD_RECIPIENT;
  const problem = (reason: string): AddressProblem => ({ reply: bad, reason });
  const params = Object.freeze(
    Object.fromEntries(Object.entries(args).map(([key, value]) => [key.toUpperCase(), value])),
  );
  const address = (mailbox: string, local: string, domain: string): Address =>
    Object.freeze({ address: mailbox, local, domain, args: params });

  if (raw === "") return options.nullAllowed ? address("", "", "") : problem("null address as recipient");
  if (CONTROL.test(raw)) return problem("control character in address");
  if (Buffer.byteLength(raw) + 2 > MAX_PATH) return problem(`path longer than ${MAX_PATH} octets`);

  let mailbox = raw;
  const route = SOURCE_ROUTE.exec(raw);
  if (route) {
    // RFC 5321 §3.6.1: the route is to be ignored, but a malformed one means the whole path is.
    const hops = route[1].split(",").map((hop) => hop.slice(1));
    if (hops.some((hop) => hop.endsWith(".") || asciiDomain(hop) === undefined)) return problem("invalid source route");
    mailbox = raw.slice(route[0].length);
  }

  if (!options.nullAllowed && mailbox.toLowerCase() === "postmaster") return address(mailbox, "postmaster", "");
  const parts = splitMailbox(mailbox);
  if (!parts) return problem("no domain");
  const localProblem = localPartProblem(parts.local);
  if (localProblem) return problem(localProblem);

  const { domain } = parts;
  if (domain === "") return problem("empty domain");
  if (domain.startsWith("[") && domain.endsWith("]")) {
    const literal = addressLiteral(domain);
    return literal ? address(mailbox, parts.local, literal) : problem("invalid address literal");
  }
  // asciiDomain forgives a trailing dot for matching configured names; a path must not have one.
  if (domain.endsWith(".")) return problem("domain ends with a dot");
  const ascii = asciiDomain(domain);
  return ascii === undefined ? problem("invalid domain") : address(mailbox, parts.local, ascii);
}

/** The IDNA label separators other than "." (UTS #46): ideographic, full-width and half-width full stops. */
const IDNA_DOTS = /[\u3002\uff0e\uff61]/;

/**
 * The path of a MAIL FROM or RCPT TO command as the client wrote it (between the angle brackets),
 * when it holds an IDNA label separator other than "."; undefined otherwise.
 *
 * smtp-server runs every domain through punycode.js `toUnicode`, which silently turns those
 * separators into ".": `u@example。test` would reach the gateway as `u@example.test`. Handing
 * parseEnvelopeAddress the written form instead gets it refused like any other domain that is not in
 * its IDNA-mapped form (501 5.1.3), so no stage checks a domain the client did not write.
 */
export function pathAsWritten(command: string): string | undefined {
  const path = /<([^<>]*)>/.exec(command)?.[1];
  return path !== undefined && IDNA_DOTS.test(path) ? path : undefined;
}

/** Matches a lower-case ASCII domain against exact names and `*.parent` wildcards (subdomains only). */
export class DomainSet {
  readonly #exact = new Set<string>();
  readonly #parents: string[] = [];

  constructor(patterns: Iterable<string>) {
    for (const pattern of patterns) {
      const wildcard = pattern.startsWith("*.");
      const domain = asciiDomain(wildcard ? pattern.slice(2) : pattern);
      if (domain === undefined) throw new Error(`"${pattern}" is not a domain name`);
      if (wildcard) this.#parents.push(`.${domain}`);
      else this.#exact.add(domain);
    }
  }

  has(domain: string): boolean {
    if (this.#exact.has(domain)) return true;
    return this.#parents.some((parent) => domain.endsWith(parent));
  }
}
