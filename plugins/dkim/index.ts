/**
 * DKIM verification (RFC 6376) after DATA: every signature with its own result, and the best of
 * them as the verdict. A body changed in transit is `fail` (see `dkimSignatures`).
 */
import { z } from "zod";
import { definePlugin, verdict } from "../../core/index.js";
import { DkimFindings } from "../shared/sender-auth/facts.js";
import { dkimFacts, dkimSignatures, parsedMessage } from "../shared/sender-auth/message.js";

export default definePlugin({
  name: "dkim",
  options: z.strictObject({}),
  findings: { dkim: DkimFindings },
  verdicts: {
    pass: { action: "ignore" },
    fail: { action: "ignore", reply: "550 5.7.20 DKIM: no valid signature ({dkim.result})" },
    neutral: { action: "ignore", reply: "550 5.7.20 DKIM: no valid signature ({dkim.result})" },
    policy: { action: "ignore", reply: "550 5.7.21 DKIM: no acceptable signature" },
    none: { action: "ignore", reply: "550 5.7.20 DKIM: the message is not signed" },
    temperror: { action: "ignore", reply: "451 4.7.20 DKIM: key lookup failed, try again later" },
    permerror: { action: "ignore", reply: "550 5.7.20 DKIM: no valid signature ({dkim.result})" },
  },
  setup() {
    return {
      async data(ctx) {
        const parsed = await parsedMessage(ctx);
        const facts = dkimFacts(dkimSignatures(parsed.results));
        ctx.facts.dkim = facts;
        return verdict(facts.result);
      },
    };
  },
});
