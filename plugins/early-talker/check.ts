/** The pregreet judgement as a pure function of what the listener saw. */
import { type Pregreet, z } from "../../core/index.js";

export const EarlyTalkerFindings = z
  .object({
    result: z
      .enum(["pass", "early", "skipped"])
      .describe("early: sent before the banner; pass: waited the whole delay; skipped: not tested this time"),
    skipped: z.enum(["allowlisted", "recent-pass"]).nullable().describe("why the test was skipped"),
    delayMs: z.number().describe("how long the banner was held back for this client, in milliseconds"),
  })
  .readonly();

export type EarlyTalkerFacts = z.output<typeof EarlyTalkerFindings>;

/**
 * Allowlisted clients are never judged. Anyone else who talks first is an early talker, even
 * without a delay (a recent pass does not excuse it). A banner that came sooner than the test's
 * delay means the pass cache let the client skip the test.
 */
export function judgePregreet(pregreet: Pregreet, allowlisted: boolean, testDelayMs: number): EarlyTalkerFacts {
  const { delayMs, talkedEarly } = pregreet;
  if (allowlisted) return { result: "skipped", skipped: "allowlisted", delayMs };
  if (talkedEarly) return { result: "early", skipped: null, delayMs };
  if (delayMs >= testDelayMs) return { result: "pass", skipped: null, delayMs };
  return { result: "skipped", skipped: "recent-pass", delayMs };
}
