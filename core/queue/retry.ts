/**
 * When to try a deferred message again. Pure: the worker passes the clock's time and a random
 * source, tests pass fixed ones.
 */

export interface RetryPolicy {
  /** Waits between attempts in ms; the last one repeats until `maxAgeMs`. */
  readonly schedule: readonly number[];
  /** Past this age (from arrival) a message that is still deferred is bounced. */
  readonly maxAgeMs: number;
  /**
   * Each wait is stretched or shrunk by up to this fraction, so messages deferred together (a next
   * hop that was down) do not all come back at the same instant. Default 0.1.
   */
  readonly jitter?: number;
}

/**
 * The time of the next attempt after `attempts` attempts (≥ 1), the last of which ended at `now`;
 * "expired" once the message is `maxAgeMs` old. The last attempt is made at the deadline itself
 * rather than skipped, so a message is never bounced earlier than its policy says.
 *
 * @example
 * nextAttemptAt(1, 0, 1_000, { schedule: [60_000, 300_000], maxAgeMs: 86_400_000, jitter: 0 }) // 61_000
 */
export function nextAttemptAt(
  attempts: number,
  arrivedAt: number,
  now: number,
  policy: RetryPolicy,
  random: () => number = Math.random,
): number | "expired" {
  const deadline = arrivedAt + policy.maxAgeMs;
  if (now >= deadline) return "expired";
  const wait = policy.schedule[Math.min(Math.max(attempts, 1), policy.schedule.length) - 1];
  const jitter = policy.jitter ?? 0.1;
  const jittered = wait * (1 + jitter * (2 * random() - 1));
  return Math.min(Math.round(now + jittered), deadline);
}
