import { z } from "zod";
import { Size } from "../../core/index.js";
import { DaemonAddressOption } from "../shared/scanner-daemon.js";

export const SpamassassinOptions = z.strictObject({
  address: DaemonAddressOption.prefault("127.0.0.1:783").describe(
    'where spamd listens: HOST:PORT ("127.0.0.1:783") or the absolute path of its unix socket',
  ),
  user: z
    .string()
    .regex(/^[\w.@+-]{1,64}$/, "a user name: letters, digits and . @ + - _")
    .optional()
    .describe("sent as spamd's User header, whose preferences spamd applies; default: none (spamd's own user)"),
  maxSize: Size.prefault("500KB").describe(
    "a larger message is delivered unscanned, with a finding saying so (spamc's default limit is 500KB)",
  ),
  rejectAbove: z
    .number()
    .positive()
    .optional()
    .describe(
      "a second threshold: a score at or above it gives the verdict high-score (default: reject 554 5.7.1); " +
        "unset, spam is only tagged",
    ),
});

export type SpamassassinOptions = z.output<typeof SpamassassinOptions>;

export const SpamassassinFindings = z
  .object({
    status: z
      .enum(["scanned", "skipped", "error"])
      .describe("scanned by spamd; skipped (larger than maxSize, delivered unscanned); error (spamd failed)"),
    reason: z.string().nullable().describe("why the message was skipped or the scan failed; null when scanned"),
    spam: z.boolean().describe("spamd judged the message spam (score at or above its threshold)"),
    score: z.number().nullable().describe("spamd's score; null when not scanned"),
    threshold: z.number().nullable().describe("spamd's required score; null when not scanned"),
    rules: z.array(z.string()).readonly().describe("the SpamAssassin rules that hit, e.g. GTUBE"),
  })
  .readonly();

export type SpamassassinFacts = z.output<typeof SpamassassinFindings>;
