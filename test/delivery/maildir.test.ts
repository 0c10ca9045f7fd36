import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { deliverMaildir } from "../../core/delivery/maildir.js";

describe("deliverMaildir", () => {
  let base: string;
  before(async () => {
    base = await mkdtemp(join(tmpdir(), "portcullis-maildir-"));
  });
  after(() => rm(base, { recursive: true, force: true }));

  const envelope = { from: "sender@a.test", to: ["one@b.test", "two@b.test"] };

  it("creates the Maildir, writes one file into new/ with Return-Path first, leaves tmp/ empty", async () => {
    const root = join(base, "inbox");
    const message = Buffer.concat([
      Buffer.from("From: sender@a.test\r\nSubject: local\r\n\r\n.dot line\r\n"),
      Buffer.from([0xe9, 0xff, 0x0d, 0x0a]),
    ]);
    const result = await deliverMaildir(
      root,
      envelope,
      Readable.from([message.subarray(0, 10), message.subarray(10)]),
      {
        returnPath: "sender@a.test",
      },
    );
    assert.deepEqual(
      result.recipients.map((r) => [r.recipient, r.status, r.reply.code, r.reply.enhanced]),
      [
        ["one@b.test", "delivered", 250, "2.0.0"],
        ["two@b.test", "delivered", 250, "2.0.0"],
      ],
    );
    assert.equal(result.nextHop, `maildir:${root}`);
    const files = await readdir(join(root, "new"));
    assert.equal(files.length, 1);
    assert.match(files[0], /^\d+\.M\d+P\d+Q\d+\.[^/:]+$/);
    assert.match(result.recipients[0].reply.text, new RegExp(files[0].replace(/\./g, "\\.")));
    assert.deepEqual(await readdir(join(root, "tmp")), []);
    assert.deepEqual(await readdir(join(root, "cur")), []);
    const stored = await readFile(join(root, "new", files[0]));
    assert.ok(stored.equals(Buffer.concat([Buffer.from("Return-Path: <sender@a.test>\r\n"), message])));
  });

  it("gives every message its own file, and writes <> for the null sender", async () => {
    const root = join(base, "many");
    for (let i = 0; i < 3; i++) {
      await deliverMaildir(root, envelope, Readable.from([Buffer.from(`Subject: ${i}\r\n\r\n`)]), { returnPath: "" });
    }
    const files = await readdir(join(root, "new"));
    assert.equal(files.length, 3);
    const first = await readFile(join(root, "new", files[0]), "latin1");
    assert.match(first, /^Return-Path: <>\r\nSubject: \d\r\n/);
  });

  it("keeps a hostile return path on one line", async () => {
    const root = join(base, "hostile");
    await deliverMaildir(root, envelope, Readable.from([Buffer.from("Subject: x\r\n\r\n")]), {
      returnPath: "a@b.test>\r\nX-Injected: yes\u010d\u010aX-Latin1: \u0140",
    });
    const [file] = await readdir(join(root, "new"));
    const stored = await readFile(join(root, "new", file), "utf8");
    // U+010D and U+010A are CR and LF in their low byte: written as UTF-8, they stay letters.
    assert.equal(stored, "Return-Path: <a@b.test X-Injected: yes\u010d\u010aX-Latin1: \u0140>\r\nSubject: x\r\n\r\n");
  });

  it("defers every recipient when the Maildir cannot be written", async () => {
    const notADirectory = join(base, "file");
    await writeFile(notADirectory, "x");
    const result = await deliverMaildir(notADirectory, envelope, Readable.from([Buffer.from("x")]), { returnPath: "" });
    assert.deepEqual(
      result.recipients.map((r) => [r.recipient, r.status, r.reply.code, r.reply.enhanced]),
      envelope.to.map((to) => [to, "deferred", 451, "4.3.0"]),
    );
    assert.ok(result.recipients.every((r) => r.reply.text.startsWith("Local delivery failed")));
  });

  it("defers and leaves nothing behind when the message stream breaks", async () => {
    const root = join(base, "broken");
    const broken = new Readable({
      read() {
        this.push(Buffer.from("Subject: half\r\n"));
        this.destroy(new Error("spool read failed"));
      },
    });
    const result = await deliverMaildir(root, envelope, broken, { returnPath: "sender@a.test" });
    assert.equal(result.recipients[0].status, "deferred");
    assert.deepEqual(await readdir(join(root, "tmp")), []);
    assert.deepEqual(await readdir(join(root, "new")), []);
  });
});
