/**
 * The sink in a process of its own, so it gets its own event loop and core instead of competing
 * with the load generator. A Node sink talks to the benchmark over the IPC channel of `fork`;
 * Postfix's smtp-sink (written in C, the fastest sink at hand) reports its counters on stdout.
 */
import { fork, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { type AddressInfo, connect, createServer } from "node:net";
import { fileURLToPath } from "node:url";
import type { NodeSinkKind } from "./sink.js";

export type SinkKind = NodeSinkKind | "smtp-sink";

export interface SinkProcess {
  readonly port: number;
  readonly pid: number;
  /** Messages the sink has accepted since it started. */
  count(): Promise<number>;
  /** Resolves once the sink has accepted n messages in all. */
  waitFor(n: number): Promise<void>;
  close(): Promise<void>;
}

type Request = { id: number; op: "count" } | { id: number; op: "waitFor"; n: number } | { id: number; op: "close" };
type Response = { id: number; count: number };
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** Starts the sink child and resolves once it listens. */
export async function startSinkProcess(kind: SinkKind): Promise<SinkProcess> {
  return kind === "smtp-sink" ? startPostfixSink() : startNodeSink(kind);
}

async function startNodeSink(kind: NodeSinkKind): Promise<SinkProcess> {
  const child = fork(fileURLToPath(import.meta.url), [kind], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const [ready] = (await Promise.race([
    once(child, "message"),
    once(child, "exit").then(([code]) => {
      throw new Error(`bench sink exited with code ${code} before listening`);
    }),
  ])) as [{ port: number }];
  const pending = new Map<number, (count: number) => void>();
  let next = 0;
  child.on("message", (message: Response) => {
    pending.get(message.id)?.(message.count);
    pending.delete(message.id);
  });
  const ask = (request: DistributiveOmit<Request, "id">) =>
    new Promise<number>((resolve) => {
      const id = next++;
      pending.set(id, resolve);
      child.send({ ...request, id });
    });
  return {
    port: ready.port,
    pid: child.pid!,
    count: () => ask({ op: "count" }),
    waitFor: async (n) => {
      await ask({ op: "waitFor", n });
    },
    close: async () => {
      const exited = once(child, "exit");
      await ask({ op: "close" });
      await exited;
    },
  };
}

/** Where Postfix's smtp-sink is, or null when it is not installed. */
export function findSmtpSink(): string | null {
  return findProgram("smtp-sink");
}

export function findProgram(name: string): string | null {
  for (const dir of ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]) {
    if (existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  return null;
}

/** smtp-sink `-c` rewrites one counter line (`sess=N quit=N mesg=N`, ended by CR) per event. */
const MESSAGES = /mesg=(\d+)\r/g;

async function startPostfixSink(): Promise<SinkProcess> {
  const program = findSmtpSink();
  if (!program) throw new Error("bench: --sink smtp-sink, but Postfix's smtp-sink is not installed");
  const port = await freePort();
  // As root it insists on dropping privileges once it has bound its socket.
  const user = process.getuid?.() === 0 ? ["-u", "nobody"] : [];
  const child = spawn(program, [...user, "-c", `127.0.0.1:${port}`, "1024"], { stdio: ["ignore", "pipe", "pipe"] });
  let accepted = 0;
  let stderr = "";
  let rest = "";
  const waiters = new Set<{ n: number; wake: () => void }>();
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  child.stdout.setEncoding("latin1").on("data", (text: string) => {
    const all = rest + text;
    for (const match of all.matchAll(MESSAGES)) accepted = Number(match[1]);
    rest = all.slice(all.lastIndexOf("\r") + 1);
    for (const waiter of waiters) {
      if (accepted >= waiter.n) {
        waiters.delete(waiter);
        waiter.wake();
      }
    }
  });
  const exited = once(child, "exit");
  await waitForListener(
    port,
    () => child.exitCode !== null,
    () => `smtp-sink did not start: ${stderr}`,
  );
  return {
    port,
    pid: child.pid!,
    count: async () => accepted,
    waitFor: (n) =>
      accepted >= n ? Promise.resolve() : new Promise<void>((wake) => waiters.add({ n, wake: () => wake() })),
    close: async () => {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** A port that was free a moment ago (smtp-sink cannot report one the OS picked). */
export async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise((done) => server.close(done));
  return port;
}

export async function waitForListener(port: number, dead: () => boolean, why: () => string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (dead()) break;
    const ok = await new Promise<boolean>((resolve) => {
      const probe = connect({ host: "127.0.0.1", port }, () => {
        probe.destroy();
        resolve(true);
      });
      probe.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((done) => setTimeout(done, 50));
  }
  throw new Error(`bench: nothing listens on 127.0.0.1:${port}: ${why().trim()}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.send) {
  const { startSink } = await import("./sink.js");
  const sink = await startSink(process.argv[2] as NodeSinkKind);
  const reply = (id: number) => process.send?.({ id, count: sink.count() } satisfies Response);
  process.on("message", (request: Request) => {
    switch (request.op) {
      case "count":
        reply(request.id);
        break;
      case "waitFor":
        sink.waitFor(request.n).then(() => reply(request.id));
        break;
      case "close":
        sink.close().then(() => {
          reply(request.id);
          process.disconnect();
        });
        break;
    }
  });
  // The benchmark going away (a crash, ^C) must not leave a sink listening.
  process.on("disconnect", () => process.exit(0));
  process.send({ port: sink.port });
}
