/**
 * Greylisting: the first attempt of a (client, sender, recipient) triplet is deferred; a retry
 * after `delay` passes, and the triplet then passes for `lifetime`. Real MTAs retry; most bulk
 * senders do not. Records live in the state store, so every gateway of a cluster knows them.
 */
import {
  type Address,
  type ConnectionContext,
  clientNet,
  definePlugin,
  type Facts,
  type GreylistStatus,
  NetworkList,
  type StateStore,
  storeFailure,
  verdict,
  z,
} from "../../core/index.js";
import { GreylistOptions } from "./schema.js";

export const GreylistFindings = z
  .object({
    status: z
      .enum(["new", "early", "passed", "known", "skipped", "unavailable"])
      .describe(
        "the worst status over the transaction's triplets (new, early, passed, known), or why none was checked (skipped, unavailable)",
      ),
    retryIn: z.number().describe("seconds until a retry passes (0 when it passes now)"),
  })
  .readonly();

export type GreylistFacts = z.output<typeof GreylistFindings>;

declare module "../../core/index.js" {
  interface Facts {
    greylist: GreylistFacts;
  }
}

const RANK: Record<GreylistStatus, number> = { known: 0, passed: 1, early: 2, new: 3 };

function matches(list: ReadonlySet<string>, address: Address): boolean {
  return list.has(address.address.toLowerCase()) || list.has(address.domain);
}

function finding(facts: Partial<Facts>, path: readonly string[]): string | undefined {
  let value: unknown = facts;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value === undefined || value === null ? undefined : String(value).toLowerCase();
}

export default definePlugin({
  name: "greylist",
  options: GreylistOptions,
  findings: { greylist: GreylistFindings },
  verdicts: {
    greylisted: { action: "defer", reply: "451 4.7.1 Greylisted, please try again in {greylist.retryIn}s" },
  },
  setup(options) {
    const params = { delayMs: options.delay, retryWindowMs: options.retryWindow, lifetimeMs: options.lifetime };
    const networks = new NetworkList(options.skip.networks);
    const senders = new Set(options.skip.senders);
    const recipients = new Set(options.skip.recipients);

    const clientPart = async (connection: ConnectionContext) => {
      const name = options.client === "ptr-domain" ? connection.verifiedName : null;
      if (!name) return clientNet(connection.client.ip);
      // The public suffix list (~7 MB in memory) loads with the first client that has a verified name.
      const { getDomain } = await import("tldts");
      return getDomain(name) || clientNet(connection.client.ip);
    };
    const skipped = (connection: ConnectionContext, sender: Address, facts: Partial<Facts>) =>
      networks.has(connection.client.ip) ||
      (options.skip.authenticated && connection.authUser !== null) ||
      matches(senders, sender) ||
      options.skip.when.some((set) =>
        set.every(({ path, values }) => {
          const found = finding(facts, path);
          return found !== undefined && values.includes(found);
        }),
      );

    /** Records the attempt of every triplet; the worst status decides. */
    async function check(
      state: StateStore,
      connection: ConnectionContext,
      sender: Address,
      to: readonly Address[],
      facts: Partial<Facts>,
    ) {
      if (skipped(connection, sender, facts)) {
        facts.greylist = { status: "skipped", retryIn: 0 };
        return undefined;
      }
      const client = await clientPart(connection);
      const senderKey = sender.address.toLowerCase() || "<>";
      let results: Array<{ status: GreylistStatus; retryInMs: number }>;
      try {
        results = await Promise.all(
          to
            .filter((recipient) => !matches(recipients, recipient))
            .map((recipient) => state.greylist(`${client}|${senderKey}|${recipient.address.toLowerCase()}`, params)),
        );
      } catch (err) {
        facts.greylist = { status: "unavailable", retryIn: 0 };
        return storeFailure(err, state.onStoreError);
      }
      if (results.length === 0) {
        facts.greylist = { status: "skipped", retryIn: 0 };
        return undefined;
      }
      const worst = results.reduce((a, b) => (RANK[b.status] > RANK[a.status] ? b : a));
      const retryInMs = Math.max(...results.map((r) => r.retryInMs));
      facts.greylist = { status: worst.status, retryIn: Math.ceil(retryInMs / 1000) };
      return worst.status === "new" || worst.status === "early" ? verdict("greylisted") : undefined;
    }

    return options.at === "rcpt"
      ? {
          rcpt: (ctx) => check(ctx.state, ctx.connection, ctx.transaction.sender, [ctx.recipient], ctx.facts),
        }
      : {
          data: (ctx) =>
            check(ctx.state, ctx.connection, ctx.transaction.sender, ctx.transaction.recipients, ctx.facts),
        };
  },
});
