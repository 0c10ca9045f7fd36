/**
 * The delivery worker against a real spool and a next hop that refuses connections: a message
 * whose place on the schedule came up while its own attempt was still writing down its deferral
 * (the group commit's fsync outlasting the retry wait) is not lost from the schedule.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import type { Router } from "../../core/delivery/routes.js";
import { createResolver } from "../../core/dns/resolver.js";
import { createLogger } from "../../core/observability/log.js";
import { type QueueEntry, Spool } from "../../core/queue/spool.js";
import { DeliveryWorker, type WorkerSettings } from "../../core/queue/worker.js";
import { manualClock } from "../fixtures/clock.js";
import { eventually } from "../fixtures/eventually.js";
import { closedPort } from "../fixtures/next-hop.js";

const log = createLogger("silent");
const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

test("a message whose place came up during its own deferral's write is scheduled again when the attempt ends", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-worker-"));
  dirs.push(dir);
  const port = await closedPort();
  const clock = manualClock(1_000_000);
  const spool = await Spool.open(dir, { log });
  // The deferral's write waits for the test: the place it has just made can come up meanwhile.
  let entered: () => void = () => {};
  const inUpdate = new Promise<void>((resolve) => {
    entered = resolve;
  });
  let release: () => void = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const write = spool.update.bind(spool);
  spool.update = async (entry: QueueEntry) => {
    const written = write(entry);
    entered();
    await released;
    return written;
  };
  const settings: WorkerSettings = {
    hostname: "gw.test",
    retry: { schedule: [60_000], maxAgeMs: 3_600_000, jitter: 0 },
    delivery: { hostname: "gw.test", timeoutMs: 2_000, dns: createResolver() },
    router: {} as Router, // only for DSNs, and nothing here fails for good
    bounces: { suppressSuspect: true, unauthenticated: "headers" },
  };
  const worker = new DeliveryWorker({ spool, settings: () => settings, log, clock });
  const entry = await spool.store({
    envelope: {
      origin: "tx1",
      from: "a@sender.test",
      dsn: {},
      recipients: [{ address: "b@example.test", route: { to: [`smtp://127.0.0.1:${port}`] } }],
      arrivedAt: clock.now(),
    },
    head: Buffer.from("Received: by gw.test\r\n"),
    source: Buffer.from("Subject: stuck?\r\n\r\nbody\r\n"),
    bodyStart: 0,
    nextAt: clock.now(),
  });
  try {
    worker.start();
    await inUpdate;
    assert.equal(entry.attempts, 1);
    assert.equal(entry.nextAt, 1_060_000);
    // Past the retry time while the attempt is still busy writing: a wake takes that place now.
    clock.advance(120_000);
    worker.wake();
    release();
    await eventually(() => entry.attempts === 2, "a second attempt once the first has ended");
  } finally {
    await worker.stop();
    await spool.close();
  }
});
