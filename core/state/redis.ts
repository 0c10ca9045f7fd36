/**
 * The shared store: state in Redis, so every gateway of a cluster enforces the same limits. Each
 * read-modify-write is one Lua script timed by the Redis server's clock. Redis is one server, a
 * Sentinel-watched primary (the client follows failovers), or a Redis Cluster (keys carry hash
 * tags, core/state/keys.ts, so each script's keys share a slot).
 *
 * An outage must never stall SMTP: the offline queue is off (a command fails at once while
 * disconnected), commands time out quickly, and ioredis keeps reconnecting in the background, so
 * the store recovers by itself when Redis is back. Failures surface as StoreUnavailableError.
 *
 * ioredis is imported when a store is created, not with this module: it costs tens of megabytes
 * of memory, which a gateway on the memory store should not pay.
 */
import { once } from "node:events";
import type { Cluster, Redis } from "ioredis";
import type { Logger } from "pino";
import { parseHostPort } from "../toolkit/netaddr.js";
import { gcra } from "./arithmetic.js";
import { REDIS_KINDS, redisKey } from "./keys.js";
import { ACQUIRE_SLOT, CONSUME, GREYLIST, INCREMENT, INSPECT, REFUND, RELEASE_SLOT } from "./redis-scripts.js";
import {
  type BucketRequest,
  type BucketResult,
  type GreylistParams,
  type GreylistResult,
  type GreylistStatus,
  type KeyReport,
  type SlotResult,
  type StateStore,
  type StoreErrorPolicy,
  StoreUnavailableError,
} from "./types.js";

type Reply = string | number | null;
type Client = Redis | Cluster;

interface Scripts {
  pcConsume(numberOfKeys: number, ...keysAndArgs: Array<string | number>): Promise<Reply[][]>;
  pcRefund(key: string, intervalMs: number, cost: number): Promise<number>;
  pcIncrement(key: string, by: number, windowMs: number): Promise<[number, number]>;
  pcAcquireSlot(key: string, holder: string, max: number, leaseMs: number): Promise<[number, number]>;
  pcReleaseSlot(key: string, holder: string): Promise<number>;
  pcGreylist(key: string, delayMs: number, windowMs: number, lifetimeMs: number): Promise<[string, string]>;
  pcInspect(...keys: string[]): Promise<Reply[]>;
}

/** Where the Redis is: one server by URL, a Redis Cluster by some of its nodes, or a Sentinel-watched primary. */
export type RedisTarget =
  | { readonly url: string }
  | {
      /** redis:// or rediss:// URLs of some nodes (the client discovers the others); credentials and TLS are the first node's. */
      readonly cluster: readonly string[];
    }
  | {
      readonly sentinel: {
        /** The Sentinels as host:port. */
        readonly sentinels: readonly string[];
        /** The name the Sentinels monitor the primary under. */
        readonly name: string;
        readonly db?: number;
      };
    };

export type RedisStoreOptions = RedisTarget & {
  readonly log: Logger;
  readonly onStoreError?: StoreErrorPolicy;
  /** Per-operation deadline; a hook waits at most this long for the store. */
  readonly commandTimeoutMs?: number;
  /** Prepended to every key, so several deployments can share one Redis. */
  readonly keyPrefix?: string;
};

/**
 * Replies that mean "not now" rather than "wrong script": a cluster without a quorum, a slot being
 * moved, a primary demoted by a failover and not yet left, a server still loading or busy.
 */
const UNAVAILABLE_REPLY = /^(CLUSTERDOWN|TRYAGAIN|READONLY|LOADING|MASTERDOWN|BUSY)\b/;

const SCRIPTS = [
  ["pcConsume", CONSUME, undefined],
  ["pcRefund", REFUND, 1],
  ["pcIncrement", INCREMENT, 1],
  ["pcAcquireSlot", ACQUIRE_SLOT, 1],
  ["pcReleaseSlot", RELEASE_SLOT, 1],
  ["pcGreylist", GREYLIST, 1],
  ["pcInspect", INSPECT, REDIS_KINDS.length],
] as const;

const num = (reply: Reply): number => Number(reply);

/** How long a client ioredis has given up on waits before it connects again. */
const RESTART_AFTER_END_MS = 1000;

