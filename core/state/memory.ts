/**
 * The embedded store: one gateway's state in a bounded LRU map. Expiry follows the injected clock
 * (so tests can move time), and the LRU bound keeps a flood of distinct keys from growing memory.
 */
import { LRUCache } from "lru-cache";
import { type Clock, systemClock } from "../contract/api.js";
import { type CounterRecord, countStep, type GreylistRecord, gcra, greylistStep } from "./arithmetic.js";
import type {
  BucketParams,
  BucketRequest,
  BucketResult,
  GreylistParams,
  GreylistResult,
  KeyReport,
  SlotResult,
  StateStore,
  StoreErrorPolicy,
} from "./types.js";

interface Bucket extends BucketParams {
  readonly tat: number;
}

/** What each kind of record holds; the kind is also a key prefix, so kinds never collide. */
interface Kinds {
  kv: string;
  rl: Bucket;
  ct: CounterRecord;
  cc: Map<string, number>;
  gl: GreylistRecord;
}

type Kind = keyof Kinds;

interface Stored {
  readonly value: unknown;
  readonly expiresAt: number;
}

const KINDS: readonly Kind[] = ["kv", "rl", "ct", "cc", "gl"];

export interface MemoryStoreOptions {
  readonly maxEntries?: number;
  readonly clock?: Clock;
  readonly onStoreError?: StoreErrorPolicy;
}

export class MemoryStore implements StateStore {
  readonly onStoreError: StoreErrorPolicy;
  readonly #entries: LRUCache<string, Stored>;
  readonly #clock: Clock;

  constructor(options: MemoryStoreOptions = {}) {
    // The bound is a size of one per entry rather than lru-cache's `max`, which allocates the
    // arrays for every slot up front (megabytes for a gateway that may never hold a key); sized
    // this way they grow with the entries actually stored.
    this.#entries = new LRUCache({ maxSize: options.maxEntries ?? 100_000, sizeCalculation: () => 1 });
    this.#clock = options.clock ?? systemClock;
    this.onStoreError = options.onStoreError ?? "defer";
  }

  #read<K extends Kind>(kind: K, key: string, now: number): { value: Kinds[K]; expiresAt: number } | null {
    const id = `${kind}:${key}`;
    const stored = this.#entries.get(id);
    // An expired record reads as absent and is left for the next write (or the LRU bound) to
    // replace: lru-cache's delete() of the last entry clears arrays sized to `max`, which made one
    // busy bucket cost O(maxEntries) per message.
    if (!stored || stored.expiresAt <= now) return null;
    return stored as { value: Kinds[K]; expiresAt: number };
  }

  #write<K extends Kind>(kind: K, key: string, value: Kinds[K], expiresAt: number): void {
    this.#entries.set(`${kind}:${key}`, { value, expiresAt });
  }

  async get(key: string): Promise<string | null> {
    return this.#read("kv", key, this.#clock.now())?.value ?? null;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#write("kv", key, value, this.#clock.now() + ttlMs);
  }

  async delete(key: string): Promise<void> {
    this.#entries.delete(`kv:${key}`);
  }

  async consume(requests: readonly BucketRequest[]): Promise<BucketResult[]> {
    const now = this.#clock.now();
    // Within one batch a key sees the writes of the requests before it, as in the Lua script.
    const pending = new Map<string, Bucket>();
    let commit = true;
    const results = requests.map((request) => {
      const stored = pending.get(request.key) ?? this.#read("rl", request.key, now)?.value ?? null;
      const step = gcra(stored?.tat ?? null, now, request, request.cost);
      if (!step.allowed && request.blocking) commit = false;
      if (step.allowed && request.commit && request.cost > 0) {
        pending.set(request.key, { tat: step.tat, intervalMs: request.intervalMs, burst: request.burst });
      }
      const { tat: _, ...result } = step;
      return result;
    });
    if (commit) for (const [key, bucket] of pending) this.#write("rl", key, bucket, bucket.tat);
    return results;
  }

  async increment(key: string, by: number, windowMs: number): Promise<{ count: number; resetInMs: number }> {
    const now = this.#clock.now();
    const next = countStep(this.#read("ct", key, now)?.value ?? null, now, by, windowMs);
    this.#write("ct", key, next, next.resetAt);
    return { count: next.count, resetInMs: next.resetAt - now };
  }

  #liveHolders(key: string, now: number): Map<string, number> {
    const holders = this.#read("cc", key, now)?.value ?? new Map<string, number>();
    for (const [holder, expiresAt] of holders) if (expiresAt <= now) holders.delete(holder);
    return holders;
  }

  async acquireSlot(key: string, holder: string, max: number, leaseMs: number): Promise<SlotResult> {
    const now = this.#clock.now();
    const holders = this.#liveHolders(key, now);
    if (!holders.has(holder) && holders.size >= max) return { acquired: false, held: holders.size };
    holders.set(holder, now + leaseMs);
    // The record lives as long as its longest lease: a shorter lease taken later must not cut the others short.
    this.#write("cc", key, holders, Math.max(...holders.values()));
    return { acquired: true, held: holders.size };
  }

  async releaseSlot(key: string, holder: string): Promise<number> {
    const now = this.#clock.now();
    const holders = this.#liveHolders(key, now);
    holders.delete(holder);
    // Marked expired rather than deleted: see #read on lru-cache's delete of the last entry.
    if (holders.size === 0) this.#write("cc", key, holders, now);
    return holders.size;
  }

  async greylist(key: string, params: GreylistParams): Promise<GreylistResult> {
    const now = this.#clock.now();
    const step = greylistStep(this.#read("gl", key, now)?.value ?? null, now, params);
    if (step.write) this.#write("gl", key, step.write.record, now + step.write.ttlMs);
    return step.result;
  }

  async inspect(key: string): Promise<KeyReport> {
    const now = this.#clock.now();
    const report: { -readonly [K in keyof KeyReport]: KeyReport[K] } = {};
    const bucket = this.#read("rl", key, now)?.value;
    if (bucket) {
      const { tat: _, allowed: __, ...state } = gcra(bucket.tat, now, bucket, 0);
      report.bucket = { intervalMs: bucket.intervalMs, burst: bucket.burst, ...state };
    }
    const counter = this.#read("ct", key, now)?.value;
    if (counter) report.counter = { count: counter.count, resetInMs: counter.resetAt - now };
    const holders = this.#liveHolders(key, now);
    if (holders.size > 0) report.slots = { held: holders.size };
    const grey = this.#read("gl", key, now);
    if (grey) {
      report.greylist = {
        firstSeenAgoMs: now - grey.value.firstSeen,
        passed: grey.value.passed,
        expiresInMs: grey.expiresAt - now,
      };
    }
    const value = this.#read("kv", key, now);
    if (value) report.value = { value: value.value, expiresInMs: value.expiresAt - now };
    return report;
  }

  async reset(key: string): Promise<boolean> {
    let found = false;
    for (const kind of KINDS) found = this.#entries.delete(`${kind}:${key}`) || found;
    return found;
  }

  async close(): Promise<void> {
    this.#entries.clear();
  }
}
