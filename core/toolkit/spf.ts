/**
 * SPF's check_host() (RFC 7208), in place of mailauth 4.13's `spf`, which differs from the RFC
 * where a fix at its seam cannot reach: it evaluates a record before checking all of its syntax
 * (§4.6), checks domain syntax after macro expansion inside a closure (§7.1: an expanded name that
 * is not a domain must simply not exist), and has no `%{p}` (§7.3), which needs DNS lookups in the
 * middle of an expansion. No maintained npm package does better (those found are unmaintained
 * record parsers). `test/conformance/spf.test.ts` runs each RFC rule through the spf plugin, and
 * runs mailauth's `spf` too, so an upgrade that fixes it there says so.
 *
 * The result has the shape of mailauth's (`status.result`, `status.comment`, `domain`, `rr`,
 * `lookups`), so the plugin, its replay memo and `portcullis doctor` read it as before.
 * Explanations (`exp=`) are syntax-checked but not fetched: no reply or header of ours shows them.
 */
import { isIP } from "node:net";
import { ipv6Hextets, normalizeIp } from "./netaddr.js";
import {
  type Directive,
  isSpfRecord,
  type MacroToken,
  type Mechanism,
  macroTokens,
  parseSpfRecord,
  SpfSyntaxError,
} from "./spf-record.js";

export type SpfResultCode = "pass" | "fail" | "softfail" | "neutral" | "none" | "temperror" | "permerror";

/** A resolver with the contract of `dns.promises.resolve`: errors carry Node's codes (ENOTFOUND, ENODATA…). */
export type SpfResolver = (name: string, type: string) => Promise<unknown>;

export interface SpfQuery {
  /** The client's address; an IPv4-mapped IPv6 address counts as IPv4 (§5). */
  readonly ip: string;
  readonly helo: string;
  /** MAIL FROM; absent or empty: the HELO identity, postmaster@helo (§2.3). */
  readonly sender?: string;
  /** Our host name, for the result's comment. */
  readonly mta: string;
  /** Terms that cause DNS lookups (§4.6.4: 10). */
  readonly maxLookups?: number;
  /** Lookups that found nothing (§4.6.4: 2). */
  readonly maxVoidLookups?: number;
  readonly resolver: SpfResolver;
}

export interface SpfCheckResult {
  /** The domain checked: the sender's, or the HELO name's. */
  readonly domain: string;
  readonly "client-ip": string;
  readonly helo: string;
  readonly "envelope-from": string;
  /** The SPF record of `domain`, when there was one. */
  readonly rr?: string;
  readonly status: {
    readonly result: SpfResultCode;
    readonly comment: string;
    readonly smtp: { readonly mailfrom: string; readonly helo: string };
  };
  readonly lookups: { readonly limit: number; readonly count: number; readonly void: number };
}

const DEFAULT_MAX_LOOKUPS = 10;
const DEFAULT_MAX_VOID_LOOKUPS = 2;
/** At most this many MX records per `mx`, else permerror; PTR names beyond it are ignored (§4.6.4). */
const MAX_NAMES_PER_TERM = 10;
/** The longest domain name in text form (RFC 1035 §2.3.4, without the final dot). */
const MAX_NAME_LENGTH = 253;

/** Ends the evaluation with an error result. */
class SpfStop extends Error {
  constructor(
    readonly result: "temperror" | "permerror",
    message: string,
  ) {
    super(message);
  }
}

interface Evaluation {
  readonly ip: string;
  readonly family: 4 | 6;
  readonly sender: string;
  readonly local: string;
  readonly senderDomain: string;
  readonly helo: string;
  readonly resolver: SpfResolver;
  readonly maxLookups: number;
  readonly maxVoidLookups: number;
  lookups: number;
  voids: number;
  /** The client's PTR names that resolve back to it (§5.5), asked once per evaluation. */
  validatedNames?: Promise<string[]>;
}