/** The ioredis client for a target; ioredis itself is loaded here, on first use. */
async function connectClient(target: RedisTarget, timeoutMs: number, connectTimeoutMs: number, keyPrefix: string) {
  const { Cluster, Redis } = await import("ioredis");
  const common = {
    lazyConnect: true,
    enableOfflineQueue: false,
    commandTimeout: timeoutMs,
    connectTimeout: connectTimeoutMs,
    maxRetriesPerRequest: 1,
    keyPrefix,
  };
  const retryStrategy = (attempt: number) => Math.min(50 * 2 ** attempt, 2000);
  if ("url" in target) return new Redis(target.url, { ...common, retryStrategy });
  if ("sentinel" in target) {
    const { sentinels, name, db } = target.sentinel;
    return new Redis({
      ...common,
      retryStrategy,
      sentinels: sentinels.map((text) => {
        const address = parseHostPort(text);
        if (!address) throw new Error(`not a Sentinel host:port: ${text}`);
        return { host: address.host, port: address.port };
      }),
      name,
      db: db ?? 0,
      sentinelCommandTimeout: timeoutMs,
      sentinelRetryStrategy: retryStrategy,
      // The Sentinels announce a failover on a channel; listening to it moves the store to the new
      // primary at once. Otherwise a primary that is replaced but still up (a failover asked for,
      // or one cut off from the Sentinels) keeps taking the store's writes until the Sentinels
      // demote it, some ten seconds later, and those writes are lost.
      failoverDetector: true,
      // A primary demoted while the store still talks to it refuses writes: ask the Sentinels again.
      reconnectOnError: (err: Error) => err.message.startsWith("READONLY"),
    });
  }
  const [first] = target.cluster.map((text) => new URL(text));
  const { enableOfflineQueue, keyPrefix: _, ...redisOptions } = common;
  return new Cluster(
    target.cluster.map((text) => {
      const url = new URL(text);
      return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(url.port || 6379) };
    }),
    {
      lazyConnect: true,
      enableOfflineQueue,
      keyPrefix,
      clusterRetryStrategy: retryStrategy,
      // A command the cluster turns away (a slot moving, a failover) is retried after 50 ms rather
      // than the default 100, so a retry still fits within the operation's deadline.
      retryDelayOnFailover: 50,
      retryDelayOnClusterDown: 50,
      slotsRefreshTimeout: connectTimeoutMs,
      redisOptions: {
        ...redisOptions,
        username: decodeURIComponent(first.username) || undefined,
        password: decodeURIComponent(first.password) || undefined,
        tls: first.protocol === "rediss:" ? {} : undefined,
      },
    },
  );
}

export class RedisStore implements StateStore {
  readonly onStoreError: StoreErrorPolicy;
  readonly #client: Promise<Client>;
  /** The client once ioredis is loaded; until then every operation waits for #client. */
  #redis: Client | null = null;
  readonly #cluster: boolean;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #connectTimeoutMs: number;
  #connecting: Promise<void> | null = null;
  #reachable = true;
  #closed = false;
  #failures = 0;

