/**
 * What one DNSBL answer means, and which finding of a batch decides: pure functions, tested by
 * tables. A list answers with A records in 127.0.0.0/8; anything else is not a listing. Spamhaus
 * answers 127.255.255.0/24 when it refuses a query (public resolver, over quota), and a resolver
 * that rewrites NXDOMAIN answers with its own address: both must be told apart from a listing, or
 * every client would look listed.
 */
import { isIPv4 } from "node:net";
import type { DnsOutcome } from "../../core/index.js";
import { type DnsblTarget, ipv4Number, type ZoneOptions } from "./schema.js";

/**
 * Why a zone is ignored: it lists its test point (it answers everything), it refuses this
 * gateway's resolver (its test point answers in 127.255.255.0/24, as Spamhaus answers public
 * resolvers), or it lists too large a share of what it is asked.
 */
export type BrokenReason = "test-point" | "refused" | "listed-share";

export type ErrorKind = "timeout" | "dns" | "bad-answer" | "list-error";

export type AnswerStatus =
  | { readonly status: "listed"; readonly codes: readonly string[] }
  /** `codes`: listing codes the zone's filter left out. */
  | { readonly status: "clean"; readonly codes?: readonly string[] }
  | { readonly status: "error"; readonly kind: ErrorKind; readonly detail: string };

export type ZoneFinding = AnswerStatus & {
  readonly zone: string;
  readonly target: DnsblTarget;
  /** The name looked up: the client address, or a domain. */
  readonly name: string;
  readonly score: number;
  readonly allow: boolean;
  /** The TXT reason of a listing; null when the zone publishes none (or it could not be fetched). */
  readonly txt?: string | null;
  /** Set when the zone is judged broken: the finding is recorded and ignored. */
  readonly broken: BrokenReason | null;
};

const NET_127 = ipv4Number("127.0.0.0");
const LIST_ERRORS = ipv4Number("127.255.255.0");

/** An answer a list may give for a listing: 127.0.0.0/8 outside 127.255.255.0/24. */
export function isListingCode(address: string): boolean {
  if (!isIPv4(address)) return false;
  const n = ipv4Number(address);
  return n >>> 24 === NET_127 >>> 24 && n >>> 8 !== LIST_ERRORS >>> 8;
}

function isListErrorCode(address: string): boolean {
  return isIPv4(address) && ipv4Number(address) >>> 8 === LIST_ERRORS >>> 8;
}

/** The meaning of one A lookup at a zone, its return-code filter applied. */
export function classifyAnswer(outcome: DnsOutcome<readonly string[]>, codes: ZoneOptions["codes"]): AnswerStatus {
  switch (outcome.kind) {
    case "none":
      return { status: "clean" };
    case "error":
      return {
        status: "error",
        kind: outcome.code === "ETIMEOUT" || outcome.code === "ECANCELLED" ? "timeout" : "dns",
        detail: outcome.code,
      };
    case "answer": {
      const answer = [...outcome.value].sort();
      // One bad record spoils the answer: a listing cannot be trusted next to an error code.
      if (answer.some(isListErrorCode)) return { status: "error", kind: "list-error", detail: answer.join(" ") };
      if (!answer.every(isListingCode)) return { status: "error", kind: "bad-answer", detail: answer.join(" ") };
      const counted = codes
        ? answer.filter((code) => codes.some((range) => ipv4Number(code) >= range.from && ipv4Number(code) <= range.to))
        : answer;
      return counted.length > 0 ? { status: "listed", codes: counted } : { status: "clean", codes: answer };
    }
  }
}

/**
 * What the test point's answer (or, without a test point, the query's) says about the zone: it
 * lists a name no list may list, it refuses the resolver, or nothing is wrong.
 */
export function probeProblem(outcome: DnsOutcome<readonly string[]>): "test-point" | "refused" | null {
  if (outcome.kind !== "answer") return null;
  if (outcome.value.some(isListingCode)) return "test-point";
  return outcome.value.some(isListErrorCode) ? "refused" : null;
}

/** TXT records as one line; null when there is none (a listing without TXT is still a listing). */
export function txtText(outcome: DnsOutcome<readonly (readonly string[])[]>): string | null {
  if (outcome.kind !== "answer") return null;
  const text = outcome.value
    .map((chunks) => chunks.join(""))
    .filter(Boolean)
    .join("; ");
  return text === "" ? null : text;
}

/** A zone whose listing lowers the score or allows: its errors and listings never refuse anyone. */
export function isAllowlist(finding: Pick<ZoneFinding, "allow" | "score">): boolean {
  return finding.allow || finding.score < 0;
}

/**
 * Whether a listing here gives the `listed` verdict on its own. A zone with a score only adds
 * points, so weighted lists (Postfix's postscreen_dnsbl_sites) add up instead of the first hit
 * refusing; `verdict: true` on the zone makes it decide as well.
 */
export function decidesAlone(zone: Pick<ZoneOptions, "allow" | "score" | "verdict">): boolean {
  return !isAllowlist(zone) && (zone.verdict ?? zone.score === 0);
}

export interface BatchDecision {
  readonly verdict: "allowlisted" | "listed" | "error" | null;
  /**
   * The finding behind the verdict: the allowing listing, the first listing of a zone that decides
   * alone, the first error. Without a verdict, the first listing of a zone that only scores, so
   * replies and rules can still name it.
   */
  readonly decider: ZoneFinding | null;
  /** Points to add, one entry per listing that counts. */
  readonly scores: ReadonlyArray<{ readonly points: number; readonly reason: string }>;
}

/**
 * Decides a batch of findings (in zone order); `decides` names the zones whose listing gives the
 * `listed` verdict on its own (see decidesAlone). Broken zones count for nothing. An `allow`
 * listing wins over everything else; otherwise every listing adds its score and the first listing
 * of a deciding zone decides; an error of a blocking zone matters only when nothing is listed.
 */
export function decideBatch(findings: readonly ZoneFinding[], decides: ReadonlySet<string>): BatchDecision {
  const counted = findings.filter((finding) => finding.broken === null);
  const score = (finding: ZoneFinding) =>
    finding.score === 0 ? [] : [{ points: finding.score, reason: `${finding.zone} lists ${finding.target}` }];
  const allowing = counted.find((finding) => finding.allow && finding.status === "listed");
  if (allowing) return { verdict: "allowlisted", decider: allowing, scores: score(allowing) };
  const listed = counted.filter((finding) => finding.status === "listed");
  const scores = listed.flatMap(score);
  const blocking = listed.filter((finding) => !isAllowlist(finding));
  const deciding = blocking.find((finding) => decides.has(finding.zone));
  if (deciding) return { verdict: "listed", decider: deciding, scores };
  if (blocking.length > 0) return { verdict: null, decider: blocking[0], scores };
  const error = counted.find((finding) => finding.status === "error" && !isAllowlist(finding));
  return { verdict: error ? "error" : null, decider: error ?? null, scores };
}
