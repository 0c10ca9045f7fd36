import { z } from "zod";
import type { SpfResult } from "../shared/sender-auth/facts.js";

const Points = z.number().describe("points added to the transaction's score");

export const SpfOptions = z.strictObject({
  scores: z
    .strictObject({
      pass: Points.optional(),
      fail: Points.optional(),
      softfail: Points.optional(),
      neutral: Points.optional(),
      none: Points.optional(),
      temperror: Points.optional(),
      permerror: Points.optional(),
    } satisfies Record<SpfResult, z.ZodOptional<typeof Points>>)
    .default({ softfail: 3 })
    .describe("points per SPF result, added besides any action; default { softfail: 3 }"),
  enforceOnTrusted: z
    .boolean()
    .default(false)
    .describe("also act on clients in relay.networks and authenticated clients (default: record only)"),
  maxLookups: z.number().int().min(1).max(100).default(10).describe("DNS-querying terms allowed (RFC 7208: 10)"),
  maxVoidLookups: z.number().int().min(0).max(100).default(2).describe("lookups with no answer allowed (RFC 7208: 2)"),
});

export type SpfOptions = z.output<typeof SpfOptions>;
