/**
 * A gateway as a child process (`portcullis start`), the way an operator runs it: signals, exit
 * code, its JSON log lines, and the SMTP port it announced on stderr.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { type AddressInfo, connect } from "node:net";
import { join } from "node:path";
import { SMTPServer } from "smtp-server";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const root = new URL("../..", import.meta.url).pathname;

export interface ChildGateway {
  readonly child: ChildProcess;
  readonly port: number;
  /** Log lines (JSON) written so far. */
  logs(): Array<Record<string, unknown>>;
  /** Everything written to stdout so far, as written. */
  stdout(): string;
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>;
}

/**
 * `args` are further `start` options, e.g. `["--grace", "60s"]`; `env` is added to this process's;
 * `bin` is the CLI to run (default this checkout's), e.g. an installed package's, in `cwd`.
 */
export async function startChild(
  policyFile: string,
  options: { args?: readonly string[]; env?: Record<string, string>; bin?: string; cwd?: string } = {},
): Promise<ChildGateway> {
  const child = spawn(
    process.execPath,
    [
      options.bin ?? join(root, "bin/portcullis.js"),
      "start",
      "--policy",
      policyFile,
      "--listen",
      "127.0.0.1:0",
      ...(options.args ?? []),
    ],
    { cwd: options.cwd ?? root, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...options.env } },
  );
  const exited = once(child, "exit").then(([code]) => code as number | null);
  let stdout = "";
  child.stdout!.on("data", (chunk) => {
    stdout += chunk;
  });
  let stderr = "";
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr!.on("data", (chunk) => {
      stderr += chunk;
      const match = /listening on 127\.0\.0\.1:(\d+)/.exec(stderr);
      if (match) resolve(Number(match[1]));
    });
    exited.then((code) => reject(new Error(`gateway exited ${code}: ${stderr}`)));
  });
  const logs = () =>
    stdout
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { child, port, logs, stdout: () => stdout, exited };
}

/** Whether a new connection to the port is refused (the listener is closed). */
export function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => resolve(error.code === "ECONNREFUSED"));
  });
}

export interface Sink {
  readonly port: number;
  /** Message-IDs received, one entry per delivery (a duplicate appears twice). */
  readonly ids: string[];
  /** Takes mail from now on; until then every connection is greeted with 421. */
  up(): void;
  close(): Promise<void>;
}

/**
 * A next hop on a port the OS picks, down until `up()`, that then accepts everything and records
 * each message's Message-ID. Down, it still holds its port, so queued mail can be routed to it
 * before it takes any and no other process can take the port meanwhile.
 */
export async function startSink(): Promise<Sink> {
  const ids: string[] = [];
  let isUp = false;
  const server = new SMTPServer({
    logger: false,
    disableReverseLookup: true,
    disabledCommands: ["AUTH", "STARTTLS"],
    closeTimeout: 200,
    onConnect(_session, callback) {
      callback(isUp ? null : Object.assign(new Error("4.3.2 Service not available"), { responseCode: 421 }));
    },
    onData(stream, _session, callback) {
      let raw = "";
      stream.on("data", (chunk: Buffer) => {
        raw += chunk.toString("latin1");
      });
      stream.on("end", () => {
        const id = /^Message-ID:\s*(\S+)/im.exec(raw)?.[1];
        if (id) ids.push(id);
        callback();
      });
    },
  });
  server.on("error", () => undefined);
  server.listen(0, "127.0.0.1");
  await once(server.server, "listening");
  return {
    port: (server.server.address() as AddressInfo).port,
    ids,
    up() {
      isUp = true;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** One message over its own connection; resolves with the DATA reply code (0 when it never got one). */
export async function sendOne(port: number, id: string): Promise<number> {
  const client = await SmtpTestClient.connect(port);
  try {
    const result = await client.transaction({
      from: "load@sender.test",
      to: ["user@example.test"],
      data: `Message-ID: ${id}\r\nSubject: load\r\n\r\nbody\r\n`,
    });
    return result.data?.code ?? 0;
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}