interface HostResult {
  readonly result: SpfResultCode;
  readonly rr?: string;
  readonly reason?: string;
}

export async function checkSpf(query: SpfQuery): Promise<SpfCheckResult> {
  const ip = normalizeIp(query.ip);
  let sender = query.sender || `postmaster@${query.helo}`;
  const at = sender.lastIndexOf("@");
  if (at < 0) sender = `postmaster@${sender}`;
  else if (at === 0) sender = `postmaster${sender}`;
  const split = sender.lastIndexOf("@");
  const domain = sender.slice(split + 1).toLowerCase();
  const evaluation: Evaluation = {
    ip,
    family: isIP(ip) === 6 ? 6 : 4,
    sender,
    local: sender.slice(0, split),
    senderDomain: domain,
    helo: query.helo,
    resolver: query.resolver,
    maxLookups: query.maxLookups ?? DEFAULT_MAX_LOOKUPS,
    maxVoidLookups: query.maxVoidLookups ?? DEFAULT_MAX_VOID_LOOKUPS,
    lookups: 0,
    voids: 0,
  };
  let outcome: HostResult;
  if (isIP(ip) === 0) {
    outcome = { result: "permerror", reason: `${ip} is not an IP address` };
  } else {
    // §4.3: a malformed or single-label domain has no SPF record.
    outcome = isCheckableDomain(domain) ? await checkHostSafely(evaluation, domain) : { result: "none" };
  }
  return {
    domain,
    "client-ip": ip,
    helo: query.helo,
    "envelope-from": sender,
    ...(outcome.rr === undefined ? {} : { rr: outcome.rr }),
    status: {
      result: outcome.result,
      comment: comment(outcome, query.mta, sender, domain, ip),
      smtp: { mailfrom: sender, helo: query.helo },
    },
    lookups: { limit: evaluation.maxLookups, count: evaluation.lookups, void: evaluation.voids },
  };
}

async function checkHostSafely(evaluation: Evaluation, domain: string): Promise<HostResult> {
  let rr: string | undefined;
  try {
    return await checkHost(evaluation, domain, (record) => {
      rr ??= record;
    });
  } catch (error) {
    if (error instanceof SpfStop) return { result: error.result, rr, reason: error.message };
    throw error;
  }
}

/** The texts of mailauth's comments, which the plugin's tests and users already read. */
function comment(outcome: HostResult, mta: string, sender: string, domain: string, ip: string): string {
  const reason = outcome.reason ? `: ${outcome.reason}` : "";
  switch (outcome.result) {
    case "pass":
      return `${mta}: domain of ${sender} designates ${ip} as permitted sender`;
    case "softfail":
      return `${mta}: domain of transitioning ${sender} does not designate ${ip} as permitted sender`;
    case "fail":
      return `${mta}: domain of ${sender} does not designate ${ip} as permitted sender`;
    case "neutral":
      return `${mta}: ${ip} is neither permitted nor denied by domain of ${sender}`;
    case "none":
      return `${mta}: ${domain} does not designate permitted sender hosts`;
    case "permerror":
      return `${mta}: permanent error in processing during lookup of ${sender}${reason}`;
    case "temperror":
      return `${mta}: error in processing during lookup of ${sender}${reason}`;
  }
}

/** §4.3: labels of 1–63 octets, at least two of them, at most 253 octets; a domain literal is none. */
function isCheckableDomain(domain: string): boolean {
  const name = domain.replace(/\.$/, "");
  if (name.length === 0 || name.length > MAX_NAME_LENGTH || name.startsWith("[")) return false;
  const labels = name.split(".");
  return labels.length >= 2 && labels.every((label) => label.length > 0 && label.length <= 63);
}

const QUALIFIED: Record<Directive["qualifier"], SpfResultCode> = {
  "+": "pass",
  "-": "fail",
  "~": "softfail",
  "?": "neutral",
};

