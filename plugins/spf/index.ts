/**
 * SPF (RFC 7208) at MAIL FROM, so a failing sender is refused before DATA (evaluate.ts remembers
 * results while the DNS answers behind them stay the same). The null sender (a
 * bounce) has no domain to check, so the HELO name is checked instead (§2.3).
 */
import { isIP } from "node:net";
import { definePlugin, verdict } from "../../core/index.js";
import { type SpfFacts, SpfFindings, type SpfResult } from "../shared/sender-auth/facts.js";
import { spfEvaluator } from "./evaluate.js";
import { SpfOptions } from "./schema.js";

const RESULTS: ReadonlySet<string> = new Set<SpfResult>([
  "pass",
  "fail",
  "softfail",
  "neutral",
  "none",
  "temperror",
  "permerror",
]);

export default definePlugin({
  name: "spf",
  options: SpfOptions,
  findings: { spf: SpfFindings },
  verdicts: {
    pass: { action: "ignore" },
    fail: {
      action: "reject",
      reply: "550 5.7.23 SPF: {spf.domain} does not permit [{client.ip}] to send mail as {spf.sender}",
    },
    softfail: { action: "ignore", reply: "550 5.7.23 SPF: {spf.domain} does not permit [{client.ip}] (softfail)" },
    neutral: { action: "ignore" },
    none: { action: "ignore" },
    temperror: { action: "defer", reply: "451 4.7.24 SPF: lookup for {spf.domain} failed, try again later" },
    permerror: { action: "ignore", reply: "550 5.7.24 SPF: the record of {spf.domain} is invalid" },
  },
  setup(options) {
    const evaluator = spfEvaluator();
    return {
      async mail(ctx) {
        const { sender } = ctx.transaction;
        const { connection } = ctx;
        const heloName = connection.helo ?? connection.client.ip;
        const helo = isIP(heloName) ? `[${heloName}]` : heloName;
        const identity = sender.domain === "" ? "helo" : "mailfrom";
        // Without a sender mailauth checks postmaster@<helo>, which is RFC 7208's HELO identity.
        const checked = await evaluator.check(
          {
            ip: connection.client.ip,
            helo,
            sender: identity === "mailfrom" ? `${sender.local}@${sender.domain}` : undefined,
            mta: ctx.hostname,
            maxLookups: options.maxLookups,
            maxVoidLookups: options.maxVoidLookups,
          },
          ctx.dns,
        );
        const raw = String(checked.status.result);
        const result: SpfResult = RESULTS.has(raw) ? (raw as SpfResult) : "temperror";
        const skipped = connection.trusted && !options.enforceOnTrusted;
        const facts: SpfFacts = {
          result,
          identity,
          sender: checked["envelope-from"] ?? `postmaster@${helo}`,
          domain: checked.domain,
          explanation: checked.status.comment ?? "",
          record: checked.rr ?? null,
          skipped,
        };
        ctx.facts.spf = facts;
        if (skipped) return undefined;
        const points = options.scores[result];
        if (points) ctx.addScore(points, `spf=${result}`);
        return verdict(result);
      },
    };
  },
});
