import assert from "node:assert/strict";
import { appendFile, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { createLogger } from "../../core/observability/log.js";
import { newQueueId, Spool, SpoolUnavailable } from "../../core/queue/spool.js";

const log = createLogger("silent");
const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function spoolDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-spool-"));
  dirs.push(dir);
  return dir;
}

function input(n: number, body = `body ${n}\r\n`) {
  return {
    envelope: {
      origin: `tx${n}`,
      from: "a@x.test",
      dsn: {},
      recipients: [
        { address: `r${n}@y.test`, route: { to: ["mx"] } },
        { address: `s${n}@y.test`, route: { to: ["mx"] } },
      ],
      arrivedAt: 1_000 + n,
    },
    head: Buffer.from(`Received: by gw.test; ${n}\r\n`),
    source: Buffer.from(`Subject: ${n}\r\n\r\n${body}`),
    bodyStart: 0,
    nextAt: 1_000 + n,
  };
}

async function text(spool: Spool, id: string): Promise<string> {
  return (await spool.readAll(spool.get(id)!)).toString();
}

describe("newQueueId", () => {
  it("is unique within one millisecond (across refills of its random pool) and sorts by time", () => {
    const ids = Array.from({ length: 5000 }, () => newQueueId(1_000_000));
    assert.equal(new Set(ids).size, ids.length);
    assert.ok(ids.every((id) => /^[0-9A-Z]{19}$/.test(id)));
    assert.ok(newQueueId(999_999) < ids[0] && ids[0] < newQueueId(1_000_001));
  });
});