/** check_host() for `domain` (§4); `onRecord` hears the record found at the top level. */
async function checkHost(
  evaluation: Evaluation,
  domain: string,
  onRecord: (record: string) => void = () => {},
): Promise<HostResult> {
  const answer = await ask(evaluation, domain, "TXT", false);
  if (answer === null) return { result: "none" };
  const records = (answer as string[][]).map((strings) => strings.join("")).filter(isSpfRecord);
  if (records.length === 0) return { result: "none" };
  if (records.length > 1) throw new SpfStop("permerror", `more than one SPF record at ${domain}`);
  const [rr] = records;
  onRecord(rr);
  let record: ReturnType<typeof parseSpfRecord>;
  try {
    record = parseSpfRecord(rr);
  } catch (error) {
    if (error instanceof SpfSyntaxError) throw new SpfStop("permerror", `${domain}: ${error.message}`);
    throw error;
  }
  for (const directive of record.directives) {
    if (await matches(evaluation, directive.mechanism, domain)) return { result: QUALIFIED[directive.qualifier], rr };
  }
  if (record.redirect !== null) {
    countLookup(evaluation);
    const target = await expandDomain(evaluation, record.redirect, domain);
    const redirected = await checkHost(evaluation, target);
    // §6.1: a redirect to a domain without a record is a permerror, not none.
    if (redirected.result === "none") throw new SpfStop("permerror", `redirect target ${target} has no SPF record`);
    return { ...redirected, rr };
  }
  return { result: "neutral", rr };
}

async function matches(evaluation: Evaluation, mechanism: Mechanism, domain: string): Promise<boolean> {
  switch (mechanism.kind) {
    case "all":
      return true;
    case "ip4":
    case "ip6":
      return (
        evaluation.family === (mechanism.kind === "ip4" ? 4 : 6) &&
        inNetwork(evaluation.ip, mechanism.network, mechanism.prefix)
      );
    case "a": {
      countLookup(evaluation);
      const target = await targetName(evaluation, mechanism.domainSpec, domain);
      const addresses = await addressesOf(evaluation, target, true);
      return addresses.some((address) => inNetwork(evaluation.ip, address, prefixFor(evaluation, mechanism)));
    }
    case "mx": {
      countLookup(evaluation);
      const target = await targetName(evaluation, mechanism.domainSpec, domain);
      const exchanges = ((await ask(evaluation, target, "MX", true)) ?? []) as Array<{ exchange: string }>;
      if (exchanges.length > MAX_NAMES_PER_TERM) {
        throw new SpfStop("permerror", `${target} has more than ${MAX_NAMES_PER_TERM} MX records`);
      }
      for (const { exchange } of exchanges) {
        // A null MX (RFC 7505) names the root: no host.
        if (exchange === "" || exchange === ".") continue;
        const addresses = await addressesOf(evaluation, exchange, false);
        if (addresses.some((address) => inNetwork(evaluation.ip, address, prefixFor(evaluation, mechanism)))) {
          return true;
        }
      }
      return false;
    }
    case "ptr": {
      countLookup(evaluation);
      const target = (await targetName(evaluation, mechanism.domainSpec, domain)).toLowerCase();
      const names = await validatedNames(evaluation, true);
      return names.some((name) => name === target || name.endsWith(`.${target}`));
    }
    case "exists": {
      countLookup(evaluation);
      const target = await expandDomain(evaluation, mechanism.domainSpec, domain);
      // §5.7: always an A query, whatever the client's address family.
      const answer = await ask(evaluation, target, "A", true);
      return answer !== null && (answer as unknown[]).length > 0;
    }
    case "include": {
      countLookup(evaluation);
      const target = await expandDomain(evaluation, mechanism.domainSpec, domain);
      const included = await checkHost(evaluation, target);
      switch (included.result) {
        case "pass":
          return true;
        case "fail":
        case "softfail":
        case "neutral":
          return false;
        case "temperror":
          throw new SpfStop("temperror", `include:${target} gave temperror`);
        default:
          // §5.2: none and permerror of the included domain are both permerror.
          throw new SpfStop("permerror", `include:${target} gave ${included.result}`);
      }
    }
  }
}

