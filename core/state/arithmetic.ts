/**
 * The arithmetic of limits and greylisting as pure functions of (stored state, now). The memory
 * store calls these; the Redis store's Lua scripts (redis-scripts.ts) are line-for-line ports, and
 * the shared store suite holds both to the same answers.
 */
import type { BucketParams, BucketResult, GreylistParams, GreylistResult } from "./types.js";

/**
 * Slack for floating-point time: theoretical arrival times near the epoch carry about 0.2 µs of
 * rounding, so comparisons allow 1 µs rather than turn a full bucket into "one unit short".
 */
export const EPSILON_MS = 0.001;

export interface GcraStep extends BucketResult {
  /** The theoretical arrival time to store (unchanged when denied). */
  readonly tat: number;
}

function units(ms: number, intervalMs: number): number {
  return Math.max(0, Math.floor((ms + EPSILON_MS) / intervalMs));
}

/**
 * GCRA check-and-consume. The bucket holds `burst` units and gains one per `intervalMs`; it is
 * stored as its theoretical arrival time (TAT), the moment it is full again. Taking `cost` units
 * moves the TAT `cost` intervals ahead, which is allowed while it stays within `burst` intervals of now.
 */
export function gcra(storedTat: number | null, now: number, params: BucketParams, cost: number): GcraStep {
  const { intervalMs, burst } = params;
  const depth = burst * intervalMs;
  // A TAT further ahead than a whole empty bucket can only come from a clock that went backwards:
  // it counts as empty, never emptier, so a clock step cannot lock a key out for longer than a refill.
  const tat = Math.min(Math.max(storedTat ?? now, now), now + depth);
  const next = tat + cost * intervalMs;
  if (next - now > depth + EPSILON_MS) {
    return {
      allowed: false,
      tat,
      remaining: units(now + depth - tat, intervalMs),
      retryAfterMs: cost > burst ? Number.POSITIVE_INFINITY : next - depth - now,
      resetAfterMs: tat - now,
    };
  }
  return {
    allowed: true,
    tat: next,
    remaining: units(now + depth - next, intervalMs),
    retryAfterMs: 0,
    resetAfterMs: next - now,
  };
}

export interface CounterRecord {
  readonly count: number;
  readonly resetAt: number;
}

export function countStep(record: CounterRecord | null, now: number, by: number, windowMs: number): CounterRecord {
  if (!record || record.resetAt <= now) return { count: by, resetAt: now + windowMs };
  // A window reaching further than windowMs ahead means the clock went backwards: cap it.
  return { count: record.count + by, resetAt: Math.min(record.resetAt, now + windowMs) };
}

export interface GreylistRecord {
  readonly firstSeen: number;
  readonly passed: boolean;
}

export interface GreylistStep {
  readonly result: GreylistResult;
  /** The record to store for ttlMs, or null to leave the stored one as it is. */
  readonly write: { readonly record: GreylistRecord; readonly ttlMs: number } | null;
}

/** One attempt of a triplet against its record. */
export function greylistStep(record: GreylistRecord | null, now: number, params: GreylistParams): GreylistStep {
  if (record?.passed) {
    return { result: { status: "known", retryInMs: 0 }, write: { record, ttlMs: params.lifetimeMs } };
  }
  if (record) {
    // A first sighting "in the future" (clock went backwards) waits the plain delay, no longer.
    const elapsed = Math.max(0, now - record.firstSeen);
    if (elapsed < params.delayMs)
      return { result: { status: "early", retryInMs: params.delayMs - elapsed }, write: null };
    if (elapsed <= params.retryWindowMs) {
      return {
        result: { status: "passed", retryInMs: 0 },
        write: { record: { firstSeen: record.firstSeen, passed: true }, ttlMs: params.lifetimeMs },
      };
    }
  }
  return {
    result: { status: "new", retryInMs: params.delayMs },
    write: { record: { firstSeen: now, passed: false }, ttlMs: params.retryWindowMs },
  };
}