describe("Spool", () => {
  it("group-commits concurrent stores: one fsync round covers many messages", async () => {
    const spool = await Spool.open(await spoolDir(), { log });
    const entries = await Promise.all(Array.from({ length: 50 }, (_, n) => spool.store(input(n))));
    assert.equal(spool.entries().length, 50);
    const { flushes, writes } = spool.commitStats;
    assert.equal(writes, 50);
    assert.ok(flushes < 10, `${flushes} fsync rounds for 50 messages`);
    assert.equal(await text(spool, entries[7].envelope.id), "Received: by gw.test; 7\r\nSubject: 7\r\n\r\nbody 7\r\n");
    await spool.close();
  });

  it("reads back after a restart: state, completions, and a torn tail that was never acknowledged", async () => {
    const dir = await spoolDir();
    const first = await Spool.open(dir, { log });
    const [a, b, c] = [await first.store(input(1)), await first.store(input(2)), await first.store(input(3))];
    a.state = [{ status: "delivered", reply: { code: 250, enhanced: "2.0.0", text: "ok" } }, { status: "pending" }];
    a.attempts = 2;
    a.nextAt = 99_999;
    await first.update(a);
    await first.complete(b);
    await first.close();
    // A crash in the middle of writing a record: half a frame at the end of the segment.
    const [segment] = (await readdir(join(dir, "queue"))).filter((name) => name.endsWith(".seg"));
    await appendFile(join(dir, "queue", segment), Buffer.from("PCQ1\u0000\u0000\u0001"));
    // And in the middle of a state line.
    await appendFile(join(dir, "queue", segment.replace(".seg", ".state")), '0badc0de {"id":');

    const second = await Spool.open(dir, { log });
    assert.deepEqual(
      second.entries().map((e) => e.envelope.id),
      [a.envelope.id, c.envelope.id],
    );
    const again = second.get(a.envelope.id)!;
    assert.deepEqual(
      again.state.map((s) => s.status),
      ["delivered", "pending"],
    );
    assert.equal(again.attempts, 2);
    assert.equal(again.nextAt, 99_999);
    assert.equal(await text(second, c.envelope.id), "Received: by gw.test; 3\r\nSubject: 3\r\n\r\nbody 3\r\n");
    // New records go to a new segment; the old one goes when its last message is done.
    await second.store(input(4));
    await second.complete(second.get(a.envelope.id)!);
    await second.complete(second.get(c.envelope.id)!);
    assert.ok(!(await readdir(join(dir, "queue"))).includes(segment), "the finished segment was deleted");
    await second.close();
  });

  it("keeps large bodies as files of their own, and removes them when done", async () => {
    const dir = await spoolDir();
    const spool = await Spool.open(dir, { log });
    const bodyPath = join(dir, "tmp", "incoming.eml");
    await writeFile(bodyPath, "Subject: big\r\n\r\nlarge body\r\n");
    const source = { path: bodyPath, size: 28, headers: [], headerLength: 16 } as never;
    const entry = await spool.store({ ...input(9), source, head: Buffer.from("X-Added: 1\r\n"), bodyStart: 0 });
    assert.deepEqual(await readdir(join(dir, "large")), [entry.envelope.id]);
    assert.equal(await text(spool, entry.envelope.id), "X-Added: 1\r\nSubject: big\r\n\r\nlarge body\r\n");
    await spool.complete(entry);
    assert.deepEqual(await readdir(join(dir, "large")), []);
    await spool.close();
  });

  it("serves a message's first read from memory, later ones from its segment file", async () => {
    const dir = await spoolDir();
    const spool = await Spool.open(dir, { log });
    const entry = await spool.store(input(5));
    const expected = "Received: by gw.test; 5\r\nSubject: 5\r\n\r\nbody 5\r\n";
    // With the segment file out of the way, only the in-memory copy can answer.
    const [segment] = (await readdir(join(dir, "queue"))).filter((name) => name.endsWith(".seg"));
    await rename(join(dir, "queue", segment), join(dir, segment));
    assert.equal(await text(spool, entry.envelope.id), expected);
    assert.equal(await text(spool, entry.envelope.id), expected, "each read is a new stream");
    // After its first attempt (an update), the message is read from disk again.
    await spool.update(entry);
    await assert.rejects(text(spool, entry.envelope.id), { code: "ENOENT" });
    await rename(join(dir, segment), join(dir, "queue", segment));
    assert.equal(await text(spool, entry.envelope.id), expected);
    await spool.close();
  });

  it("keeps a schedule: due messages come up in due order, moved and finished ones only where they are now", async () => {
    const dir = await spoolDir();
    const spool = await Spool.open(dir, { log });
    const [early, late, done, moved] = [
      await spool.store({ ...input(1), nextAt: 100 }),
      await spool.store({ ...input(2), nextAt: 300 }),
      await spool.store({ ...input(3), nextAt: 50 }),
      await spool.store({ ...input(4), nextAt: 80 }),
    ];
    await spool.complete(done);
    moved.nextAt = 250;
    await spool.update(moved);
    assert.equal(spool.nextDueAt(), 50, "the finished message's old place is still the earliest, and skipped");
    assert.equal(spool.takeDue(90), undefined, "nothing is due at 90: the finished one is gone, the moved one moved");
    assert.equal(spool.takeDue(200)?.envelope.id, early.envelope.id);
    assert.equal(spool.takeDue(200), undefined);
    assert.deepEqual(
      [spool.takeDue(1000)?.envelope.id, spool.takeDue(1000)?.envelope.id, spool.takeDue(1000)],
      [moved.envelope.id, late.envelope.id, undefined],
    );
    // A message taken off the schedule is back on it after its next update (a deferral), and a
    // restarted spool schedules everything it recovers.
    late.nextAt = 400;
    await spool.update(late);
    assert.equal(spool.nextDueAt(), 400);
    await spool.close();
    const reopened = await Spool.open(dir, { log });
    assert.deepEqual(
      [reopened.takeDue(1000)?.envelope.id, reopened.takeDue(1000)?.envelope.id, reopened.takeDue(1000)?.envelope.id],
      [early.envelope.id, moved.envelope.id, late.envelope.id],
    );
    await reopened.close();
  });

  it("refuses to store past its limit, and to open a spool another live process holds", async () => {
    const dir = await spoolDir();
    const spool = await Spool.open(dir, { log, limitBytes: 200 });
    await spool.store(input(1));
    await assert.rejects(spool.store(input(2, "x".repeat(300))), SpoolUnavailable);
    assert.equal(spool.entries().length, 1, "nothing half-stored");
    await spool.close();
    await writeFile(join(dir, "lock"), `${process.ppid}\n`);
    await assert.rejects(Spool.open(dir, { log }), /in use by process/);
  });

  it("rotates segments under a steady stream of stores without failing one, and keeps every record across a restart", async () => {
    const dir = await spoolDir();
    // Every flush fills a segment, so stores keep arriving while writes to the one just left are in flight.
    const spool = await Spool.open(dir, { log, segmentBytes: 1 });
    const stores: Array<Promise<unknown>> = [];
    for (let n = 0; n < 200; n++) {
      stores.push(spool.store(input(n)));
      if (n % 10 === 9) await new Promise((resolve) => setImmediate(resolve));
    }
    const outcomes = await Promise.allSettled(stores);
    const failures = outcomes.flatMap((o) => (o.status === "rejected" ? [(o.reason as Error).message] : []));
    assert.deepEqual(failures, []);
    await spool.close();
    const reopened = await Spool.open(dir, { log });
    assert.equal(reopened.entries().length, 200);
    await reopened.close();
  });
});
