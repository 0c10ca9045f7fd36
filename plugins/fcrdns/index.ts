/**
 * fcrdns: the client's PTR names, each confirmed by a forward lookup. Sets the connection's
 * verified name (Received header) and `iprev` (Authentication-Results); the policy acts on the
 * result through the verdicts pass, fail, none and temperror.
 */
import { definePlugin, settle, verdict } from "../../core/index.js";
import { candidateNames, type FcrdnsFacts, FcrdnsFindings, iprevOf, judgeFcrdns } from "./check.js";
import { FcrdnsOptions } from "./schema.js";

export type { FcrdnsFacts, FcrdnsResult } from "./check.js";

declare module "../../core/index.js" {
  interface Facts {
    fcrdns: FcrdnsFacts;
  }
}

export default definePlugin({
  name: "fcrdns",
  options: FcrdnsOptions,
  findings: { fcrdns: FcrdnsFindings },
  verdicts: {
    pass: { action: "ignore" },
    fail: { action: "reject", reply: "550 5.7.25 Client host rejected: reverse DNS does not match [{client.ip}]" },
    none: { action: "defer", reply: "450 4.7.25 Client host rejected: cannot find your hostname [{client.ip}]" },
    temperror: {
      action: "defer",
      reply: "451 4.4.3 Client host rejected: reverse DNS lookup failed for [{client.ip}], try again later",
    },
  },
  setup: (options) => ({
    connect: async (ctx) => {
      const { ip, family } = ctx.connection.client;
      const ptr = await settle(ctx.dns.reverse(ip, ctx.signal));
      const names = ptr.kind === "answer" ? candidateNames(ptr.value, options.maxNames) : [];
      // Only the client's own family can confirm it; every name is looked up at once.
      const forwardType = family === 4 ? "A" : "AAAA";
      const outcomes = await Promise.all(
        names.map((name) =>
          settle(family === 4 ? ctx.dns.resolve4(name, ctx.signal) : ctx.dns.resolve6(name, ctx.signal)),
        ),
      );
      const facts = judgeFcrdns(ip, ptr, names, new Map(names.map((name, i) => [name, outcomes[i]])), forwardType);
      ctx.facts.fcrdns = facts;
      ctx.connection.iprev = iprevOf(facts);
      if (facts.confirmed) ctx.connection.verifiedName = facts.confirmed;
      ctx.log.debug({ event: "finding", plugin: "fcrdns", fcrdns: facts }, "fcrdns");
      return verdict(facts.result);
    },
  }),
});
