/**
 * The share guard: which part of the names a zone answered lately it listed. A zone that suddenly
 * lists (nearly) everything has been taken down or turned hostile (lists that "list the world" on
 * shutdown have happened), and obeying it would refuse all mail. Time is passed in, so the window
 * logic is pure and tested by tables.
 */

const BUCKETS = 10;

interface Bucket {
  readonly start: number;
  /** Name → listed; a name looked up again within one bucket counts once, so a burst from one listed client cannot trip the guard alone. */
  readonly names: Map<string, boolean>;
  listed: number;
}

export class ListingShare {
  readonly #bucketMs: number;
  #buckets: Bucket[] = [];

  constructor(
    windowMs: number,
    readonly maxShare: number,
    readonly minQueries: number,
  ) {
    this.#bucketMs = Math.max(1, Math.ceil(windowMs / BUCKETS));
  }

  record(name: string, listed: boolean, now: number): void {
    this.#prune(now);
    let bucket = this.#buckets.at(-1);
    if (!bucket || now >= bucket.start + this.#bucketMs) {
      bucket = { start: now - (now % this.#bucketMs), names: new Map(), listed: 0 };
      this.#buckets.push(bucket);
    }
    bucket.listed += Number(listed) - Number(bucket.names.get(name) ?? false);
    bucket.names.set(name, listed);
  }

  /** Names and listings counted within the window ending at `now`. */
  counts(now: number): { queries: number; listed: number } {
    this.#prune(now);
    let queries = 0;
    let listed = 0;
    for (const bucket of this.#buckets) {
      queries += bucket.names.size;
      listed += bucket.listed;
    }
    return { queries, listed };
  }

  exceeded(now: number): boolean {
    const { queries, listed } = this.counts(now);
    return queries >= this.minQueries && listed / queries > this.maxShare;
  }

  #prune(now: number): void {
    const oldest = now - this.#bucketMs * BUCKETS;
    while (this.#buckets.length > 0 && this.#buckets[0].start + this.#bucketMs <= oldest) this.#buckets.shift();
  }
}
