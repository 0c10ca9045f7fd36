/**
 * What a HELO/EHLO argument says about the client, as pure functions (RFC 5321 §4.1.1.1, §4.1.3):
 * a fully-qualified name or an address literal in brackets, which should be the client's own.
 */
import { isIP, isIPv4, isIPv6 } from "node:net";
import { type DnsOutcome, hostName, sameIp, z } from "../../core/index.js";

/** Every finding, in precedence order: when several hold, the first is the verdict. */
export const HELO_FINDINGS = [
  "our-address",
  "our-name",
  "invalid",
  "bare-ip",
  "literal-mismatch",
  "unqualified",
  "dynamic",
  "no-address",
  "temperror",
] as const;

export type HeloFinding = (typeof HELO_FINDINGS)[number];

export type ParsedHelo =
  | { readonly kind: "name"; readonly domain: string }
  | { readonly kind: "literal" | "bare-ip"; readonly address: string }
  | { readonly kind: "invalid" };

export const HeloFindings = z
  .object({
    name: z.string().describe("the HELO/EHLO argument as sent"),
    kind: z
      .enum(["name", "literal", "bare-ip", "invalid"])
      .describe("a name, an address literal in brackets, an address without brackets, or neither"),
    address: z.string().nullable().describe("the address of a literal or bare IP"),
    findings: z
      .array(z.enum(HELO_FINDINGS))
      .readonly()
      .describe("everything that holds, in precedence order (the first is the verdict)"),
    addresses: z
      .array(z.string())
      .readonly()
      .nullable()
      .describe("addresses of the name (A and AAAA); null when not looked up"),
    matchesClient: z
      .boolean()
      .nullable()
      .describe("whether those addresses include the client; null when not looked up"),
    dnsErrors: z.array(z.string()).readonly().describe("the DNS codes of lookups that failed"),
  })
  .readonly();

export type HeloFacts = z.output<typeof HeloFindings>;

export function parseHelo(helo: string): ParsedHelo {
  const literal = /^\[(.*)\]$/.exec(helo);
  if (literal) {
    const inner = literal[1];
    if (isIPv4(inner)) return { kind: "literal", address: inner };
    const v6 = /^ipv6:(.+)$/i.exec(inner);
    return v6 && isIPv6(v6[1]) ? { kind: "literal", address: v6[1].toLowerCase() } : { kind: "invalid" };
  }
  if (isIP(helo) !== 0) return { kind: "bare-ip", address: helo.toLowerCase() };
  const domain = hostName(helo);
  return domain ? { kind: "name", domain } : { kind: "invalid" };
}

export interface Identity {
  readonly clientIp: string;
  /** Lower-case ASCII names of this gateway. */
  readonly ourNames: readonly string[];
  readonly ourAddresses: readonly string[];
  readonly dynamicPatterns: readonly RegExp[];
}

/** Findings that need no DNS. */
export function staticFindings(parsed: ParsedHelo, identity: Identity): HeloFinding[] {
  const findings: HeloFinding[] = [];
  switch (parsed.kind) {
    case "invalid":
      findings.push("invalid");
      break;
    case "bare-ip":
    case "literal":
      if (parsed.kind === "bare-ip") findings.push("bare-ip");
      if (
        identity.ourAddresses.some((ours) => sameIp(ours, parsed.address)) &&
        !sameIp(parsed.address, identity.clientIp)
      ) {
        findings.push("our-address");
      }
      if (!sameIp(parsed.address, identity.clientIp)) findings.push("literal-mismatch");
      break;
    case "name":
      if (identity.ourNames.includes(parsed.domain)) findings.push("our-name");
      if (!parsed.domain.includes(".")) findings.push("unqualified");
      if (identity.dynamicPatterns.some((pattern) => pattern.test(parsed.domain))) findings.push("dynamic");
      break;
  }
  return sortFindings(findings);
}

/** A name with no address of either family does not exist as a host; a failed lookup leaves it open. */
export function dnsFindings(
  a: DnsOutcome<readonly string[]>,
  aaaa: DnsOutcome<readonly string[]>,
  clientIp: string,
): { addresses: string[]; matchesClient: boolean; finding: HeloFinding | null; errors: string[] } {
  const addresses = [a, aaaa].flatMap((outcome) => (outcome.kind === "answer" ? [...outcome.value] : []));
  const errors = [a, aaaa].flatMap((outcome) => (outcome.kind === "error" ? [outcome.code] : []));
  const finding = addresses.length > 0 ? null : errors.length > 0 ? "temperror" : "no-address";
  return { addresses, matchesClient: addresses.some((address) => sameIp(address, clientIp)), finding, errors };
}

export function sortFindings(findings: readonly HeloFinding[]): HeloFinding[] {
  return [...new Set(findings)].sort((x, y) => HELO_FINDINGS.indexOf(x) - HELO_FINDINGS.indexOf(y));
}
