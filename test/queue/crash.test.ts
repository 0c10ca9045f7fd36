/**
 * Crash safety: a gateway child process (the real CLI, queue mode) receives a steady stream of
 * messages and is killed with SIGKILL at random moments, six times. After the last restart every
 * message that got a 250 must reach the next hop (reconciled by Message-ID). Duplicates are allowed
 * (at-least-once) and reported; loss is not.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { closedPort, startNextHop } from "../fixtures/next-hop.js";
import { message, send, until } from "./helpers.js";

const bin = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));
const KILLS = 6;
const SENDERS = 4;

let dir = "";
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function startChild(policy: string, port: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, [bin, "start", "--policy", policy, "--listen", `127.0.0.1:${port}`], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr!.setEncoding("utf8");
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: string) => {
      stderr += chunk;
      if (stderr.includes("listening on")) {
        child.stderr!.off("data", onData);
        child.stderr!.resume();
        resolve();
      }
    };
    child.stderr!.on("data", onData);
    child.once("exit", (code) => reject(new Error(`gateway exited (${code}) before listening: ${stderr}`)));
  });
  return child;
}

it("loses no acknowledged message when the gateway is killed at random moments", async (t) => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-crash-"));
  const hop = await startNextHop();
  t.after(() => hop.close());
  const port = await closedPort();
  const policy = join(dir, "policy.yaml");
  await writeFile(
    policy,
    `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
delivery:
  mode: queue
  spool: ./spool
  retry: { schedule: [200ms], maxAge: 1h }
observability: { log: { level: silent } }
`,
  );

  const acknowledged = new Set<string>();
  let sent = 0;
  let running = true;
  let sequence = 0;
  const sender = async () => {
    while (running) {
      const id = `m${sequence++}`;
      sent++;
      try {
        const reply = await send(port, { to: ["b@example.test"], data: message(id, `body of ${id}\r\n`) });
        if (reply.code === 250) acknowledged.add(id);
      } catch {
        // The gateway is down or died mid-transaction: nothing was acknowledged.
        await sleep(20);
      }
    }
  };

  let child = await startChild(policy, port);
  const senders = Array.from({ length: SENDERS }, sender);
  for (let kill = 0; kill < KILLS; kill++) {
    const ackedBefore = acknowledged.size;
    // Random moments, but each round only after some traffic got through, so every kill hits a busy gateway.
    await until(() => acknowledged.size >= ackedBefore + 5, "traffic before the kill");
    await sleep(Math.floor(Math.random() * 300));
    child.kill("SIGKILL");
    await once(child, "exit");
    child = await startChild(policy, port);
  }
  running = false;
  await Promise.all(senders);

  const delivered = () => hop.messages.map((m) => /Message-ID: <(\w+)@/.exec(m.raw.toString())?.[1]);
  try {
    await until(() => [...acknowledged].every((id) => delivered().includes(id)), "every acknowledged message", 30_000);
  } finally {
    child.kill("SIGTERM");
    await once(child, "exit");
  }
  const counts = new Map<string, number>();
  for (const id of delivered()) if (id) counts.set(id, (counts.get(id) ?? 0) + 1);
  const duplicates = [...counts.values()].filter((n) => n > 1).reduce((sum, n) => sum + n - 1, 0);
  const lost = [...acknowledged].filter((id) => !counts.has(id));
  t.diagnostic(
    `${KILLS} kills; ${sent} attempted, ${acknowledged.size} acknowledged, ${counts.size} distinct delivered, ` +
      `${duplicates} duplicate deliveries, ${lost.length} lost`,
  );
  assert.deepEqual(lost, []);
  assert.ok(acknowledged.size > KILLS * 5);
});
