/**
 * Rate limits on shared state (GCRA, exact burst): per client, network, HELO, sender, recipient,
 * authenticated user or a composite of these; counting connections, messages, recipients or bytes.
 *
 * By default only accepted transactions count (`countAt: accepted`): MAIL and RCPT check the
 * bucket without taking from it, so an over-limit client is told early, and the units are taken in
 * the queue phase, in one atomic step for all limits. A transaction that is deferred or rejected
 * on the way (greylisting, a DNSBL, a failed DATA) costs nothing, and its retry is not punished.
 */
import { setTimeout as sleep } from "node:timers/promises";
import {
  type Action,
  type Address,
  actionDecision,
  type BucketRequest,
  type BucketResult,
  type ConnectionContext,
  type DecidedBy,
  type Decision,
  definePlugin,
  NetworkList,
  type Services,
  storeFailure,
} from "../../core/index.js";
import { demand, growth, keyValue, perRecipient, type TransactionView } from "./demand.js";
import {
  type Count,
  type LimitAction,
  type LimitOptions,
  limitName,
  RateLimitFindings,
  RateLimitOptions,
} from "./schema.js";

export interface RateLimitCheck {
  readonly limit: string;
  readonly key: string;
  readonly count: Count;
  readonly cost: number;
  readonly allowed: boolean;
  readonly remaining: number;
}

export interface RateLimitFacts {
  /** The limit that decided (the first exceeded one), or null. */
  readonly exceeded: string | null;
  /** Seconds until the exceeded limit would allow the transaction (for the reply's retry hint). */
  readonly retryAfter: number;
  /** The buckets checked in the latest step (connect, MAIL, RCPT, DATA or queue). */
  readonly checks: readonly RateLimitCheck[];
  /** The store was unreachable, so the policy's `state.onStoreError` applied. */
  readonly storeUnavailable: boolean;
}

declare module "../../core/index.js" {
  interface Facts {
    rateLimit: RateLimitFacts;
  }
}

const DEFAULT_REPLIES: Record<"reject" | "defer" | "disconnect", string> = {
  defer: "451 4.7.0 Rate limit exceeded, try again in {rateLimit.retryAfter}s",
  reject: "550 5.7.1 Rate limit exceeded",
  disconnect: "421 4.7.0 Rate limit exceeded, try again in {rateLimit.retryAfter}s",
};

interface Limit {
  readonly name: string;
  readonly shape: Pick<LimitOptions, "key" | "count">;
  readonly intervalMs: number;
  readonly burst: number;
  readonly action: LimitAction;
  /** Exceeding refuses the transaction, so nothing else of its batch may be taken. */
  readonly blocking: boolean;
  readonly countAt: "accepted" | "attempts";
  readonly exempt: (connection: ConnectionContext, key: string) => boolean;
}

/** One bucket a step asks about: a limit, a key value and the units. */
interface Demand {
  readonly limit: Limit;
  readonly key: string;
  readonly cost: number;
}

function compile(options: RateLimitOptions): Limit[] {
  return options.limits.map((limit) => {
    const burst = limit.burst ?? limit.rate.amount;
    const networks = new NetworkList([...options.exempt.networks, ...(limit.exempt?.networks ?? [])]);
    const authenticated = options.exempt.authenticated || (limit.exempt?.authenticated ?? false);
    const keys = new Set([...options.exempt.keys, ...(limit.exempt?.keys ?? [])]);
    const type = limit.action.type;
    return {
      name: limitName(limit),
      shape: { key: limit.key, count: limit.count },
      intervalMs: limit.rate.periodMs / limit.rate.amount,
      burst,
      action: limit.action,
      blocking: type === "reject" || type === "defer" || type === "disconnect",
      countAt: limit.countAt ?? options.countAt,
      exempt: (connection, key) =>
        networks.has(connection.client.ip) ||
        (authenticated && connection.authUser !== null) ||
        key.split(",").some((part) => keys.has(part)) ||
        keys.has(key),
    };
  });
}

function declaredSize(sender: Address): number {
  const size = Number(sender.args.SIZE);
  return Number.isSafeInteger(size) && size > 0 ? size : 1;
}

interface StepContext extends Services {
  readonly connection: ConnectionContext;
  readonly facts: { rateLimit?: RateLimitFacts };
  readonly transaction?: { readonly sender: Address };
  readonly recipient?: Address;
  readonly signal: AbortSignal;
  addScore(points: number, reason: string): void;
}

const BY: DecidedBy = { source: "plugin", name: "rate-limit" };

/**
 * Asks the store about every demand of one step at once. `commit: false` only checks (the units
 * are taken later); non-blocking actions (score, tarpit) then wait for the step that takes them,
 * so they apply once per transaction.
 */
