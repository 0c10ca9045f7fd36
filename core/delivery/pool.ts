/**
 * Next-hop connections kept open between messages. Measured (notes §12): a few persistent
 * SMTPConnections give 1.8× the throughput of a connection per message (RSET only after a refusal
 * left an envelope open: see core/delivery/smtp.ts).
 *
 * A pool holds, per key (host, port, protocol and TLS settings — everything that makes two
 * connections interchangeable), at most `limit` connections, idle or busy. `acquire` hands out an
 * idle one or a free slot to open a new one, and waits when every slot is busy. Idle connections
 * close after `idleMs`, when the server drops them, and on `close()` (gateway stop or reload).
 */
import type { Socket } from "node:net";
import type SMTPConnection from "nodemailer/lib/smtp-connection";

/** What a transaction on a link hears from nodemailer besides its callbacks. */
export type LinkEvent =
  | { readonly kind: "error"; readonly error: Error & { code?: string } }
  | { readonly kind: "end" };

/**
 * One SMTPConnection with its 'error' and 'end' events routed to whoever uses it now. nodemailer
 * reports most failures only as events, and an event nobody listens to would crash the process; an
 * idle link that hears one is simply dead.
 */
export class Link {
  dead = false;
  /** Set while a caller works on the link. */
  handler: ((event: LinkEvent) => void) | null = null;
  /** Transactions sent on this link so far. */
  uses = 0;

  constructor(readonly conn: SMTPConnection) {
    coalesceMessageWrites(conn);
    conn.on("error", (error: Error & { code?: string }) => {
      this.dead = true;
      this.handler?.({ kind: "error", error });
    });
    conn.on("end", () => {
      this.dead = true;
      this.handler?.({ kind: "end" });
    });
  }

  close(): void {
    this.dead = true;
    this.handler = null;
    this.conn.close();
  }
}

/** The parts of nodemailer's SMTPConnection (pinned version) that its declarations leave out. */
interface SendStreamInternals {
  _socket: Socket | false | null;
  _createSendStream(callback: unknown): unknown;
}

/**
 * nodemailer writes a message's body (through its dot-stuffing stream) and then the end-of-data
 * line in one turn of the event loop, each as a loopback send of its own; corked from the moment
 * the data stream is made, they leave in one write (one system call less per message). A body
 * that streams in over later turns (a spool file) is written as it comes, as before.
 */
function coalesceMessageWrites(conn: SMTPConnection): void {
  const internals = conn as unknown as SendStreamInternals;
  const createSendStream = internals._createSendStream;
  internals._createSendStream = function (this: SendStreamInternals, callback: unknown) {
    const socket = this._socket;
    if (socket && !socket.destroyed && socket.writableCorked === 0) {
      socket.cork();
      process.nextTick(() => socket.uncork());
    }
    return createSendStream.call(this, callback);
  };
}

interface Slots {
  /** Slots taken: busy links plus links being opened. */
  busy: number;
  idle: Array<{ link: Link; timer: NodeJS.Timeout }>;
  waiters: Array<() => void>;
}

/** A slot in the pool: `link` is an idle connection to reuse, or null to open a new one. */
export interface Lease {
  readonly key: string;
  readonly link: Link | null;
}

/** Every connection of a pool key stayed busy until the caller's deadline. */
export class PoolWaitTimeout extends Error {
  constructor(readonly key: string) {
    super(`no connection became free in time for ${key}`);
  }
}

export class ConnectionPool {
  readonly #slots = new Map<string, Slots>();
  #closed = false;

  constructor(readonly options: { readonly defaultLimit: number; readonly idleMs: number }) {}

  /**
   * A lease on `key`: an idle connection or a free slot, else it waits for one, until `wait.until`
   * (a Date.now() time; the wait then ends with PoolWaitTimeout) or until `wait.signal` aborts (with
   * its reason). Plain timer and listener: a composite AbortSignal per delivery showed in profiles.
   */
  async acquire(
    key: string,
    limit = this.options.defaultLimit,
    wait: { readonly until?: number; readonly signal?: AbortSignal } = {},
  ): Promise<Lease> {
    const slots = this.#slotsFor(key);
    const { signal } = wait;
    for (;;) {
      signal?.throwIfAborted();
      while (slots.idle.length > 0) {
        const { link, timer } = slots.idle.pop()!;
        clearTimeout(timer);
        if (link.dead) continue;
        slots.busy++;
        return { key, link };
      }
      if (slots.busy < limit || this.#closed) {
        slots.busy++;
        return { key, link: null };
      }
      await new Promise<void>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        const settle = () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
        };
        // A release takes the waiter off the list itself; a timeout or an abort must do it here.
        const wake = () => {
          settle();
          resolve();
        };
        const stop = (error: unknown) => {
          settle();
          slots.waiters = slots.waiters.filter((w) => w !== wake);
          reject(error);
        };
        const onAbort = () => stop(signal!.reason);
        slots.waiters.push(wake);
        signal?.addEventListener("abort", onAbort, { once: true });
        if (wait.until !== undefined) {
          timer = setTimeout(() => stop(new PoolWaitTimeout(key)), Math.max(1, wait.until - Date.now()));
        }
      });
    }
  }

  /** Gives a slot back; a live `link` stays open for the next message unless the pool is closed. */
  release(lease: Lease, link: Link | null): void {
    const slots = this.#slotsFor(lease.key);
    slots.busy--;
    if (link && !link.dead && !this.#closed) {
      link.handler = null;
      const timer = setTimeout(() => {
        slots.idle = slots.idle.filter((entry) => entry.link !== link);
        link.close();
        this.#forget(lease.key);
      }, this.options.idleMs);
      timer.unref();
      slots.idle.push({ link, timer });
    } else {
      link?.close();
    }
    slots.waiters.shift()?.();
    this.#forget(lease.key);
  }

  /** Idle connections now: for tests and metrics. */
  idleCount(): number {
    let n = 0;
    for (const slots of this.#slots.values()) n += slots.idle.length;
    return n;
  }

  /** Closes idle connections; with `final`, busy ones close when released and nothing is kept again. */
  close(final = true): void {
    if (final) this.#closed = true;
    for (const [key, slots] of this.#slots) {
      for (const { link, timer } of slots.idle) {
        clearTimeout(timer);
        link.close();
      }
      slots.idle = [];
      this.#forget(key);
    }
  }

  #slotsFor(key: string): Slots {
    let slots = this.#slots.get(key);
    if (!slots) {
      slots = { busy: 0, idle: [], waiters: [] };
      this.#slots.set(key, slots);
    }
    return slots;
  }

  #forget(key: string): void {
    const slots = this.#slots.get(key);
    if (slots && slots.busy === 0 && slots.idle.length === 0 && slots.waiters.length === 0) this.#slots.delete(key);
  }
}