function prefixFor(evaluation: Evaluation, mechanism: { cidr4: number; cidr6: number }): number {
  return evaluation.family === 4 ? mechanism.cidr4 : mechanism.cidr6;
}

function targetName(evaluation: Evaluation, spec: string | null, domain: string): Promise<string> {
  return spec === null ? Promise.resolve(domain) : expandDomain(evaluation, spec, domain);
}

function countLookup(evaluation: Evaluation): void {
  evaluation.lookups++;
  if (evaluation.lookups > evaluation.maxLookups) {
    throw new SpfStop("permerror", `more than ${evaluation.maxLookups} DNS lookups`);
  }
}

const NEGATIVE = new Set(["ENOTFOUND", "ENODATA"]);

/**
 * One DNS question: the answer, or null for "no such name / no such record". A failure is a
 * temperror. With `countVoid`, an empty answer counts against the void lookup limit (§4.6.4).
 */
async function ask(evaluation: Evaluation, name: string, type: string, countVoid: boolean): Promise<unknown[] | null> {
  let answer: unknown[] | null;
  try {
    answer = (await evaluation.resolver(name, type)) as unknown[];
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code !== "string" || !NEGATIVE.has(code)) {
      throw new SpfStop("temperror", `DNS ${typeof code === "string" ? code : "failure"} for ${type} ${name}`);
    }
    answer = null;
  }
  if (countVoid && (answer === null || answer.length === 0)) {
    evaluation.voids++;
    if (evaluation.voids > evaluation.maxVoidLookups) {
      throw new SpfStop("permerror", `more than ${evaluation.maxVoidLookups} void DNS lookups`);
    }
  }
  return answer;
}

/** The A or AAAA records of `name`, by the client's address family. */
async function addressesOf(evaluation: Evaluation, name: string, countVoid: boolean): Promise<string[]> {
  const answer = await ask(evaluation, name, evaluation.family === 4 ? "A" : "AAAA", countVoid);
  return (answer ?? []) as string[];
}

/** §5.5: the client's PTR names (the first 10) whose A/AAAA records include the client, lower-case. */
function validatedNames(evaluation: Evaluation, countVoid: boolean): Promise<string[]> {
  evaluation.validatedNames ??= (async () => {
    const reverse = reverseName(evaluation.ip, evaluation.family);
    let names: string[];
    try {
      names = ((await ask(evaluation, reverse, "PTR", countVoid)) ?? []) as string[];
    } catch (error) {
      // §5.5: a failed PTR lookup makes the mechanism not match; only a limit ends the check.
      if (error instanceof SpfStop && error.result === "temperror") return [];
      throw error;
    }
    const checked = await Promise.all(
      names.slice(0, MAX_NAMES_PER_TERM).map(async (name) => {
        try {
          const addresses = await addressesOf(evaluation, name, false);
          return addresses.some((address) => sameAddress(address, evaluation.ip)) ? [name] : [];
        } catch (error) {
          // §5.5: a name whose lookup fails is not validated; the mechanism goes on with the others.
          if (error instanceof SpfStop) return [];
          throw error;
        }
      }),
    );
    return checked.flat().map((name) => name.toLowerCase().replace(/\.$/, ""));
  })();
  return evaluation.validatedNames;
}

/** `%{p}` (§7.3): the validated name equal to `domain`, else one under it, else any; "unknown" without. */
async function validatedDomain(evaluation: Evaluation, domain: string): Promise<string> {
  const names = await validatedNames(evaluation, false);
  const target = domain.toLowerCase();
  return (
    names.find((name) => name === target) ?? names.find((name) => name.endsWith(`.${target}`)) ?? names[0] ?? "unknown"
  );
}

