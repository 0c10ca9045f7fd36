/**
 * One pass over the message for every sender-authentication plugin. The first of dkim, arc, dmarc
 * or dkim-sign to ask streams the message (from memory or the spool file) through mailauth's DKIM
 * verifier once; the others get the same result. Only the header block is buffered: body hashes are
 * computed as the bytes go by, so a large message is never held twice.
 */

import {
  type ARCResult,
  arc,
  arcSealProblem,
  type DKIMVerifyResult,
  type DnsResolver,
  dkimVerify,
  type MailauthResolver,
  type Message,
} from "../../../core/index.js";
import type { DkimFacts, DkimResult, DkimSignature } from "./facts.js";

/** mailauth's parsed header block: what its signer and sealer take instead of re-reading the message. */
export interface ParsedHeaders {
  readonly parsed: ReadonlyArray<{ key: string | null; casedKey?: string; line: Buffer }>;
}

/** ARC sets as found in the header (mailauth's `getARChain` shape), or the error that made them unusable. */
export interface ArcChainData {
  readonly chain: unknown;
  readonly lastEntry?: { readonly "arc-seal"?: { readonly parsed?: { readonly d?: { readonly value?: string } } } };
  readonly error?: Error;
}

export interface ParsedMessage {
  readonly results: DKIMVerifyResult["results"];
  /** Addresses of the From header field(s). */
  readonly headerFrom: readonly string[];
  readonly headers: ParsedHeaders;
  readonly arc: ArcChainData;
  /** relaxed/sha256 body hash (base64): what an ARC-Message-Signature and our own DKIM signature need. */
  readonly bodyHash: string;
}

export interface MessageScope {
  readonly message: Message;
  readonly dns: DnsResolver;
}

/** mailauth's resolver contract is `dns.promises.resolve`'s, which the shared resolver keeps (errors carry Node codes). */
export function mailauthResolver(dns: DnsResolver): MailauthResolver {
  return (name, type) => dns.resolve(name, type) as ReturnType<MailauthResolver>;
}

// Keyed by the message object, which lives exactly as long as its transaction.
const parses = new WeakMap<Message, Promise<ParsedMessage>>();
const arcResults = new WeakMap<Message, Promise<ARCResult>>();

async function parse(scope: MessageScope): Promise<ParsedMessage> {
  // A `seal` object makes the verifier also hash the body relaxed/sha256 in the same pass, so that
  // signing and sealing later need no second read. Most signed mail is relaxed/sha256 already, and
  // then the hash is shared; for unsigned mail it costs one more hash pass (measured ~15 ms per MB).
  const seal = {} as { bodyHash?: string };
  const verified = await dkimVerify(scope.message.stream(), {
    resolver: mailauthResolver(scope.dns),
    seal: seal as never,
  });
  const headers = verified.headers as unknown as ParsedHeaders | undefined;
  return {
    results: verified.results,
    headerFrom: verified.headerFrom ?? [],
    headers: headers ?? { parsed: [] },
    arc: (verified.arc as unknown as ArcChainData | undefined) ?? { chain: false },
    bodyHash: seal.bodyHash ?? "",
  };
}

export function parsedMessage(scope: MessageScope): Promise<ParsedMessage> {
  let pending = parses.get(scope.message);
  if (!pending) {
    pending = parse(scope);
    parses.set(scope.message, pending);
  }
  return pending;
}

/** ARC chain validation (DNS for the seal keys; no second read of the message). */
export function arcVerification(scope: MessageScope): Promise<ARCResult> {
  let pending = arcResults.get(scope.message);
  if (!pending) {
    pending = parsedMessage(scope).then((parsed) => {
      const malformed = malformedSeal(parsed.headers);
      // RFC 8617 §5.2: a seal that does not parse fails the chain; mailauth reads it leniently.
      if (malformed) return { status: { result: "fail", comment: malformed } } as ARCResult;
      return arc(parsed.arc as Parameters<typeof arc>[0], { resolver: mailauthResolver(scope.dns) });
    });
    arcResults.set(scope.message, pending);
  }
  return pending;
}

/** The first problem of an ARC-Seal in the header block, or null. */
function malformedSeal(headers: ParsedHeaders): string | null {
  for (const field of headers.parsed) {
    if (field.key !== "arc-seal") continue;
    const line = field.line.toString("binary");
    const problem = arcSealProblem(line.slice(line.indexOf(":") + 1));
    if (problem) return problem;
  }
  return null;
}

const DKIM_RESULTS: ReadonlySet<string> = new Set<DkimResult>([
  "pass",
  "fail",
  "neutral",
  "policy",
  "none",
  "temperror",
  "permerror",
]);

const BODY_HASH_MISMATCH = "body hash did not verify";

/**
 * Every DKIM signature with its own result. RFC 6376 §6.1.3 makes a body hash mismatch a PERMFAIL,
 * which RFC 8601 reports as `fail`; mailauth says `neutral`, so a policy could not tell it apart
 * from "no key". mailauth's placeholder row for an unsigned message is dropped.
 */
export function dkimSignatures(results: ParsedMessage["results"]): DkimSignature[] {
  return results
    .filter((row) => row.signingDomain)
    .map((row) => {
      const status = row.status;
      const reason = status.comment ?? null;
      const raw = String(status.result);
      const result: DkimResult =
        reason === BODY_HASH_MISMATCH ? "fail" : DKIM_RESULTS.has(raw) ? (raw as DkimResult) : "neutral";
      const header = (status.header ?? {}) as { a?: string; b?: string };
      return {
        domain: row.signingDomain.toLowerCase(),
        selector: row.selector ?? "",
        algorithm: header.a ?? "",
        b: header.b || "",
        result,
        reason,
      };
    });
}

const PRECEDENCE: readonly DkimResult[] = ["pass", "temperror", "fail", "permerror", "policy", "neutral", "none"];

export function dkimFacts(signatures: readonly DkimSignature[]): DkimFacts {
  const best = PRECEDENCE.find((result) => signatures.some((signature) => signature.result === result)) ?? "none";
  return { result: best, signatures };
}
