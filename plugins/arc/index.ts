/**
 * ARC (RFC 8617) chain validation after DATA. A forwarder or mailing list that changes a message
 * breaks its DKIM signature; if it sealed what it saw on arrival, and we trust that sealer, the
 * dmarc plugin does not hold the breakage against the sender (`arc.trusted`). Nobody is trusted
 * unless the policy lists them.
 */
import { definePlugin, verdict } from "../../core/index.js";
import { type ArcFacts, ArcFindings } from "../shared/sender-auth/facts.js";
import { arcVerification, parsedMessage } from "../shared/sender-auth/message.js";
import { ArcOptions } from "./schema.js";

/** The results a sealer recorded in its ARC-Authentication-Results, as mailauth parsed them. */
interface SealerAuthResults {
  spf?: { result?: string };
  dkim?: Array<{ result?: string }>;
  dmarc?: { result?: string };
}

export default definePlugin({
  name: "arc",
  options: ArcOptions,
  findings: { arc: ArcFindings },
  verdicts: {
    pass: { action: "ignore" },
    fail: { action: "ignore", reply: "550 5.7.29 ARC: the chain of custody does not validate" },
    none: { action: "ignore" },
  },
  setup(options) {
    const trusted = new Set(options.trustedSealers);
    return {
      async data(ctx) {
        const [parsed, verified] = await Promise.all([parsedMessage(ctx), arcVerification(ctx)]);
        const result = verified.status.result === "pass" ? "pass" : verified.status.result === "fail" ? "fail" : "none";
        const sealer = parsed.arc.lastEntry?.["arc-seal"]?.parsed?.d?.value?.toLowerCase() ?? null;
        const recorded = (verified.authenticationResults ?? {}) as SealerAuthResults;
        const dkim = recorded.dkim ?? [];
        const sealerResults = {
          spf: recorded.spf?.result ?? null,
          dkim: dkim.some((entry) => entry.result === "pass") ? "pass" : (dkim[0]?.result ?? null),
          dmarc: recorded.dmarc?.result ?? null,
        };
        const facts: ArcFacts = {
          result,
          reason: result === "pass" ? null : (verified.status.comment ?? null),
          instance: typeof verified.i === "number" ? verified.i : 0,
          sealer,
          sealerResults,
          trusted: result === "pass" && sealer !== null && trusted.has(sealer) && sealerResults.dmarc === "pass",
        };
        ctx.facts.arc = facts;
        return verdict(result);
      },
    };
  },
});
