/**
 * Crash safety: a gateway child process (the real CLI, queue mode) receives a steady stream of
 * messages and is killed with SIGKILL at random moments, six times. After the last restart every
 * message that got a 250 must reach the next hop (reconciled by Message-ID). Duplicates are allowed
 * (at-least-once) and reported; loss is not.
 *
 * The kill moments come from a seeded generator; the seed is printed with the result and
 * PORTCULLIS_CRASH_SEED=<seed> replays the same delays (the traffic around them still varies).
 */
import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { startGatewayProcess } from "../fixtures/gateway-process.js";
import { startNextHop } from "../fixtures/next-hop.js";
import { seededRandom } from "../fixtures/seeded-random.js";
import { startQueueGateway, startSenders, until } from "./helpers.js";

const KILLS = 6;
const SENDERS = 4;
const SEED = Number(process.env.PORTCULLIS_CRASH_SEED ?? randomInt(2 ** 31));

let dir = "";
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

it("loses no acknowledged message when the gateway is killed at random moments", async (t) => {
  t.diagnostic(`seed ${SEED} (replay: PORTCULLIS_CRASH_SEED=${SEED})`);
  const random = seededRandom(SEED);
  dir = await mkdtemp(join(tmpdir(), "portcullis-crash-"));
  const hop = await startNextHop();
  t.after(() => hop.close());
  const first = await startQueueGateway(dir, { nextHopPort: hop.port, logLevel: "silent" });
  let gateway = first.gateway;
  const senders = startSenders(gateway.port, SENDERS);
  const { acknowledged } = senders;
  for (let kill = 0; kill < KILLS; kill++) {
    const ackedBefore = acknowledged.size;
    // Random moments, but each round only after some traffic got through, so every kill hits a busy gateway.
    await until(() => acknowledged.size >= ackedBefore + 5, "traffic before the kill");
    await sleep(Math.floor(random() * 300));
    senders.port = null;
    await gateway.kill();
    gateway = await startGatewayProcess(first.policy);
    senders.port = gateway.port;
  }
  await senders.stop();

  const delivered = () => hop.messages.map((m) => /Message-ID: <(\w+)@/.exec(m.raw.toString())?.[1]);
  try {
    await until(() => [...acknowledged].every((id) => delivered().includes(id)), "every acknowledged message", 30_000);
  } finally {
    await gateway.stop();
  }
  const counts = new Map<string, number>();
  for (const id of delivered()) if (id) counts.set(id, (counts.get(id) ?? 0) + 1);
  const duplicates = [...counts.values()].filter((n) => n > 1).reduce((sum, n) => sum + n - 1, 0);
  const lost = [...acknowledged].filter((id) => !counts.has(id));
  t.diagnostic(
    `${KILLS} kills; ${senders.attempted} attempted, ${acknowledged.size} acknowledged, ${counts.size} distinct delivered, ` +
      `${duplicates} duplicate deliveries, ${lost.length} lost`,
  );
  assert.deepEqual(lost, [], `seed ${SEED}`);
  assert.ok(acknowledged.size > KILLS * 5);
});
