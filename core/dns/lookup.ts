/**
 * Helpers for checks built on the shared resolver. A check has to tell "the DNS says no" (a finding)
 * from "the DNS did not answer" (a temporary error the policy may defer on); as values, the two
 * cannot be mixed up by a catch-all, which is how DNSBL clients end up failing open.
 */
import { asciiDomain } from "../toolkit/address.js";
import { DnsError, isNegativeAnswer, reverseIpLabels } from "./resolver.js";

export type DnsOutcome<T> =
  | { readonly kind: "answer"; readonly value: T }
  /** Authoritatively nothing: no such name (ENOTFOUND) or no record of that type (ENODATA). */
  | { readonly kind: "none"; readonly code: "ENOTFOUND" | "ENODATA" }
  /** No answer to rely on: SERVFAIL, timeout, refused, cancelled by the hook deadline… */
  | { readonly kind: "error"; readonly code: string };

/**
 * Waits for a lookup and classifies its end. An empty answer (a CNAME to nothing) counts as
 * ENODATA. Anything thrown that is not a DnsError is a bug and is re-thrown, so the core's
 * `onError` handles it instead of a check mistaking it for a DNS answer.
 */
export async function settle<T>(lookup: Promise<T>): Promise<DnsOutcome<T>> {
  try {
    const value = await lookup;
    if (Array.isArray(value) && value.length === 0) return { kind: "none", code: "ENODATA" };
    return { kind: "answer", value };
  } catch (error) {
    if (!(error instanceof DnsError)) throw error;
    if (isNegativeAnswer(error.code)) return { kind: "none", code: error.code };
    return { kind: "error", code: error.code };
  }
}

/** Whether two IP texts name the same address: IPv6 spellings, and `::ffff:` mapped IPv4 against IPv4. */
export function sameIp(a: string, b: string): boolean {
  try {
    return reverseIpLabels(a) === reverseIpLabels(b);
  } catch {
    return false;
  }
}

/**
 * A name as DNS holds it (LDH labels, lower-cased, no trailing dot), from text a client or a PTR
 * record supplied; undefined for anything else. Printable ASCII is required first because IDNA
 * mapping silently drops tabs and line breaks, which would turn "a\r\nb.test" into "ab.test".
 */
export function hostName(text: string): string | undefined {
  return /^[\x21-\x7e]+$/.test(text) ? asciiDomain(text) : undefined;
}
