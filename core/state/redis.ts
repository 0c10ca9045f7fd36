/**
 * The shared store: state in Redis, so every gateway of a cluster enforces the same limits. Each
 * read-modify-write is one Lua script timed by the Redis server's clock.
 *
 * An outage must never stall SMTP: the offline queue is off (a command fails at once while
 * disconnected), commands time out quickly, and ioredis keeps reconnecting in the background, so
 * the store recovers by itself when Redis is back. Failures surface as StoreUnavailableError.
 */
import { once } from "node:events";
import { Redis } from "ioredis";
import type { Logger } from "pino";
import { gcra } from "./arithmetic.js";
import { ACQUIRE_SLOT, CONSUME, GREYLIST, INCREMENT, INSPECT, RELEASE_SLOT } from "./redis-scripts.js";
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

interface Scripts {
  pcConsume(numberOfKeys: number, ...keysAndArgs: Array<string | number>): Promise<Reply[][]>;
  pcIncrement(key: string, by: number, windowMs: number): Promise<[number, number]>;
  pcAcquireSlot(key: string, holder: string, max: number, leaseMs: number): Promise<[number, number]>;
  pcReleaseSlot(key: string, holder: string): Promise<number>;
  pcGreylist(key: string, delayMs: number, windowMs: number, lifetimeMs: number): Promise<[string, string]>;
  pcInspect(...keys: string[]): Promise<Reply[]>;
}

export interface RedisStoreOptions {
  readonly url: string;
  readonly log: Logger;
  readonly onStoreError?: StoreErrorPolicy;
  /** Per-command deadline; a hook waits at most this long for the store. */
  readonly commandTimeoutMs?: number;
  /** Prepended to every key, so several deployments can share one Redis. */
  readonly keyPrefix?: string;
}

const num = (reply: Reply): number => Number(reply);

export class RedisStore implements StateStore {
  readonly onStoreError: StoreErrorPolicy;
  readonly #redis: Redis;
  readonly #scripts: Scripts;
  readonly #log: Logger;
  readonly #connectTimeoutMs: number;
  #connecting: Promise<void> | null = null;
  #reachable = true;
  #failures = 0;

  constructor(options: RedisStoreOptions) {
    this.onStoreError = options.onStoreError ?? "defer";
    this.#log = options.log;
    const timeout = options.commandTimeoutMs ?? 250;
    this.#connectTimeoutMs = Math.max(1000, timeout);
    this.#redis = new Redis(options.url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      commandTimeout: timeout,
      connectTimeout: this.#connectTimeoutMs,
      maxRetriesPerRequest: 1,
      keyPrefix: options.keyPrefix ?? "portcullis:",
      retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2000),
    });
    // Without a listener ioredis writes every reconnect failure to stderr; one line per outage is enough.
    this.#redis.on("error", (err: Error) => this.#down(err));
    this.#redis.on("ready", () => {
      if (!this.#reachable) this.#log.info("state store reachable again");
      this.#reachable = true;
    });
    for (const [name, lua, numberOfKeys] of [
      ["pcConsume", CONSUME, undefined],
      ["pcIncrement", INCREMENT, 1],
      ["pcAcquireSlot", ACQUIRE_SLOT, 1],
      ["pcReleaseSlot", RELEASE_SLOT, 1],
      ["pcGreylist", GREYLIST, 1],
      ["pcInspect", INSPECT, 5],
    ] as const) {
      this.#redis.defineCommand(name, numberOfKeys === undefined ? { lua } : { lua, numberOfKeys });
    }
    this.#scripts = this.#redis as unknown as Scripts;
    // Not awaited: a gateway starts while Redis is down and applies onStoreError until it is back.
    this.#redis.connect().catch(() => undefined);
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
  #attempt(): Promise<void> | undefined {
    const status = this.#redis.status;
    if (status !== "wait" && status !== "connecting" && status !== "connect") return undefined;
    this.#connecting ??= once(this.#redis, "ready", { signal: AbortSignal.timeout(this.#connectTimeoutMs) })
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => {
        this.#connecting = null;
      });
    return this.#connecting;
  }

  /** Runs one command; connection trouble becomes StoreUnavailableError, a script error stays a bug. */
  async #run<T>(command: () => Promise<T>): Promise<T> {
    try {
      await this.#attempt();
      return await command();
    } catch (err) {
      if (err instanceof Error && err.name === "ReplyError") throw err;
      this.#failures++;
      const message = err instanceof Error ? err.message : String(err);
      this.#down(err instanceof Error ? err : new Error(message));
      throw new StoreUnavailableError(`state store unavailable: ${message}`, { cause: err });
    }
  }

  async get(key: string): Promise<string | null> {
    return this.#run(() => this.#redis.get(`kv:${key}`));
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    await this.#run(() => this.#redis.set(`kv:${key}`, value, "PX", Math.max(1, Math.ceil(ttlMs))));
  }

  async delete(key: string): Promise<void> {
    await this.#run(() => this.#redis.del(`kv:${key}`));
  }

  async consume(requests: readonly BucketRequest[]): Promise<BucketResult[]> {
    if (requests.length === 0) return [];
    const keys = requests.map((r) => `rl:${r.key}`);
    const args = requests.flatMap((r) => [r.intervalMs, r.burst, r.cost, r.commit ? 1 : 0, r.blocking ? 1 : 0]);
    const replies = await this.#run(() => this.#scripts.pcConsume(keys.length, ...keys, ...args));
    return replies.map(([allowed, remaining, retry, reset]) => ({
      allowed: num(allowed) === 1,
      remaining: num(remaining),
      retryAfterMs: num(retry) < 0 ? Number.POSITIVE_INFINITY : num(retry),
      resetAfterMs: num(reset),
    }));
  }

  async increment(key: string, by: number, windowMs: number): Promise<{ count: number; resetInMs: number }> {
    const [count, ttl] = await this.#run(() => this.#scripts.pcIncrement(`ct:${key}`, by, Math.ceil(windowMs)));
    return { count, resetInMs: ttl };
  }

  async acquireSlot(key: string, holder: string, max: number, leaseMs: number): Promise<SlotResult> {
    const [acquired, held] = await this.#run(() => this.#scripts.pcAcquireSlot(`cc:${key}`, holder, max, leaseMs));
    return { acquired: acquired === 1, held };
  }

  async releaseSlot(key: string, holder: string): Promise<number> {
    return this.#run(() => this.#scripts.pcReleaseSlot(`cc:${key}`, holder));
  }

  async greylist(key: string, params: GreylistParams): Promise<GreylistResult> {
    const [status, retryIn] = await this.#run(() =>
      this.#scripts.pcGreylist(`gl:${key}`, params.delayMs, params.retryWindowMs, params.lifetimeMs),
    );
    return { status: status as GreylistStatus, retryInMs: Number(retryIn) };
  }

  async inspect(key: string): Promise<KeyReport> {
    const r = await this.#run(() => this.#scripts.pcInspect(...kindKeys(key)));
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
    return (await this.#run(() => this.#redis.del(...kindKeys(key)))) > 0;
  }

  async close(): Promise<void> {
    this.#redis.removeAllListeners("ready");
    this.#redis.disconnect();
  }
}

/** The Redis keys of one state key, in the order the INSPECT script expects. */
function kindKeys(key: string): string[] {
  return ["rl", "ct", "cc", "gl", "kv"].map((kind) => `${kind}:${key}`);
}