  constructor(options: RedisStoreOptions) {
    this.onStoreError = options.onStoreError ?? "defer";
    this.#log = options.log;
    this.#cluster = "cluster" in options;
    this.#timeoutMs = options.commandTimeoutMs ?? 250;
    this.#connectTimeoutMs = Math.max(1000, this.#timeoutMs);
    this.#client = connectClient(options, this.#timeoutMs, this.#connectTimeoutMs, options.keyPrefix ?? "portcullis:");
    this.#client.then(
      (redis) => this.#start(redis),
      (err: Error) => this.#down(err),
    );
  }

  #start(redis: Client): void {
    this.#redis = redis;
    // Without a listener ioredis writes every reconnect failure to stderr; one line per outage is enough.
    redis.on("error", (err: Error) => this.#down(err));
    redis.on("ready", () => {
      if (!this.#reachable) this.#log.info("state store reachable again");
      this.#reachable = true;
    });
    // ioredis gives a connection up for good in a few races (its failover detector disconnecting
    // while it reconnects to a primary that died); the store lives as long as the gateway, so it
    // starts over.
    redis.on("end", () => {
      if (this.#closed) return;
      setTimeout(() => {
        if (!this.#closed) redis.connect().catch(() => undefined);
      }, RESTART_AFTER_END_MS).unref();
    });
    for (const [name, lua, numberOfKeys] of SCRIPTS) {
      redis.defineCommand(name, numberOfKeys === undefined ? { lua } : { lua, numberOfKeys });
    }
    // A store closed while ioredis was still loading never connects.
    if (this.#closed) return;
    // Not awaited: a gateway starts while Redis is down and applies onStoreError until it is back.
    redis.connect().catch(() => undefined);
  }

  /** Store operations that failed because the store was unreachable or slow, since start. */
  get failures(): number {
    return this.#failures;
  }

  #down(err: Error): void {
    if (this.#reachable) this.#log.warn({ err: err.message }, "state store unreachable");
    this.#reachable = false;
  }

  /**
   * Waits for a connection attempt under way (the first one after start, typically), so a gateway
   * does not defer its first clients for nothing; between attempts of an outage it fails fast.
   */
  async #attempt(): Promise<void> {
    // The first operations may come before ioredis is loaded; the connection starts right after.
    const redis = this.#redis ?? (await this.#client);
    const status = redis.status;
    if (status !== "wait" && status !== "connecting" && status !== "connect") return;
    this.#connecting ??= once(redis, "ready", { signal: AbortSignal.timeout(this.#connectTimeoutMs) })
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => {
        this.#connecting = null;
      });
    await this.#connecting;
  }

  /**
   * Runs one operation within the store's deadline; connection trouble and replies that mean
   * "not now" become StoreUnavailableError, any other error reply stays a bug.
   */
  async #run<T>(operation: (redis: Client & Scripts) => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await this.#attempt();
      const redis = (await this.#client) as Client & Scripts;
      // ioredis's own timeout covers one command; a cluster may redirect or retry it, so the
      // operation as a whole gets the deadline too.
      const deadline = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${this.#timeoutMs} ms`)), this.#timeoutMs);
      });
      return await Promise.race([operation(redis), deadline]);
    } catch (err) {
      if (err instanceof Error && err.name === "ReplyError" && !UNAVAILABLE_REPLY.test(err.message)) throw err;
      this.#failures++;
      const message = err instanceof Error ? err.message : String(err);
      this.#down(err instanceof Error ? err : new Error(message));
      throw new StoreUnavailableError(`state store unavailable: ${message}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  async get(key: string): Promise<string | null> {
    return this.#run((redis) => redis.get(redisKey("kv", key)));
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    await this.#run((redis) => redis.set(redisKey("kv", key), value, "PX", Math.max(1, Math.ceil(ttlMs))));
  }

  async delete(key: string): Promise<void> {
    await this.#run((redis) => redis.del(redisKey("kv", key)));
  }

  async consume(requests: readonly BucketRequest[]): Promise<BucketResult[]> {
    if (requests.length === 0) return [];
    const replies = await this.#run((redis) =>
      this.#cluster ? consumeAcrossSlots(redis, requests) : consumeScript(redis, requests),
    );
    return replies.map(([allowed, remaining, retry, reset]) => ({
      allowed: num(allowed) === 1,
      remaining: num(remaining),
      retryAfterMs: num(retry) < 0 ? Number.POSITIVE_INFINITY : num(retry),
      resetAfterMs: num(reset),
    }));
  }

  async increment(key: string, by: number, windowMs: number): Promise<{ count: number; resetInMs: number }> {
    const [count, ttl] = await this.#run((redis) => redis.pcIncrement(redisKey("ct", key), by, Math.ceil(windowMs)));
    return { count, resetInMs: ttl };
  }

  async acquireSlot(key: string, holder: string, max: number, leaseMs: number): Promise<SlotResult> {
    const [acquired, held] = await this.#run((redis) => redis.pcAcquireSlot(redisKey("cc", key), holder, max, leaseMs));
    return { acquired: acquired === 1, held };
  }

  async releaseSlot(key: string, holder: string): Promise<number> {
    return this.#run((redis) => redis.pcReleaseSlot(redisKey("cc", key), holder));
  }

  async greylist(key: string, params: GreylistParams): Promise<GreylistResult> {
    const [status, retryIn] = await this.#run((redis) =>
      redis.pcGreylist(redisKey("gl", key), params.delayMs, params.retryWindowMs, params.lifetimeMs),
    );
    return { status: status as GreylistStatus, retryInMs: Number(retryIn) };
  }

  async inspect(key: string): Promise<KeyReport> {
    const r = await this.#run((redis) => redis.pcInspect(...kindKeys(key)));
    const [now, tat, interval, burst, count, countTtl, held, first, passed, greyTtl, value, valueTtl] = r;
    const report: { -readonly [K in keyof KeyReport]: KeyReport[K] } = {};
    if (tat !== null) {
      const params = { intervalMs: num(interval), burst: num(burst) };
      const { tat: _, allowed: __, ...state } = gcra(num(tat), num(now), params, 0);
      report.bucket = { ...params, ...state };
    }
    if (count !== null) report.counter = { count: num(count), resetInMs: num(countTtl) };
    if (num(held) > 0) report.slots = { held: num(held) };
    if (first !== null) {
      report.greylist = { firstSeenAgoMs: num(now) - num(first), passed: passed === "1", expiresInMs: num(greyTtl) };
    }
    if (value !== null) report.value = { value: String(value), expiresInMs: num(valueTtl) };
    return report;
  }

  async reset(key: string): Promise<boolean> {
    return (await this.#run((redis) => redis.del(...kindKeys(key)))) > 0;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const redis = await this.#client.catch(() => null);
    redis?.removeAllListeners("ready");
    redis?.disconnect();
  }
}

/** The Redis keys of one state key, in the order the INSPECT script expects (one hash tag, so one slot). */
function kindKeys(key: string): string[] {
  return REDIS_KINDS.map((kind) => redisKey(kind, key));
}

/** One CONSUME script over some requests, whose keys must share a slot on a cluster. */
function consumeScript(redis: Scripts, requests: readonly BucketRequest[]): Promise<Reply[][]> {
  const keys = requests.map((r) => redisKey("rl", r.key));
  const args = requests.flatMap((r) => [r.intervalMs, r.burst, r.cost, r.commit ? 1 : 0, r.blocking ? 1 : 0]);
  return redis.pcConsume(keys.length, ...keys, ...args);
}

/**
 * CONSUME on a cluster, where the buckets of one batch (one per limit: the client's address, the
 * sender, the recipient…) live in different slots, so no one script can see them all. Each key's
 * requests run as one script; when a blocking request was denied in one of them, what the others
 * committed is taken back. Meanwhile another gateway may see those units taken and be refused
 * where it would have passed, never the other way round: the limit is never exceeded.
 */
async function consumeAcrossSlots(redis: Scripts, requests: readonly BucketRequest[]): Promise<Reply[][]> {
  const byKey = new Map<string, number[]>();
  requests.forEach((request, index) => {
    const positions = byKey.get(request.key);
    if (positions) positions.push(index);
    else byKey.set(request.key, [index]);
  });
  const groups = [...byKey.values()];
  if (groups.length === 1) return consumeScript(redis, requests);
  const answers = await Promise.all(
    groups.map((positions) =>
      consumeScript(
        redis,
        positions.map((i) => requests[i]),
      ),
    ),
  );
  const replies: Reply[][] = [];
  groups.forEach((positions, g) => {
    positions.forEach((index, j) => {
      replies[index] = answers[g][j];
    });
  });
  const deniedBlocking = (index: number) => requests[index].blocking && num(replies[index][0]) === 0;
  if (!requests.some((_, index) => deniedBlocking(index))) return replies;
  // A group with a denied blocking request of its own wrote nothing; the others wrote what they allowed.
  const written = groups
    .filter((positions) => !positions.some(deniedBlocking))
    .flatMap((positions) =>
      positions.filter((index) => requests[index].commit && requests[index].cost > 0 && num(replies[index][0]) === 1),
    );
  await Promise.all(
    written.map((index) => {
      const { key, intervalMs, cost } = requests[index];
      return redis.pcRefund(redisKey("rl", key), intervalMs, cost);
    }),
  );
  return replies;
}
