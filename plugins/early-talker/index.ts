/**
 * early-talker (postscreen's pregreet test): the banner is held back for a while, and a client
 * that sends before it is not speaking SMTP as a mail server would (RFC 5321 §3.1: the client
 * waits for the greeting). Allowlisted networks and clients that passed recently get the banner at
 * once. The delay is asked of the `pregreet` hook before the banner; the connect hook judges what
 * the listener saw, so the policy decides what talking first costs (default: 554 5.5.1, disconnect).
 */
import { definePlugin, NetworkList, verdict } from "../../core/index.js";
import { type EarlyTalkerFacts, EarlyTalkerFindings, judgePregreet } from "./check.js";
import { EarlyTalkerOptions } from "./schema.js";

export type { EarlyTalkerFacts } from "./check.js";

declare module "../../core/index.js" {
  interface Facts {
    earlyTalker: EarlyTalkerFacts;
  }
}

const passKey = (ip: string) => `early-talker:pass:${ip}`;

export default definePlugin({
  name: "early-talker",
  options: EarlyTalkerOptions,
  findings: { earlyTalker: EarlyTalkerFindings },
  verdicts: {
    early: { action: "disconnect", reply: "554 5.5.1 Protocol error: talking before the greeting" },
  },
  setup: (options) => {
    const allow = new NetworkList(options.allow);
    return {
      pregreet: async (ctx) => {
        if (allow.has(ctx.client.ip)) return 0;
        try {
          if ((await ctx.state.get(passKey(ctx.client.ip))) !== null) return 0;
        } catch (error) {
          // Without the pass cache the test simply runs: a delay costs the client seconds, never mail.
          ctx.log.warn({ err: (error as Error).message }, "early-talker: pass cache unreadable; delaying");
        }
        return options.delay;
      },
      connect: async (ctx) => {
        const { pregreet, client } = ctx.connection;
        // Sessions that did not come through a listener (the test kit) have no banner to judge.
        if (!pregreet) return undefined;
        const facts = judgePregreet(pregreet, allow.has(client.ip), options.delay);
        ctx.facts.earlyTalker = facts;
        ctx.log.debug({ event: "finding", plugin: "early-talker", earlyTalker: facts }, "early-talker");
        try {
          if (facts.result === "pass") await ctx.state.set(passKey(client.ip), "1", options.passTtl);
          if (facts.result === "early") await ctx.state.delete(passKey(client.ip));
        } catch (error) {
          ctx.log.warn({ err: (error as Error).message }, "early-talker: pass cache not updated");
        }
        return facts.result === "early" ? verdict("early") : undefined;
      },
    };
  },
});