/**
 * Expands a domain-spec (§7.3) into the name to ask about. The result is not syntax-checked
 * (§7.1): a name that cannot exist is answered "no such name" by the resolver without a query.
 */
async function expandDomain(evaluation: Evaluation, spec: string, domain: string): Promise<string> {
  let name = "";
  for (const token of macroTokens(spec)) {
    name += "literal" in token ? token.literal : await macroValue(evaluation, token, domain);
  }
  name = name.replace(/\.$/, "");
  // §7.3: a name longer than 253 octets loses labels on its left until it fits.
  while (name.length > MAX_NAME_LENGTH && name.includes(".")) name = name.slice(name.indexOf(".") + 1);
  return name;
}

async function macroValue(
  evaluation: Evaluation,
  token: Exclude<MacroToken, { literal: string }>,
  domain: string,
): Promise<string> {
  let value: string;
  switch (token.letter) {
    case "s":
      value = evaluation.sender;
      break;
    case "l":
      value = evaluation.local;
      break;
    case "o":
      value = evaluation.senderDomain;
      break;
    case "d":
      value = domain;
      break;
    case "i":
      value = evaluation.family === 4 ? evaluation.ip : nibbles(evaluation.ip).join(".");
      break;
    case "p":
      value = await validatedDomain(evaluation, domain);
      break;
    case "v":
      value = evaluation.family === 4 ? "in-addr" : "ip6";
      break;
    case "h":
      value = evaluation.helo;
      break;
    default:
      // c, r and t are refused in domain-specs by the parser, and explanations are not expanded.
      throw new SpfStop("permerror", `macro letter ${token.letter} outside an explanation`);
  }
  let parts = value.split(new RegExp(`[${token.delimiters.replace(/[-\\\]^]/g, "\\$&")}]`));
  if (token.reverse) parts = parts.reverse();
  if (token.rightParts > 0) parts = parts.slice(-token.rightParts);
  const expanded = parts.join(".");
  return token.urlEscape ? urlEscape(expanded) : expanded;
}

/** §7.3: upper-case macros are URL-escaped: everything but RFC 3986's unreserved characters. */
function urlEscape(text: string): string {
  let escaped = "";
  for (const byte of Buffer.from(text, "utf8")) {
    const char = String.fromCharCode(byte);
    escaped += /[A-Za-z0-9\-._~]/.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return escaped;
}

/** The 32 hex digits of an IPv6 address, most significant first. */
function nibbles(ip: string): string[] {
  return ipv6Hextets(ip).flatMap((group) => group.padStart(4, "0").split(""));
}

function reverseName(ip: string, family: 4 | 6): string {
  return family === 4
    ? `${ip.split(".").reverse().join(".")}.in-addr.arpa`
    : `${nibbles(ip).reverse().join(".")}.ip6.arpa`;
}

/** The address as bits, for prefix comparison: 32 for IPv4, 128 for IPv6. */
function addressBits(ip: string): bigint | null {
  const address = normalizeIp(ip);
  switch (isIP(address)) {
    case 4:
      return address.split(".").reduce((bits, octet) => (bits << 8n) | BigInt(Number(octet)), 0n);
    case 6:
      return ipv6Hextets(address).reduce((bits, group) => (bits << 16n) | BigInt(Number.parseInt(group, 16)), 0n);
    default:
      return null;
  }
}

function inNetwork(ip: string, network: string, prefix: number): boolean {
  const width = isIP(normalizeIp(ip)) === 4 ? 32 : 128;
  if (isIP(normalizeIp(network)) !== isIP(normalizeIp(ip))) return false;
  const a = addressBits(ip);
  const b = addressBits(network);
  if (a === null || b === null) return false;
  const shift = BigInt(width - prefix);
  return a >> shift === b >> shift;
}

function sameAddress(a: string, b: string): boolean {
  return inNetwork(a, b, isIP(normalizeIp(a)) === 4 ? 32 : 128);
}
