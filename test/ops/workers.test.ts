/**
 * Acceptance: with `server.workers: 2`, N messages are each delivered exactly once, and
 * killing a worker while it holds queued messages does not strand them: its replacement resumes
 * its spool. The supervisor's /metrics sums the workers and /readyz asks each of them.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { eventually } from "../fixtures/eventually.js";
import { freePortOn, privateLoopback } from "../fixtures/private-address.js";
import { type ChildGateway, type Sink, sendOne, startChild, startSink } from "./child.js";
import { scrape } from "./scrape.js";

const MESSAGES = 20;

describe("two workers", () => {
  let dir: string;
  let gateway: ChildGateway;
  let sink: Sink;
  let base: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "portcullis-workers-"));
    sink = await startSink();
    // The supervisor binds the metrics port from its policy: an address of its own keeps the port ours.
    const metricsHost = privateLoopback();
    const metricsPort = await freePortOn(metricsHost);
    base = `http://${metricsHost}:${metricsPort}`;
    const file = join(dir, "policy.yaml");
    await writeFile(
      file,
      `
version: 1
server: { hostname: mx.gateway.test, workers: 2 }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${sink.port}" }]
delivery: { mode: queue, spool: ./spool, retry: { schedule: [100ms], maxAge: 1h } }
observability: { metrics: "${metricsHost}:${metricsPort}" }
`,
    );
    gateway = await startChild(file);
    await eventually(
      async () => (await fetch(`${base}/readyz`).catch(() => null))?.status === 200,
      "both workers ready",
    );
  });
  after(async () => {
    if (gateway.child.exitCode === null) gateway.child.kill("SIGTERM");
    assert.equal(await gateway.exited, 0);
    await sink.close();
    await rm(dir, { recursive: true, force: true });
  });

  const workerPids = (slot: number) =>
    gateway
      .logs()
      .filter((line) => line.event === "worker" && line.slot === slot && line.msg === "worker started")
      .map((line) => line.pid as number);

  test("each message is delivered exactly once, also after a worker holding queued mail was killed", async () => {
    // The next hop is down: every message stays queued in the spool of the worker that took it.
    const ids = Array.from({ length: MESSAGES }, (_, i) => `<w-${i}@sender.test>`);
    for (const id of ids) assert.equal(await sendOne(gateway.port, id), 250);
    const queued = await scrape(base);
    assert.equal(queued.value("portcullis_queue_messages"), MESSAGES, "summed over both workers");
    assert.equal(queued.value("portcullis_transactions_total", { outcome: "accepted" }), MESSAGES);
    // The cluster spread the connections: both slots' spools hold messages.
    for (const queue of [join(dir, "spool/queue"), join(dir, "spool/workers/2/queue")]) {
      assert.ok(
        (await readdir(queue)).some((name) => name.endsWith(".seg")),
        `${queue} holds messages`,
      );
    }

    const [victim] = workerPids(2);
    process.kill(victim, "SIGKILL");
    await eventually(() => workerPids(2).length === 2, "a replacement for slot 2");
    await eventually(async () => (await fetch(`${base}/readyz`)).status === 200, "the replacement is ready");

    sink.up();
    await eventually(
      async () => (await scrape(base)).value("portcullis_queue_messages") === 0,
      "both spools delivered",
    );
    assert.deepEqual([...sink.ids].sort(), [...ids].sort(), "every message exactly once");
  });

  test("SIGTERM stops both workers and the supervisor exits 0", async () => {
    gateway.child.kill("SIGTERM");
    assert.equal(await gateway.exited, 0);
    assert.equal(gateway.logs().filter((line) => line.msg === "stopped").length, 2);
  });
});
