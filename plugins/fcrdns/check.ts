/**
 * Forward-confirmed reverse DNS as a pure function of lookup outcomes (RFC 8601 §3 `iprev`): the
 * client's PTR names, then the addresses of each name; a name whose addresses include the client
 * confirms it.
 */
import { type ConnectionContext, type DnsOutcome, hostName, sameIp, z } from "../../core/index.js";

const LookupError = z
  .object({
    type: z.enum(["PTR", "A", "AAAA"]).describe("the record type looked up"),
    name: z.string().describe("the name looked up; for PTR, the client address"),
    code: z.string().describe("the DNS error code, e.g. ETIMEOUT or ESERVFAIL"),
  })
  .readonly();

export const FcrdnsFindings = z
  .object({
    result: z
      .enum(["pass", "fail", "none", "temperror"])
      .describe("pass: a PTR name resolves back to the client; none: no PTR name; temperror: a lookup failed"),
    names: z
      .array(z.string())
      .readonly()
      .describe("the client's PTR names with valid host name syntax (lower-case), at most maxNames"),
    confirmed: z
      .string()
      .nullable()
      .describe("the first PTR name whose addresses include the client: the forward-confirmed name"),
    errors: z.array(LookupError).readonly().describe("lookups that got no reliable answer (why a result is temperror)"),
  })
  .readonly();

export type FcrdnsFacts = z.output<typeof FcrdnsFindings>;
export type FcrdnsResult = FcrdnsFacts["result"];
export type LookupError = z.output<typeof LookupError>;

/**
 * The PTR names worth a forward lookup: valid host names only (a PTR record is written by whoever
 * holds the address block, so it may carry anything), each once, at most `max`.
 */
export function candidateNames(ptr: readonly string[], max: number): string[] {
  const names = new Set<string>();
  for (const name of ptr) {
    const ascii = hostName(name);
    if (ascii) names.add(ascii);
    if (names.size === max) break;
  }
  return [...names];
}

/**
 * The verdict from the PTR outcome and the forward outcome of every candidate name. A match wins
 * over errors of other names; without a match, any temporary error makes the result temperror,
 * since the name that failed might have matched.
 */
export function judgeFcrdns(
  ip: string,
  ptr: DnsOutcome<readonly string[]>,
  names: readonly string[],
  forward: ReadonlyMap<string, DnsOutcome<readonly string[]>>,
  forwardType: "A" | "AAAA",
): FcrdnsFacts {
  if (ptr.kind === "error") {
    return { result: "temperror", names: [], confirmed: null, errors: [{ type: "PTR", name: ip, code: ptr.code }] };
  }
  if (ptr.kind === "none" || names.length === 0) return { result: "none", names, confirmed: null, errors: [] };
  const errors: LookupError[] = [];
  let confirmed: string | null = null;
  for (const name of names) {
    const outcome = forward.get(name);
    if (outcome?.kind === "answer" && outcome.value.some((address) => sameIp(address, ip))) {
      confirmed ??= name;
    } else if (outcome?.kind === "error") {
      errors.push({ type: forwardType, name, code: outcome.code });
    }
  }
  if (confirmed) return { result: "pass", names, confirmed, errors };
  return { result: errors.length > 0 ? "temperror" : "fail", names, confirmed, errors };
}

/** RFC 8601 §3: no PTR data at all is the permanent error of iprev. */
export function iprevOf(facts: FcrdnsFacts): NonNullable<ConnectionContext["iprev"]> {
  const result = facts.result === "none" ? "permerror" : facts.result;
  return { result, name: facts.confirmed ?? facts.names[0] ?? null };
}
