/**
 * A slowloris measurement (not a test): `npx tsx scripts/slowloris.ts [--slow 1000] [--ips 50]
 * [--every 5000] [--seconds 40] [--reconnect true]`.
 *
 * Starts a gateway on 127.0.0.1 with the policy's default limits, opens `--slow` connections spread
 * over `--ips` loopback source addresses (127.0.0.2 upwards) that each trickle one byte of an
 * endless EHLO every `--every` ms (and, with --reconnect, open a new connection when cut), while a
 * legitimate client from 127.0.0.1 tries to deliver one message every second. Prints the slot use
 * each second and how many legitimate attempts got 250. Needs about 2 × `--slow` file descriptors.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { loadPolicy } from "../app/catalogue.js";
import { createLogger } from "../core/observability/log.js";
import { Gateway } from "../core/smtp/gateway.js";
import { SmtpTestClient } from "../test/fixtures/smtp-client.js";

const { values } = parseArgs({
  options: {
    slow: { type: "string", default: "1000" },
    ips: { type: "string", default: "50" },
    every: { type: "string", default: "5000" },
    seconds: { type: "string", default: "40" },
    reconnect: { type: "string", default: "true" },
  },
});
const slowCount = Number(values.slow);
const ips = Number(values.ips);
const everyMs = Number(values.every);
const seconds = Number(values.seconds);
const reconnect = values.reconnect === "true";

const dir = await mkdtemp(join(tmpdir(), "portcullis-slowloris-"));
const policyFile = join(dir, "policy.yaml");
await writeFile(policyFile, "version: 1\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n");
const cuts = new Map<string, number>();
const sink = new Writable({
  write(chunk: Buffer, _encoding, callback) {
    for (const line of chunk.toString().split("\n")) {
      if (!line.includes('"cut"') && !line.includes('"stress"')) continue;
      const entry = JSON.parse(line) as { event?: string; reason?: string; on?: boolean };
      const key = entry.event === "stress" ? `stress ${entry.on ? "on" : "off"}` : `cut ${entry.reason}`;
      cuts.set(key, (cuts.get(key) ?? 0) + 1);
    }
    callback();
  },
});
const policy = await loadPolicy(policyFile);
const gateway = await Gateway.create(policy, { log: createLogger("info", sink), listen: "127.0.0.1:0" });
const [{ port }] = await gateway.listen();
const { maxClients } = policy.config.server.limits;

let stopping = false;
const slowSockets = new Set<Socket>();
let slowOpened = 0;
let slowClosed = 0;

/** One slow connection: greeted or not, it trickles "EHLO " and then "x" for ever. */
function openSlow(index: number): void {
  if (stopping) return;
  const socket = connect({ port, host: "127.0.0.1", localAddress: `127.0.0.${2 + (index % ips)}` });
  slowOpened++;
  slowSockets.add(socket);
  let sent = 0;
  const timer = setInterval(() => socket.write("EHLO "[sent++] ?? "x"), everyMs);
  socket.on("data", () => undefined);
  socket.on("error", () => undefined);
  socket.on("close", () => {
    clearInterval(timer);
    slowSockets.delete(socket);
    slowClosed++;
    if (reconnect) setTimeout(() => openSlow(index), 10);
  });
}

const results = { delivered: 0, refused: 0, other: 0 };
async function legitimateAttempt(): Promise<void> {
  let client: SmtpTestClient | undefined;
  try {
    client = await SmtpTestClient.connect(port);
    if (client.greeting.code !== 220) {
      results.refused++;
      return;
    }
    const outcome = await client.transaction({
      from: "a@sender.test",
      to: ["b@example.test"],
      data: "Subject: hello\r\n\r\nhello\r\n",
    });
    if (outcome.data?.code === 250) results.delivered++;
    else results.other++;
    await client.quit();
  } catch {
    results.other++;
  } finally {
    client?.destroy();
  }
}

for (let i = 0; i < slowCount; i++) openSlow(i);
const attempts: Promise<void>[] = [];
let peak = 0;
for (let second = 1; second <= seconds; second++) {
  await sleep(1000);
  attempts.push(legitimateAttempt());
  const { sessions } = gateway.openSessions();
  peak = Math.max(peak, sessions);
  process.stdout.write(
    `t=${second}s sessions=${sessions}/${maxClients} slow-open=${slowSockets.size} legit 250=${results.delivered} refused=${results.refused} other=${results.other}\n`,
  );
}
stopping = true;
await Promise.race([Promise.all(attempts), sleep(5000)]);
for (const socket of slowSockets) socket.destroy();
await gateway.stop(200);
await rm(dir, { recursive: true, force: true });
const total = results.delivered + results.refused + results.other;
process.stdout.write(
  `\nlegitimate attempts: ${total}; 250: ${results.delivered}; refused (421 at connect): ${results.refused}; other: ${results.other}\n` +
    `slow connections opened ${slowOpened}, closed by the gateway or at the end ${slowClosed}; peak sessions ${peak}/${maxClients}\n` +
    `gateway log: ${[...cuts].map(([key, count]) => `${key}=${count}`).join(", ") || "no cuts"}\n`,
);
