/**
 * dnsbl and rate-limit keep hand-written facts types (their logic builds richer unions than a
 * schema states); `tsc` holds them to their finding schemas here: the same fields, and every value
 * the plugin may write is one the schema (and so `check`) allows. The other plugins' facts types
 * are `z.output` of their schemas and cannot drift.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { z } from "zod";
import type { DnsblFacts } from "../../plugins/dnsbl/index.js";
import type { DnsblFindings } from "../../plugins/dnsbl/schema.js";
import type { RateLimitFacts } from "../../plugins/rate-limit/index.js";
import type { RateLimitFindings } from "../../plugins/rate-limit/schema.js";

/** The keys of every member of a union (`keyof` alone keeps only the shared ones). */
type Keys<T> = T extends unknown ? keyof T : never;
type SameKeys<A, B> = [Keys<A>] extends [Keys<B>] ? ([Keys<B>] extends [Keys<A>] ? true : false) : false;
type Within<Facts, Schema extends z.ZodType> = Facts extends z.output<Schema> ? true : false;

const checks: Array<true> = [
  true satisfies SameKeys<DnsblFacts, z.output<typeof DnsblFindings>>,
  true satisfies Within<DnsblFacts, typeof DnsblFindings>,
  true satisfies SameKeys<DnsblFacts["findings"][number], z.output<typeof DnsblFindings>["findings"][number]>,
  true satisfies SameKeys<RateLimitFacts, z.output<typeof RateLimitFindings>>,
  true satisfies Within<RateLimitFacts, typeof RateLimitFindings>,
];

test("the hand-written facts types match their finding schemas (checked by tsc)", () => {
  assert.equal(checks.length, 5);
});
