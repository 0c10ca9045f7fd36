/**
 * What an AUTH flood costs everyone else: `npx tsx scripts/auth-flood.ts [--ips 40] [--per-ip 4] [--seconds 8]`.
 * Starts a gateway (its own process, real scrypt cost) with an MX listener and an implicit-TLS
 * submission listener, floods the submission listener with wrong AUTH PLAIN from --ips loopback
 * addresses (127.0.0.2 …, each --per-ip connections that retry at once), and meanwhile delivers
 * mail one message at a time to the MX listener from 127.0.0.1. With --spray every attempt names
 * another user (a password spray), so no per-user limit helps and every client IP's own limit is hit. Prints the MX delivery latency and
 * the gateway's RSS before and during the flood, and how the AUTH attempts were answered.
 * A measurement, not a test: nothing is asserted.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { type AddressInfo, createServer, connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:tls";
import { parseArgs } from "node:util";
import { hashPassword } from "../core/smtp/auth/users.js";
import { startNextHop } from "../test/fixtures/next-hop.js";
import { SmtpTestClient } from "../test/fixtures/smtp-client.js";
import { testCertificate } from "../test/fixtures/tls.js";

const { values } = parseArgs({
  options: {
    ips: { type: "string", default: "40" },
    "per-ip": { type: "string", default: "4" },
    seconds: { type: "string", default: "8" },
    spray: { type: "boolean", default: false },
  },
});
const ips = Number(values.ips);
const perIp = Number(values["per-ip"]);
const floodMs = Number(values.seconds) * 1000;

async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  server.close();
  return port;
}

/** The resident set of a process, from /proc (Linux), in MB. */
function rssMb(pid: number): number {
  const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
  return Number(kb) / 1024;
}

async function waitForPort(port: number): Promise<void> {
  for (let tries = 0; tries < 200; tries++) {
    const socket = netConnect(port, "127.0.0.1");
    try {
      await once(socket, "connect");
      socket.destroy();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new Error(`gateway did not listen on ${port}`);
}

/** One MX delivery from connect to the reply after the message, in ms. */
async function deliver(port: number): Promise<number> {
  const started = performance.now();
  const client = await SmtpTestClient.connect(port);
  const result = await client.transaction({
    from: "sender@remote.test",
    to: ["someone@example.test"],
    data: "Subject: probe\r\n\r\nhello\r\n",
  });
  if (result.data?.code !== 250) throw new Error(`delivery refused: ${result.data?.raw ?? result.rcpts[0]?.raw}`);
  await client.quit();
  return performance.now() - started;
}

async function deliveries(port: number, count: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) times.push(await deliver(port));
  return times;
}

function summary(times: number[]): string {
  const sorted = [...times].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  return `median ${(median / 1000).toFixed(3)} s, max ${(sorted[sorted.length - 1] / 1000).toFixed(3)} s (${times.length} messages)`;
}

/** Wrong AUTH PLAIN over implicit TLS from `localAddress`, again and again, reconnecting when closed. */
async function flood(port: number, localAddress: string, until: number, replies: Map<string, number>) {
  while (Date.now() < until) {
    // TLS over a TCP socket bound to the flooding address (tls.connect takes no localAddress of its own).
    const socket = connect({
      socket: netConnect({ host: "127.0.0.1", port, localAddress }),
      rejectUnauthorized: false,
    });
    socket.on("error", () => undefined);
    try {
      await once(socket, "secureConnect");
      const client = SmtpTestClient.over(socket);
      await client.reply();
      await client.command("EHLO flood.test");
      while (Date.now() < until && !client.closed) {
        const user = values.spray ? `user${Math.floor(Math.random() * 1e9)}` : "alice";
        const reply = await client.command(`AUTH PLAIN ${Buffer.from(`\0${user}\0guess`).toString("base64")}`);
        const key = `${reply.code} ${reply.text}`;
        replies.set(key, (replies.get(key) ?? 0) + 1);
      }
      client.destroy();
    } catch {
      socket.destroy();
    }
  }
}

const dir = await mkdtemp(join(tmpdir(), "portcullis-auth-flood-"));
const hop = await startNextHop();
let gateway: ChildProcess | undefined;
try {
  const [mxPort, submissionPort] = [await freePort(), await freePort()];
  const certificate = testCertificate();
  for (const [name, content] of Object.entries(certificate.files)) await writeFile(join(dir, name), content);
  await writeFile(join(dir, "users"), `alice:${await hashPassword("the-right-one")}\n`);
  await writeFile(
    join(dir, "policy.yaml"),
    `
version: 1
server:
  hostname: gw.test
  tls: { cert: ./cert.pem, key: ./key.pem }
  listen:
    - { address: "127.0.0.1:${mxPort}" }
    - { address: "127.0.0.1:${submissionPort}", submission: true, implicitTls: true }
  auth: { users: ./users }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
observability: { log: { level: error } }
`,
  );
  const bin = new URL("../bin/portcullis.js", import.meta.url).pathname;
  gateway = spawn(process.execPath, [bin, "start", "--policy", join(dir, "policy.yaml")], { stdio: "inherit" });
  const pid = gateway.pid as number;
  await waitForPort(mxPort);
  await waitForPort(submissionPort);
  await deliveries(mxPort, 5); // warm-up: first connections, spool files

  const quiet = await deliveries(mxPort, 20);
  const rssBefore = rssMb(pid);

  const replies = new Map<string, number>();
  const until = Date.now() + floodMs;
  const flooders = Array.from({ length: ips }, (_, i) =>
    Array.from({ length: perIp }, () => flood(submissionPort, `127.0.0.${i + 2}`, until, replies)),
  ).flat();
  let rssPeak = rssBefore;
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, rssMb(pid));
  }, 100);
  await new Promise((resolve) => setTimeout(resolve, 1000)); // let the flood build up
  const loaded: number[] = [];
  while (Date.now() < until - 500) loaded.push(await deliver(mxPort));
  await Promise.all(flooders);
  clearInterval(sampler);

  const target = values.spray ? "a new user name each attempt" : "one user";
  process.stdout.write(`flood: ${ips} IPs x ${perIp} connections, ${floodMs / 1000} s, ${target}, implicit TLS\n`);
  process.stdout.write(`MX delivery without flood: ${summary(quiet)}\n`);
  process.stdout.write(`MX delivery during flood:  ${summary(loaded)}\n`);
  process.stdout.write(`gateway RSS: ${rssBefore.toFixed(0)} MB before, ${rssPeak.toFixed(0)} MB peak during\n`);
  process.stdout.write("AUTH replies during the flood:\n");
  for (const [reply, count] of [...replies].sort((a, b) => b[1] - a[1])) {
    process.stdout.write(`  ${String(count).padStart(7)}  ${reply}\n`);
  }
} finally {
  if (gateway && gateway.exitCode === null) {
    const exited = once(gateway, "exit");
    gateway.kill("SIGTERM");
    await exited;
  }
  await hop.close();
  await rm(dir, { recursive: true, force: true });
}
