/**
 * Talking to a content-scanning daemon (spamd, clamd) over TCP or a unix socket, one connection per
 * message: the request is written with backpressure, so a large message streams from the spool and
 * is never held whole; the reply is read to the daemon's end of it; and everything happens under
 * the hook's deadline, since an aborted signal destroys the socket and the exchange rejects.
 */
import { connect, type Socket } from "node:net";
import { isAbsolute } from "node:path";
import { type Message, z } from "../../core/index.js";

/** Where a daemon listens: a TCP host and port, or the path of a unix socket. */
export type DaemonAddress =
  | { readonly host: string; readonly port: number; readonly path?: undefined }
  | { readonly path: string; readonly host?: undefined; readonly port?: undefined };

const HOST_PORT = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/;

/** The option schema of a daemon address: `"127.0.0.1:3310"`, `"[::1]:783"`, or `"/run/clamav/clamd.ctl"`. */
export const DaemonAddressOption = z.string().transform((text, ctx): DaemonAddress => {
  if (isAbsolute(text)) return { path: text };
  const match = HOST_PORT.exec(text);
  const port = match ? Number(match[3]) : 0;
  if (match && port > 0 && port < 65536) return { host: match[1] ?? match[2], port };
  ctx.addIssue({
    code: "custom",
    message: `"${text}" is not a daemon address: write HOST:PORT ("127.0.0.1:3310", "[::1]:783") or the absolute path of a unix socket`,
  });
  return z.NEVER;
});

/** How an address reads in log lines and errors. */
export function describeAddress(address: DaemonAddress): string {
  if (address.path !== undefined) return address.path;
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** What a request writer is given: a write that waits while the socket's buffer is full. */
export interface DaemonRequest {
  write(...parts: Buffer[]): Promise<void>;
}

export interface Daemon {
  /** The daemon's name for messages: "spamd", "clamd". */
  readonly name: string;
  readonly address: DaemonAddress;
  /** The longest reply taken; a daemon that says more is treated as broken. */
  readonly maxReplyBytes: number;
}

/** A failure to reach or understand a scanning daemon; the message names the daemon and its address. */
export class DaemonError extends Error {}

/** The daemon closed the connection while the request was being written, and no reply was read. */
export class DaemonClosedEarly extends DaemonError {}

/** The daemon answered before the request ended: the rest is not written, the answer is read. */
class AnsweredEarly extends Error {}

/**
 * Connects, runs `send` to write the request, and returns the daemon's reply as `parse` reads it
 * (an Error from `parse` rejects, naming the daemon). The reply is everything the daemon sent until
 * it closed the connection: spamd and clamd answer one request per connection. The request is not
 * ended by a half-close, as each protocol says where it ends, so the daemon sees the connection end
 * when the deadline destroys it. When the daemon closes while the request is still being written
 * (clamd does so past its StreamMaxLength), what it said by then is its reply; with nothing said,
 * the rejection is a DaemonClosedEarly. Rejects with a DaemonError when the daemon cannot be
 * reached, resets without a reply, or says more than `maxReplyBytes`, and when `signal` aborts.
 */
export async function exchange<T>(
  daemon: Daemon,
  signal: AbortSignal,
  send: (request: DaemonRequest) => Promise<void>,
  parse: (reply: Buffer) => T | Error,
): Promise<T> {
  const reply = await converse(daemon, signal, send);
  const result = parse(reply);
  if (result instanceof Error) {
    throw new DaemonError(`${daemon.name} at ${describeAddress(daemon.address)}: ${result.message}`);
  }
  return result;
}

async function converse(
  daemon: Daemon,
  signal: AbortSignal,
  send: (request: DaemonRequest) => Promise<void>,
): Promise<Buffer> {
  signal.throwIfAborted();
  const where = `${daemon.name} at ${describeAddress(daemon.address)}`;
  const socket: Socket =
    daemon.address.path !== undefined
      ? connect({ path: daemon.address.path })
      : connect({ host: daemon.address.host, port: daemon.address.port });
  const abort = () => socket.destroy(new DaemonError(`${where}: ${reasonText(signal.reason)}`));
  signal.addEventListener("abort", abort, { once: true });

  const received: Buffer[] = [];
  let receivedBytes = 0;
  let failure: Error | null = null;
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  socket.on("error", (error) => {
    failure ??= error;
  });
  socket.on("data", (chunk: Buffer) => {
    receivedBytes += chunk.length;
    if (receivedBytes > daemon.maxReplyBytes) {
      socket.destroy(new DaemonError(`${where}: reply longer than ${daemon.maxReplyBytes} bytes`));
    } else {
      received.push(chunk);
    }
  });

  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("close", () => reject(failure ?? new Error("closed before connecting")));
    });
    let written = 0;
    let writeFailed = false;
    try {
      await send({
        write: async (...parts) => {
          if (receivedBytes > 0) throw new AnsweredEarly();
          try {
            await write(socket, parts);
          } catch (error) {
            writeFailed = true;
            throw error;
          }
          for (const part of parts) written += part.length;
        },
      });
    } catch (sendFailure) {
      if (!(sendFailure instanceof AnsweredEarly)) {
        failure ??= sendFailure instanceof Error ? sendFailure : new Error(String(sendFailure));
        socket.destroy();
      }
    }
    await closed;
    if (failure instanceof DaemonError) throw failure;
    // A daemon that stops reading may have answered why (a size limit), and one that resets after
    // answering has still answered: what it said is the reply, for its parser to judge whole.
    if (receivedBytes > 0) return Buffer.concat(received);
    // Its answer may also be lost: a write into a socket the daemon closed resets the connection
    // before the answer is read; and when the whole request already sat in the kernel's buffers,
    // the daemon's close with it unread resets the connection after the last write.
    if (writeFailed || (written > 0 && isConnectionReset(failure))) {
      throw new DaemonClosedEarly(
        `${where}: closed the connection after ${written} bytes of the request, without a reply`,
      );
    }
    if (failure) throw failure;
    return Buffer.concat(received);
  } catch (error) {
    socket.destroy();
    if (error instanceof DaemonError) throw error;
    throw new DaemonError(`${where}: ${reasonText(error)}`);
  } finally {
    signal.removeEventListener("abort", abort);
  }
}

