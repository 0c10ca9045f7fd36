import { z } from "zod";
import { Duration } from "../../core/index.js";
import { NetworkEntry } from "../shared/options.js";

const Lower = z.string().transform((text) => text.toLowerCase());

/** A set of findings that must all hold, by path: `{ spf.result: pass, dmarc.result: pass }`. */
const Findings = z.record(z.string(), z.union([z.string(), z.array(z.string()).min(1)])).transform((record) =>
  Object.entries(record).map(([path, value]) => ({
    path: path.split("."),
    values: (Array.isArray(value) ? value : [value]).map((v) => v.toLowerCase()),
  })),
);

export const GreylistOptions = z
  .strictObject({
    delay: Duration.prefault("5m").describe("a retry sooner than this after the first attempt is deferred again"),
    retryWindow: Duration.prefault("2d").describe("a retry later than this after the first attempt starts over"),
    lifetime: Duration.prefault("35d").describe("a triplet that passed keeps passing this long after it was last seen"),
    client: z
      .enum(["net", "ptr-domain"])
      .default("net")
      .describe(
        "the client part of the triplet: net (/24, /64), or ptr-domain (the organizational domain of the " +
          "forward-confirmed PTR name, so a sender's pool of outbound hosts counts as one; net when there is none)",
      ),
    at: z
      .enum(["rcpt", "data"])
      .default("rcpt")
      .describe(
        "rcpt: defer each new recipient at RCPT TO; data: defer the message after DATA, when findings of the " +
          "message (DMARC) can exempt it",
      ),
    skip: z
      .strictObject({
        networks: z.array(NetworkEntry).default([]).describe("client networks never greylisted"),
        authenticated: z.boolean().default(true).describe("authenticated clients are never greylisted"),
        senders: z
          .array(Lower)
          .default([])
          .describe('sender addresses or domains never greylisted ("user@example.test", "example.test")'),
        recipients: z
          .array(Lower)
          .default([])
          .describe('recipient addresses or domains never greylisted (e.g. "postmaster@example.test")'),
        when: z
          .array(Findings)
          .default([])
          .describe(
            "sets of findings that exempt a transaction when every path of one set has one of its values, e.g. " +
              '[{ "spf.result": pass, "dmarc.result": pass }] (DMARC is known only with at: data)',
          ),
      })
      .prefault({})
      .describe("what is never greylisted"),
  })
  .superRefine((options, ctx) => {
    if (options.retryWindow <= options.delay) {
      ctx.addIssue({ code: "custom", path: ["retryWindow"], message: "retryWindow must be longer than delay" });
    }
  });

export type GreylistOptions = z.output<typeof GreylistOptions>;
