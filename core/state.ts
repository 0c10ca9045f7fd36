/**
 * Shared state for limits, greylisting and pass caches. The in-memory store is the embedded
 * default; a Redis store implements the same interface for several gateways (issue 5).
 */
import { LRUCache } from "lru-cache";

export interface StateStore {
  /** The value stored under key, or null when absent or expired. */
  get(key: string): Promise<string | null>;
  /** Stores value under key for ttlMs milliseconds. */
  set(key: string, value: string, ttlMs: number): Promise<void>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

export class MemoryStore implements StateStore {
  readonly #entries: LRUCache<string, string>;

  constructor(maxEntries = 100_000) {
    this.#entries = new LRUCache({ max: maxEntries, ttlAutopurge: false });
  }

  async get(key: string): Promise<string | null> {
    return this.#entries.get(key) ?? null;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    // lru-cache treats ttl 0 as "never expires"; a state entry always expires.
    this.#entries.set(key, value, { ttl: Math.max(1, ttlMs) });
  }

  async delete(key: string): Promise<void> {
    this.#entries.delete(key);
  }

  async close(): Promise<void> {
    this.#entries.clear();
  }
}
