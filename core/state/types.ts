/**
 * The contract of a state store. Every operation that reads and writes is one atomic step on the
 * store (one Lua script in Redis), so gateways sharing a store share limits exactly; time for
 * expiry and limits is the store's own clock (the Redis server's `TIME`), never a gateway's.
 */

/** One bucket of a GCRA limiter: `burst` units at once, refilled at one unit per `intervalMs`. */
export interface BucketParams {
  readonly intervalMs: number;
  readonly burst: number;
}

export interface BucketRequest extends BucketParams {
  readonly key: string;
  /** Units to take; 0 only reports the bucket. */
  readonly cost: number;
  /**
   * Whether this request may write. A check ahead of the real consumption (a limit that counts
   * only accepted mail is checked at RCPT and consumed at the end) passes false.
   */
  readonly commit: boolean;
  /** A denied blocking request commits nothing of the whole batch (the transaction is refused). */
  readonly blocking: boolean;
}

export interface BucketResult {
  readonly allowed: boolean;
  /** Units that could still be taken at once after this request. */
  readonly remaining: number;
  /** When a denied request could succeed; Infinity when its cost exceeds the burst. 0 when allowed. */
  readonly retryAfterMs: number;
  /** Until the bucket is full again. */
  readonly resetAfterMs: number;
}

export interface SlotResult {
  readonly acquired: boolean;
  /** Live holders of the key after the call. */
  readonly held: number;
}

export interface GreylistParams {
  /** A retry earlier than this after the first attempt is deferred again. */
  readonly delayMs: number;
  /** A retry later than this after the first attempt starts over. */
  readonly retryWindowMs: number;
  /** How long a passed triplet keeps passing after it was last seen. */
  readonly lifetimeMs: number;
}

/** `new`: first seen now; `early`: retried before the delay; `passed`: this retry passes; `known`: passed before. */
export type GreylistStatus = "new" | "early" | "passed" | "known";

export interface GreylistResult {
  readonly status: GreylistStatus;
  /** Until a retry would pass (0 for passed and known). */
  readonly retryInMs: number;
}

/** What `portcullis limits show` prints: everything stored under one key, by kind. */
export interface KeyReport {
  readonly bucket?: { readonly intervalMs: number; readonly burst: number } & Omit<BucketResult, "allowed">;
  readonly counter?: { readonly count: number; readonly resetInMs: number };
  readonly slots?: { readonly held: number };
  readonly greylist?: { readonly firstSeenAgoMs: number; readonly passed: boolean; readonly expiresInMs: number };
  readonly value?: { readonly value: string; readonly expiresInMs: number };
}

export type StoreErrorPolicy = "defer" | "allow";

export interface StateStore {
  /** What hooks do when this store is unreachable (the policy's `state.onStoreError`). */
  readonly onStoreError: StoreErrorPolicy;
  /** The value stored under key, or null when absent or expired. */
  get(key: string): Promise<string | null>;
  /** Stores value under key for ttlMs milliseconds. */
  set(key: string, value: string, ttlMs: number): Promise<void>;
  delete(key: string): Promise<void>;
  /**
   * GCRA check-and-consume over several buckets at once. Results are in request order; a key that
   * appears twice sees the first request's effect. Nothing is written unless every blocking
   * request is allowed.
   */
  consume(requests: readonly BucketRequest[]): Promise<BucketResult[]>;
  /** Adds `by` to a fixed-window counter that starts with the first increment and lasts windowMs. */
  increment(key: string, by: number, windowMs: number): Promise<{ count: number; resetInMs: number }>;
  /**
   * Takes one of `max` slots of key for holder, leased for leaseMs (a crashed gateway's slots come
   * back by themselves). A holder that already has the slot renews its lease.
   */
  acquireSlot(key: string, holder: string, max: number, leaseMs: number): Promise<SlotResult>;
  /** Gives holder's slot back; returns the live holders left. */
  releaseSlot(key: string, holder: string): Promise<number>;
  /** Records an attempt of a greylisting triplet and says whether it passes. */
  greylist(key: string, params: GreylistParams): Promise<GreylistResult>;
  inspect(key: string): Promise<KeyReport>;
  /** Removes everything stored under key; true when there was something. */
  reset(key: string): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * The store could not answer in time (Redis down, unreachable or slow). Hooks turn this into the
 * policy's `onStoreError`; any other error is a bug and goes to the hook's `onError`.
 */
export class StoreUnavailableError extends Error {
  readonly code = "PORTCULLIS_ERR_STORE_UNAVAILABLE";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StoreUnavailableError";
  }
}
