/**
 * Memory per idle connection: hold N connections to the gateway (greeted, EHLO done, then silent,
 * like a client between messages) and divide the gateway's RSS growth by N.
 */
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { startDnsServer } from "../../core/testing/dns-server.js";
import { startGatewayProcess } from "./gateway-process.js";
import { BENCH } from "./mail.js";
import { relayPolicy } from "./policies.js";

export interface IdleResult {
  readonly requested: number;
  /** Connections actually held (fewer when the file descriptor limit is lower). */
  readonly connections: number;
  readonly fdLimit: number;
  readonly baselineRssMb: number;
  readonly loadedRssMb: number;
  readonly kbPerConnection: number;
  readonly notes: string[];
}

/** Descriptors the benchmark keeps for itself beyond one per connection. */
const FD_RESERVE = 200;
const OPEN_BATCH = 250;
/** Time for the gateway's allocations to settle (lazy buffers, GC) before RSS is read. */
const SETTLE_MS = 1500;

export async function runIdle(requested: number, progress: (line: string) => void = () => {}): Promise<IdleResult> {
  const notes: string[] = [];
  const fdLimit = openFileLimit();
  let count = requested;
  if (fdLimit - FD_RESERVE < requested) {
    count = Math.max(1, fdLimit - FD_RESERVE);
    notes.push(
      `ulimit -n is ${fdLimit}: holding ${count} connections instead of ${requested}; raise it with \`ulimit -n ${requested + 1000}\``,
    );
  }
  const dir = await mkdtemp(join(tmpdir(), "portcullis-idle-"));
  const dns = await startDnsServer({});
  const sockets: Socket[] = [];
  let gateway: Awaited<ReturnType<typeof startGatewayProcess>> | undefined;
  try {
    const policyFile = join(dir, "idle.yaml");
    await writeFile(
      policyFile,
      relayPolicy({
        // Idle clients never send mail, so the route is never used.
        sinkPort: 9,
        dns: dns.address,
        spool: join(dir, "spool"),
        logLevel: "warn",
        maxConnections: count + 100,
        workers: 1,
      }),
    );
    gateway = await startGatewayProcess({ policyFile, dns: dns.address, logFile: join(dir, "idle.log") });
    const port = gateway.port;
    // A few full sessions first, so code paths and buffers that every connection needs are already
    // allocated and not charged to the idle connections.
    for (const socket of await Promise.all(Array.from({ length: 20 }, () => openIdle(port)))) socket.destroy();
    await sleep(SETTLE_MS);
    const baseline = gateway.stats().rssKb;
    progress(`gateway baseline RSS ${(baseline / 1024).toFixed(1)} MB; opening ${count} idle connections …`);
    while (sockets.length < count) {
      const batch = Math.min(OPEN_BATCH, count - sockets.length);
      sockets.push(...(await Promise.all(Array.from({ length: batch }, () => openIdle(port)))));
    }
    await sleep(SETTLE_MS);
    const loaded = gateway.stats().rssKb;
    return {
      requested,
      connections: sockets.length,
      fdLimit,
      baselineRssMb: Math.round(baseline / 102.4) / 10,
      loadedRssMb: Math.round(loaded / 102.4) / 10,
      kbPerConnection: Math.round(((loaded - baseline) / sockets.length) * 10) / 10,
      notes,
    };
  } finally {
    for (const socket of sockets) socket.destroy();
    await gateway?.stop();
    await dns.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Connects, waits for the greeting, says EHLO and waits for its reply; the socket then stays open. */
async function openIdle(port: number): Promise<Socket> {
  const socket = connect({ host: "127.0.0.1", port, noDelay: true });
  socket.setEncoding("latin1");
  let received = "";
  const replies = (n: number) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if ((received.match(/^\d{3} /gm)?.length ?? 0) >= n) {
          socket.off("data", onData);
          socket.off("close", onClose);
          resolve();
        }
      };
      const onData = (text: string) => {
        received += text;
        check();
      };
      const onClose = () => reject(new Error(`idle connection closed by the gateway: ${received.trim()}`));
      socket.on("data", onData);
      socket.on("close", onClose);
      check();
    });
  socket.on("error", () => {});
  await once(socket, "connect");
  await replies(1);
  if (!received.startsWith("220")) throw new Error(`idle connection refused: ${received.trim()}`);
  socket.write(`EHLO ${BENCH.clientName}\r\n`);
  await replies(2);
  return socket;
}

/** The soft limit this process (and the gateway it starts) runs under. */
function openFileLimit(): number {
  const text = execFileSync("/bin/sh", ["-c", "ulimit -n"], { encoding: "utf8" }).trim();
  return text === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(text);
}

export function formatIdle(result: IdleResult): string {
  return [
    `idle connections: ${result.connections} held (ulimit -n ${result.fdLimit})`,
    `  gateway RSS ${result.baselineRssMb} MB → ${result.loadedRssMb} MB: ${result.kbPerConnection} KB per idle connection (target ≤ 30 KB)`,
    ...result.notes.map((note) => `  note: ${note}`),
  ].join("\n");
}