/**
 * Writes `parts` as one batch, then lets the event loop run before the next: a daemon that answers
 * before the request ends (clamd past its StreamMaxLength) is heard before a write into its closed
 * socket loses the answer. Resolves once the socket takes more; rejects when it is gone.
 */
async function write(socket: Socket, parts: readonly Buffer[]): Promise<void> {
  if (socket.destroyed) throw new Error("connection closed by the daemon");
  socket.cork();
  let room = true;
  for (const part of parts) room = socket.write(part);
  socket.uncork();
  if (room) return new Promise<void>((resolve) => setImmediate(resolve));
  return new Promise<void>((resolve, reject) => {
    const settle = () => {
      socket.off("drain", onDrain);
      socket.off("close", onClose);
    };
    const onDrain = () => {
      settle();
      resolve();
    };
    const onClose = () => {
      settle();
      reject(new Error("connection closed by the daemon"));
    };
    socket.on("drain", onDrain);
    socket.on("close", onClose);
  });
}

function isConnectionReset(error: Error | null): boolean {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return code === "ECONNRESET" || code === "EPIPE";
}

function reasonText(reason: unknown): string {
  if (reason instanceof Error) {
    const code = (reason as NodeJS.ErrnoException).code;
    return code && !reason.message.includes(code) ? `${reason.message} (${code})` : reason.message;
  }
  return String(reason);
}

/** The piece of a message written at a time: the most a scan holds of it in memory at once. */
export const PIECE_BYTES = 64 * 1024;

/**
 * The message as received, in pieces of at most `maxPiece` bytes, read from the spool as the
 * daemon takes them. Throws when the bytes do not add up to `message.size`, the length a request
 * announced before sending them.
 */
export async function* messagePieces(message: Message, maxPiece: number): AsyncGenerator<Buffer> {
  let sent = 0;
  for await (const chunk of message.stream()) {
    const bytes = chunk as Buffer;
    for (let start = 0; start < bytes.length; start += maxPiece) {
      const piece = bytes.subarray(start, start + maxPiece);
      sent += piece.length;
      yield piece;
    }
  }
  if (sent !== message.size) throw new Error(`the message stream held ${sent} bytes, not its size ${message.size}`);
}
