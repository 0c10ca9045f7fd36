/**
 * The SIGKILL measurement (not a test): `npx tsx scripts/crash-run.ts [--messages 2000] [--clients 4]
 * [--kills 4] [--seed N]`.
 *
 * A gateway child process (the real CLI, queue mode, fsynced spool) relays to an in-process next
 * hop while `--clients` senders each send one message per connection until `--messages` have been
 * acknowledged. The gateway is killed with SIGKILL `--kills` times, spread evenly over the run (each
 * at a seeded random moment up to 100 ms after its share of acknowledgements), and restarted on the
 * same spool. After the last restart the queue drains; the next hop's copies are reconciled by
 * Message-ID and the script prints how many acknowledged messages were lost and how many copies
 * arrived more than once (duplicates, also as a share of the acknowledged messages). For each
 * duplicate it shows how long before the next kill its first copy reached the next hop: a copy
 * the next hop took just before the gateway died, whose 250 the gateway never read, is the
 * duplicate at-least-once delivery cannot avoid. Exit code 1 when any acknowledged message is lost.
 */
import { randomInt } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { type GatewayProcess, startGatewayProcess } from "../test/fixtures/gateway-process.js";
import { startNextHop } from "../test/fixtures/next-hop.js";
import { seededRandom } from "../test/fixtures/seeded-random.js";
import { startQueueGateway, startSenders } from "../test/queue/helpers.js";

const { values } = parseArgs({
  options: {
    messages: { type: "string", default: "2000" },
    clients: { type: "string", default: "4" },
    kills: { type: "string", default: "4" },
    seed: { type: "string" },
  },
});
const total = Number(values.messages);
const clients = Number(values.clients);
const kills = Number(values.kills);
const seed = values.seed === undefined ? randomInt(2 ** 31) : Number(values.seed);
const random = seededRandom(seed);
/** After the last delivery, this long without a new copy at the next hop counts as drained. */
const QUIET_MS = 3000;

const dir = await mkdtemp(join(tmpdir(), "portcullis-crash-run-"));
/** When the next hop had read each copy (before its 250), by Message-ID, and when each kill was sent. */
const arrivals = new Map<string, number[]>();
const killedAt: number[] = [];
const messageIdOf = (raw: Buffer) => /Message-ID: <(\w+)@/.exec(raw.toString("latin1"))?.[1] ?? "";
const hop = await startNextHop({
  holdDataReply: async (received) => {
    const id = messageIdOf(received.raw);
    arrivals.set(id, [...(arrivals.get(id) ?? []), performance.now()]);
  },
});
let gateway: GatewayProcess | null = null;
try {
  const first = await startQueueGateway(dir, { nextHopPort: hop.port, logLevel: "warn" });
  const policy = first.policy;
  gateway = first.gateway;
  const started = Date.now();
  const senders = startSenders(gateway.port, clients, (acknowledged) => acknowledged >= total);
  const { acknowledged } = senders;
  for (let kill = 1; kill <= kills; kill++) {
    while (acknowledged.size < (total * kill) / (kills + 1)) await sleep(5);
    await sleep(Math.floor(random() * 100));
    senders.port = null;
    killedAt.push(performance.now());
    await gateway.kill();
    gateway = await startGatewayProcess(policy);
    senders.port = gateway.port;
    process.stderr.write(`kill ${kill} at ${acknowledged.size} acknowledged; restarted\n`);
  }
  await senders.done;

  const copies = new Map<string, number>();
  let counted = 0;
  let lastChange = Date.now();
  const delivered = (id: string) => copies.has(id);
  for (;;) {
    for (; counted < hop.messages.length; counted++) {
      const id = messageIdOf(hop.messages[counted].raw);
      if (id) copies.set(id, (copies.get(id) ?? 0) + 1);
      lastChange = Date.now();
    }
    const allThere = [...acknowledged].every(delivered);
    if (allThere && Date.now() - lastChange >= QUIET_MS) break;
    if (!allThere && Date.now() - lastChange > 60_000) break;
    await sleep(50);
  }
  const lost = [...acknowledged].filter((id) => !delivered(id));
  const duplicates = [...copies.values()].reduce((sum, n) => sum + n - 1, 0);
  const duplicatedMessages = [...copies.values()].filter((n) => n > 1).length;
  const firstCopyBeforeKillMs = [...copies]
    .filter(([, n]) => n > 1)
    .map(([id]) => {
      const first = arrivals.get(id)![0];
      const kill = killedAt.find((at) => at >= first);
      return kill === undefined ? null : Number((kill - first).toFixed(1));
    });
  const unacknowledgedDelivered = [...copies.keys()].filter((id) => !acknowledged.has(id)).length;
  const result = {
    seed,
    kills,
    clients,
    attempted: senders.attempted,
    acknowledged: acknowledged.size,
    deliveredDistinct: copies.size,
    lost: lost.length,
    duplicateCopies: duplicates,
    duplicatedMessages,
    duplicateShare: `${((100 * duplicates) / acknowledged.size).toFixed(2)} %`,
    firstCopyBeforeKillMs,
    deliveredWithoutAcknowledgement: unacknowledgedDelivered,
    seconds: Number(((Date.now() - started) / 1000).toFixed(1)),
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  process.exitCode = lost.length > 0 ? 1 : 0;
} finally {
  await gateway?.stop();
  await hop.close();
  await rm(dir, { recursive: true, force: true });
}
