/**
 * Load generators: a pipelining SMTP client written for the benchmark (it records the latency of
 * every message), and Postfix's smtp-source for a second opinion from a client that is not Node.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { performance } from "node:perf_hooks";

export interface LoadOptions {
  readonly host: string;
  readonly port: number;
  /** Concurrent SMTP sessions. */
  readonly sessions: number;
  readonly messages: number;
  /** Messages sent over one connection before QUIT (1 = a new connection per message). */
  readonly perConnection: number;
  /** The message, CRLF line ends, dot-stuffed, without the final `.` line. */
  readonly message: Buffer;
  readonly helo: string;
  readonly from: string;
  readonly to: string;
}

export interface LoadResult {
  readonly sent: number;
  readonly failed: number;
  /** Up to five distinct failures, for the report. */
  readonly errors: string[];
  readonly elapsedMs: number;
  /**
   * Milliseconds from the start of each message to its 250: from connect for the first message of
   * a connection (greeting and EHLO included, which is what a one-message client waits for), from
   * MAIL FROM for the others. Sorted; null when the generator cannot tell (smtp-source).
   */
  readonly latencies: Float64Array | null;
}

interface Reply {
  readonly code: number;
  readonly text: string;
}

/** One SMTP client connection; replies are handed out in order, multi-line replies joined. */
class Client {
  readonly #socket: Socket;
  #buffer = "";
  #lines: string[] = [];
  readonly #ready: Reply[] = [];
  readonly #waiting: Array<{ resolve: (reply: Reply) => void; reject: (error: Error) => void }> = [];
  #error: Error | null = null;

  constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding("latin1");
    socket.on("data", (data: string) => this.#onData(data));
    socket.on("error", (error) => this.#fail(error));
    socket.on("close", () => this.#fail(new Error("connection closed")));
  }

  static async open(host: string, port: number): Promise<Client> {
    const socket = connect({ host, port });
    // Replies and pipelined groups are single small writes; Nagle would hold them back for an ACK.
    socket.setNoDelay(true);
    const client = new Client(socket);
    await once(socket, "connect");
    return client;
  }

  #onData(data: string): void {
    const text = this.#buffer + data;
    let start = 0;
    for (let end = text.indexOf("\n", start); end !== -1; end = text.indexOf("\n", start)) {
      const line = text.slice(start, end > start && text.charCodeAt(end - 1) === 13 ? end - 1 : end);
      start = end + 1;
      this.#lines.push(line);
      if (line.charCodeAt(3) === 45 /* "-": more lines follow */) continue;
      const reply = { code: Number(line.slice(0, 3)), text: this.#lines.join("\n") };
      this.#lines = [];
      const waiter = this.#waiting.shift();
      if (waiter) waiter.resolve(reply);
      else this.#ready.push(reply);
    }
    this.#buffer = text.slice(start);
  }

  #fail(error: Error): void {
    this.#error ??= error;
    for (const waiter of this.#waiting.splice(0)) waiter.reject(this.#error);
  }

  read(): Promise<Reply> {
    const ready = this.#ready.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => this.#waiting.push({ resolve, reject }));
  }

  async expect(code: number, what: string): Promise<void> {
    const reply = await this.read();
    if (reply.code !== code) throw new Error(`${what}: ${reply.text}`);
  }

  write(data: string | Buffer): void {
    this.#socket.write(data);
  }

  destroy(): void {
    this.#socket.destroy();
  }
}

/** Runs the load with the benchmark's own client. Every session takes the next message until all are claimed. */
export async function runNodeLoad(options: LoadOptions): Promise<LoadResult> {
  const envelope = `MAIL FROM:<${options.from}>\r\nRCPT TO:<${options.to}>\r\nDATA\r\n`;
  const body = Buffer.concat([options.message, Buffer.from(".\r\n")]);
  const latencies = new Float64Array(options.messages);
  const errors = new Set<string>();
  let claimed = 0;
  let sent = 0;
  let failed = 0;

  const session = async () => {
    while (claimed < options.messages) {
      claimed++;
      let client: Client | null = null;
      let inFlight = 1;
      try {
        let started = performance.now();
        client = await Client.open(options.host, options.port);
        await client.expect(220, "greeting");
        client.write(`EHLO ${options.helo}\r\n`);
        await client.expect(250, "EHLO");
        for (let n = 0; ; ) {
          client.write(envelope);
          await client.expect(250, "MAIL FROM");
          await client.expect(250, "RCPT TO");
          await client.expect(354, "DATA");
          client.write(body);
          await client.expect(250, "end of DATA");
          latencies[sent++] = performance.now() - started;
          inFlight = 0;
          n++;
          if (n >= options.perConnection || claimed >= options.messages) break;
          claimed++;
          inFlight = 1;
          started = performance.now();
        }
        client.write("QUIT\r\n");
        await client.expect(221, "QUIT");
      } catch (error) {
        // A connection lost after a 250 (e.g. at QUIT) lost no message.
        failed += inFlight;
        if (errors.size < 5) errors.add(error instanceof Error ? error.message : String(error));
      } finally {
        client?.destroy();
      }
    }
  };

  const begin = performance.now();
  await Promise.all(Array.from({ length: options.sessions }, session));
  return {
    sent,
    failed,
    errors: [...errors],
    elapsedMs: performance.now() - begin,
    latencies: latencies.subarray(0, sent).sort(),
  };
}

/**
 * Runs Postfix's smtp-source. It sends its own message (`-l` bytes of payload after its headers),
 * reports no latencies, and with `-d` keeps each session on one connection for all its messages.
 */
export async function runSmtpSource(program: string, options: LoadOptions): Promise<LoadResult> {
  const args = [
    "-s",
    String(options.sessions),
    "-m",
    String(options.messages),
    "-l",
    String(options.message.length),
    "-M",
    options.helo,
    "-f",
    options.from,
    "-t",
    options.to,
    ...(options.perConnection > 1 ? ["-d"] : []),
    `${options.host}:${options.port}`,
  ];
  const begin = performance.now();
  const child = spawn(program, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  const [code] = (await once(child, "exit")) as [number | null];
  const elapsedMs = performance.now() - begin;
  const ok = code === 0;
  return {
    sent: ok ? options.messages : 0,
    failed: ok ? 0 : options.messages,
    errors: ok ? [] : [`smtp-source exited with ${code}: ${stderr.trim().slice(0, 300)}`],
    elapsedMs,
    latencies: null,
  };
}
