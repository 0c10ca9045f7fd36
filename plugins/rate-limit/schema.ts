import { z } from "zod";
import { type Action, ActionSchema, Duration, parseDuration, parseSize } from "../../core/index.js";
import { NetworkEntry } from "../shared/options.js";

export const KEY_PARTS = [
  "client.ip",
  "client.net",
  "helo",
  "sender",
  "sender.domain",
  "recipient",
  "recipient.domain",
  "auth.user",
] as const;
export type KeyPart = (typeof KEY_PARTS)[number];

export const COUNTS = ["connections", "messages", "recipients", "bytes"] as const;
export type Count = (typeof COUNTS)[number];

/** What rate-limit records under `rateLimit`; its facts type (RateLimitFacts) is checked against it by a type test. */
export const RateLimitFindings = z
  .object({
    exceeded: z.string().nullable().describe("the limit that decided (the first exceeded one), or null"),
    retryAfter: z
      .number()
      .describe("seconds until the exceeded limit would allow the transaction (for the reply's retry hint)"),
    checks: z
      .array(
        z
          .object({
            limit: z.string().describe("the limit's name"),
            key: z.string().describe("the bucket's key, e.g. the client network"),
            count: z.enum(COUNTS).describe("what the limit counts"),
            cost: z.number().describe("what this step added"),
            allowed: z.boolean().describe("the bucket had room"),
            remaining: z.number().describe("room left in the bucket"),
          })
          .readonly(),
      )
      .readonly()
      .describe("the buckets checked in the latest step (connect, MAIL, RCPT, DATA or queue)"),
    storeUnavailable: z.boolean().describe("the store was unreachable, so the policy's state.onStoreError applied"),
  })
  .readonly();

/** A limit's action: any policy action, or a tarpit (wait, then go on). */
export type LimitAction = Action | { readonly type: "tarpit"; readonly ms: number };

const Rate = z
  .string()
  .transform((text, ctx) => {
    const [amountText, periodText, extra] = text.split("/").map((part) => part.trim());
    // "100/m" means "100/1m".
    const period = periodText && /^\d/.test(periodText) ? periodText : `1${periodText}`;
    const amount = amountText ? parseSize(amountText) : undefined;
    const periodMs = parseDuration(period);
    if (extra !== undefined || !amount || !periodMs) {
      ctx.addIssue({
        code: "custom",
        message: `"${text}" is not a rate: write AMOUNT/PERIOD, e.g. "100/1m", "1000/1h" or "50MB/1d" for bytes`,
      });
      return z.NEVER;
    }
    return { text, amount, periodMs };
  })
  .describe('units per period, e.g. "100/1m", "1000/1h", "50MB/1d" (bytes)');

const Exempt = z
  .strictObject({
    networks: z.array(NetworkEntry).default([]).describe("client networks never limited"),
    authenticated: z.boolean().default(false).describe("authenticated clients are never limited"),
    keys: z
      .array(z.string().transform((text) => text.toLowerCase()))
      .default([])
      .describe('key values never limited (an allowlist), e.g. "partner.example" for a sender.domain limit'),
  })
  .describe("who is not limited");

const Tarpit = z
  .strictObject({ tarpit: Duration.describe("how long to wait; keep it under the entry's timeout") })
  .transform((input): LimitAction => ({ type: "tarpit", ms: input.tarpit }));

const CountAt = z
  .enum(["accepted", "attempts"])
  .describe(
    "accepted: only transactions that reach the queue phase count (deferred retries cost nothing); " +
      "attempts: every MAIL, RCPT and DATA counts when it is made",
  );

const Limit = z
  .strictObject({
    name: z
      .string()
      .regex(/^[A-Za-z0-9_.+/-]+$/, "letters, digits and _ . + / - only")
      .optional()
      .describe("names the buckets (NAME:VALUE) for `portcullis limits`; default KEY/COUNT/RATE"),
    key: z
      .union([z.enum(KEY_PARTS), z.array(z.enum(KEY_PARTS)).min(1)])
      .transform((value) => (Array.isArray(value) ? value : [value]))
      .describe(`what is limited: ${KEY_PARTS.join(", ")}, or a list of these (a composite key)`),
    count: z
      .enum(COUNTS)
      .default("messages")
      .describe(`what is counted: ${COUNTS.join(", ")}`),
    rate: Rate,
    burst: z
      .int()
      .positive()
      .optional()
      .describe("how many units may come at once (default: the rate's amount); refilled at the rate"),
    action: z
      .union([Tarpit, ActionSchema])
      .prefault("defer")
      .describe(
        'what exceeding does: defer (default, 451 4.7.0 with a retry hint), reject, disconnect, { score: N }, { tarpit: "5s" }, ignore',
      ),
    countAt: CountAt.optional().describe("overrides the plugin's countAt for this limit"),
    exempt: Exempt.optional().describe("exemptions for this limit, on top of the plugin's"),
  })
  .superRefine((limit, ctx) => {
    if (limit.count === "connections") {
      for (const part of limit.key) {
        if (part !== "client.ip" && part !== "client.net") {
          ctx.addIssue({
            code: "custom",
            path: ["key"],
            message: `connections are counted when a client connects, before ${part} is known: use client.ip or client.net`,
          });
        }
      }
    }
    if (limit.count === "connections" && limit.countAt !== undefined) {
      ctx.addIssue({ code: "custom", path: ["countAt"], message: "a connection always counts when it is made" });
    }
  });

export const RateLimitOptions = z
  .strictObject({
    limits: z.array(Limit).min(1).describe("the limits, checked in order; the first one exceeded decides"),
    countAt: CountAt.default("accepted"),
    exempt: Exempt.prefault({}),
  })
  .superRefine((options, ctx) => {
    const seen = new Set<string>();
    options.limits.forEach((limit, index) => {
      const name = limitName(limit);
      if (seen.has(name)) {
        ctx.addIssue({
          code: "custom",
          path: ["limits", index, "name"],
          message: `two limits share the name "${name}", so they would share buckets: give one a name`,
        });
      }
      seen.add(name);
    });
  });

export type RateLimitOptions = z.output<typeof RateLimitOptions>;
export type LimitOptions = RateLimitOptions["limits"][number];

export function limitName(limit: Pick<LimitOptions, "name" | "key" | "count" | "rate">): string {
  return limit.name ?? `${limit.key.join("+")}/${limit.count}/${limit.rate.text.replace(/\s+/g, "")}`;
}
