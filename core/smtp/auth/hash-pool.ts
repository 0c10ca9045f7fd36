/**
 * A bounded place to run password hashes. scrypt already runs off the event loop (libuv's thread
 * pool), but that pool is small (4 threads by default) and shared with file system calls and
 * dns.lookup: a flood of AUTH attempts filling it stalls spool writes for every other client, and
 * each running hash holds 32 MiB. So at most `concurrency` hashes run, at most `queueLimit` wait,
 * and an attempt beyond that is refused at once rather than held in a queue that grows.
 */
export class HashPool {
  #running = 0;
  readonly #waiting: Array<() => void> = [];

  constructor(
    readonly concurrency: number,
    readonly queueLimit: number,
  ) {}

  /** Hashes running and waiting now. */
  get load(): { readonly running: number; readonly waiting: number } {
    return { running: this.#running, waiting: this.#waiting.length };
  }

  /**
   * Runs `task` when a place is free; null, without running it, when every running and waiting
   * place is taken. The place is reserved before this returns.
   */
  run<T>(task: () => Promise<T>): Promise<T> | null {
    if (this.#running < this.concurrency) {
      this.#running++;
      return this.#runHeld(task);
    }
    if (this.#waiting.length >= this.queueLimit) return null;
    const turn = new Promise<void>((resolve) => this.#waiting.push(resolve));
    return turn.then(() => this.#runHeld(task));
  }

  async #runHeld<T>(task: () => Promise<T>): Promise<T> {
    try {
      return await task();
    } finally {
      // The running place passes straight to the next waiter, so a newcomer cannot jump the queue.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }
}