async function step(ctx: StepContext, demands: readonly Demand[], commit: boolean): Promise<Decision | undefined> {
  const wanted = demands.filter((d) => !d.limit.exempt(ctx.connection, d.key));
  if (wanted.length === 0) return undefined;
  const requests: BucketRequest[] = wanted.map(({ limit, key, cost }) => ({
    key: `${limit.name}:${key}`,
    intervalMs: limit.intervalMs,
    burst: limit.burst,
    // A transaction bigger than the whole burst needs a full bucket rather than never passing.
    cost: Math.min(cost, limit.burst),
    commit,
    blocking: limit.blocking,
  }));
  let results: BucketResult[];
  try {
    results = await ctx.state.consume(requests);
  } catch (err) {
    ctx.facts.rateLimit = { exceeded: null, retryAfter: 0, checks: [], storeUnavailable: true };
    return storeFailure(err, ctx.state.onStoreError);
  }
  const checks = wanted.map(({ limit, key }, i) => ({
    limit: limit.name,
    key,
    count: limit.shape.count,
    cost: requests[i].cost,
    allowed: results[i].allowed,
    remaining: results[i].remaining,
  }));
  const denied = wanted.flatMap((d, i) =>
    results[i].allowed ? [] : [{ ...d, retryAfterMs: results[i].retryAfterMs }],
  );
  const deciding = denied.find((d) => d.limit.blocking) ?? denied[0];
  ctx.facts.rateLimit = {
    exceeded: deciding?.limit.name ?? null,
    retryAfter: deciding ? Math.max(1, Math.ceil(deciding.retryAfterMs / 1000)) : 0,
    checks,
    storeUnavailable: false,
  };
  if (!deciding) return undefined;
  const scope = {
    connection: ctx.connection,
    facts: ctx.facts,
    sender: ctx.transaction?.sender.address,
    recipient: ctx.recipient?.address,
  };
  const reason = (d: Demand) => `${d.limit.name} exceeded by ${d.key}`;
  if (deciding.limit.blocking) {
    const action = deciding.limit.action as Action;
    const defaultReply = action.type in DEFAULT_REPLIES ? DEFAULT_REPLIES[action.type as "defer"] : undefined;
    ctx.log.info({ limit: deciding.limit.name, key: deciding.key, action: action.type }, "rate limit exceeded");
    return actionDecision(action, BY, defaultReply, scope, ctx.addScore, reason(deciding));
  }
  if (!commit) return undefined;
  let tarpitMs = 0;
  for (const d of denied) {
    if (d.limit.action.type === "tarpit") tarpitMs = Math.max(tarpitMs, d.limit.action.ms);
    else actionDecision(d.limit.action, BY, undefined, scope, ctx.addScore, reason(d));
  }
  if (tarpitMs > 0) await sleep(tarpitMs, undefined, { signal: ctx.signal });
  return undefined;
}

function collect(limits: readonly Limit[], select: (limit: Limit) => Map<string, number> | null): Demand[] {
  return limits.flatMap((limit) => [...(select(limit) ?? [])].map(([key, cost]) => ({ limit, key, cost })));
}

export default definePlugin({
  name: "rate-limit",
  options: RateLimitOptions,
  findings: { rateLimit: RateLimitFindings },
  setup(options) {
    const limits = compile(options);
    const connections = limits.filter((l) => l.shape.count === "connections");
    const transactional = limits.filter((l) => l.shape.count !== "connections");
    const attempts = transactional.filter((l) => l.countAt === "attempts");
    const accepted = transactional.filter((l) => l.countAt === "accepted");
    return {
      async connect(ctx) {
        const view: TransactionView = { connection: ctx.connection, recipients: [], size: 0 };
        return step(
          ctx,
          collect(connections, (l) => demand(l.shape, view)),
          true,
        );
      },
      async mail(ctx) {
        const { sender } = ctx.transaction;
        const view: TransactionView = { connection: ctx.connection, sender, recipients: [], size: 0 };
        const checkView = { ...view, size: declaredSize(sender) };
        return (
          (await step(
            ctx,
            collect(attempts, (l) => demand(l.shape, view)),
            true,
          )) ??
          step(
            ctx,
            collect(accepted, (l) => demand(l.shape, checkView)),
            false,
          )
        );
      },
      async rcpt(ctx) {
        const { sender, recipients } = ctx.transaction;
        const before: TransactionView = { connection: ctx.connection, sender, recipients, size: 0 };
        const after = { ...before, recipients: [...recipients, ctx.recipient] };
        const checkView = { ...after, size: declaredSize(sender) };
        const taken = collect(attempts, (l) => growth(demand(l.shape, before), demand(l.shape, after)));
        const checked = collect(accepted, (l) => {
          const costs = demand(l.shape, checkView);
          if (!perRecipient(l.shape)) return costs;
          // Other recipients' buckets were checked at their own RCPT; this one answers for itself.
          const own = keyValue(l.shape, checkView, ctx.recipient);
          return own === null || !costs.has(own) ? null : new Map([[own, costs.get(own)!]]);
        });
        return (await step(ctx, taken, true)) ?? step(ctx, checked, false);
      },
      async data(ctx) {
        const { sender, recipients } = ctx.transaction;
        const before: TransactionView = { connection: ctx.connection, sender, recipients, size: 0 };
        const after = { ...before, size: ctx.message.size };
        return step(
          ctx,
          collect(attempts, (l) => growth(demand(l.shape, before), demand(l.shape, after))),
          true,
        );
      },
      async queue(ctx) {
        const { sender, recipients } = ctx.transaction;
        const view: TransactionView = { connection: ctx.connection, sender, recipients, size: ctx.message.size };
        return step(
          ctx,
          collect(accepted, (l) => demand(l.shape, view)),
          true,
        );
      },
    };
  },
});
