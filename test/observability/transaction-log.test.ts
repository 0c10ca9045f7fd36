/**
 * The transaction log file: rotation by size and by the age of the first record (on an
 * injected clock), the number of rotated files kept, reopening an existing file, and hashed local
 * parts that still replay domain rules.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import {
  hashLocalPart,
  RECORD_VERSION,
  TransactionLog,
  type TransactionRecord,
} from "../../core/observability/transaction-log.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-txlog-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const DAY = 86_400_000;

function record(n: number, now: number): TransactionRecord {
  return {
    v: RECORD_VERSION,
    at: new Date(now).toISOString(),
    tx: `c${n}.1`,
    cid: `c${n}`,
    client: { ip: "192.0.2.1", port: 40000, family: 4 },
    local: { ip: "127.0.0.1", port: 25 },
    role: "mx",
    hashed: false,
    sender: { address: "Alice@sender.test", local: "Alice", domain: "sender.test" },
    steps: [
      {
        phase: "rcpt",
        helo: "client.test",
        name: null,
        trusted: false,
        tls: false,
        authUser: null,
        recipient: { address: "bob@example.test", local: "bob", domain: "example.test" },
        findings: {},
        score: 0,
        tags: [],
        ran: [],
        skipped: [],
        decision: null,
        rules: [],
      },
    ],
    outcome: "accepted",
    decidedBy: null,
    reply: "250 2.0.0 Ok",
    recipients: ["bob@example.test"],
    rejectedRecipients: [{ to: "carol@example.test", reply: "550 5.1.1 No" }],
    tags: [],
    route: null,
    score: 0,
  };
}

const lineBytes = Buffer.byteLength(`${JSON.stringify(record(1, 0))}\n`);
const options = (extra: Partial<ConstructorParameters<typeof TransactionLog>[0]> = {}) => ({
  path: join(dir, "log", "tx.jsonl"),
  maxSize: 100 * lineBytes,
  maxAge: DAY,
  keep: 7,
  hashLocalParts: false,
  ...extra,
});

async function lines(file: string): Promise<TransactionRecord[]> {
  return (await readFile(file, "utf8"))
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as TransactionRecord);
}

test("a file that would grow past maxSize is rotated before the line; only `keep` rotated files stay", async () => {
  let now = Date.parse("2025-03-01T00:00:00Z");
  const log = new TransactionLog(options({ maxSize: 2 * lineBytes, keep: 2 }), { now: () => now });
  for (let n = 1; n <= 7; n++) {
    log.write(record(n, now));
    now += 1000;
  }
  log.close();
  const files = (await readdir(join(dir, "log"))).sort();
  // 7 lines, two per file: 4 files made, the current one and the 2 newest rotated ones kept.
  assert.deepEqual(files, ["tx.2025-03-01T00-00-04-000Z.jsonl", "tx.2025-03-01T00-00-06-000Z.jsonl", "tx.jsonl"]);
  assert.deepEqual(
    (await lines(join(dir, "log", files[0]))).map((r) => r.tx),
    ["c3.1", "c4.1"],
  );
  assert.deepEqual(
    (await lines(join(dir, "log", "tx.jsonl"))).map((r) => r.tx),
    ["c7.1"],
  );
});

test("a file whose first record is older than maxAge is rotated, also after a restart", async () => {
  let now = Date.parse("2025-03-01T00:00:00Z");
  const clock = { now: () => now };
  const first = new TransactionLog(options(), clock);
  first.write(record(1, now));
  first.close();
  now += DAY - 1;
  const second = new TransactionLog(options(), clock); // reads the age from the file's first record
  second.write(record(2, now));
  assert.deepEqual(await readdir(join(dir, "log")), ["tx.jsonl"]);
  now += 1;
  second.write(record(3, now));
  second.close();
  assert.deepEqual((await readdir(join(dir, "log"))).sort(), ["tx.2025-03-02T00-00-00-000Z.jsonl", "tx.jsonl"]);
  assert.deepEqual(
    (await lines(join(dir, "log", "tx.jsonl"))).map((r) => r.tx),
    ["c3.1"],
  );
});

test("hashLocalParts records envelope local parts as stable hashes, domains readable", async () => {
  const log = new TransactionLog(options({ hashLocalParts: true }), { now: () => 0 });
  log.write(record(1, 0));
  log.write(record(2, 0));
  log.close();
  const [a, b] = await lines(join(dir, "log", "tx.jsonl"));
  assert.equal(a.hashed, true);
  assert.equal(a.sender?.local, hashLocalPart("Alice"));
  assert.match(a.sender.local, /^[0-9a-f]{16}$/);
  assert.equal(a.sender?.address, `${hashLocalPart("Alice")}@sender.test`);
  assert.equal(a.sender?.domain, "sender.test");
  assert.deepEqual(a.steps[0].recipient, {
    address: `${hashLocalPart("bob")}@example.test`,
    local: hashLocalPart("bob"),
    domain: "example.test",
  });
  assert.deepEqual(a.recipients, [`${hashLocalPart("bob")}@example.test`]);
  assert.deepEqual(a.rejectedRecipients, [{ to: `${hashLocalPart("carol")}@example.test`, reply: "550 5.1.1 No" }]);
  assert.deepEqual(b.sender, a.sender);
  assert.ok(!JSON.stringify(a).includes("Alice"));
});
