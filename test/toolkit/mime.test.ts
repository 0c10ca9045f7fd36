/**
 * The message toolkit (core/toolkit/mime.ts): decoded values reach a plugin, through the test kit
 * and through a real gateway; a message is parsed at most once, only when a hook asks, with the
 * attachment content it holds capped.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { runPlugin, runPolicy } from "../../core/engine/testkit.js";
import { ATTACHMENT_CONTENT_LIMIT, parseMessage } from "../../core/index.js";
import { SpooledMessage } from "../../core/smtp/message.js";
import { mimeParser } from "../../core/toolkit/mime.js";
import { largeMessage } from "../fixtures/large-message.js";
import subjectWords from "../fixtures/plugins/subject-words.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const subjectWordsPath = fileURLToPath(new URL("../fixtures/plugins/subject-words.ts", import.meta.url));
const recorderPath = fileURLToPath(new URL("../fixtures/plugins/recorder.ts", import.meta.url));

const BASE64_SUBJECT = "Subject: =?UTF-8?B?V2luIHRoZSBsb3R0ZXJ5?=";
// Q-encoded and folded over two lines: "Claim your lottery prize".
const FOLDED_Q_SUBJECT = "Subject: =?UTF-8?Q?Claim_your?=\r\n =?UTF-8?Q?_lottery_prize?=";

function mail(subject: string, body = "hello\r\n"): string {
  return `From: "=?UTF-8?Q?J=C3=BCrgen?=" <j@sender.test>\r\nTo: <b@example.test>\r\n${subject}\r\n\r\n${body}`;
}

const envelope = { ip: "192.0.2.1", from: "j@sender.test", to: ["b@example.test"] };

function fromBuffer(content: string | Buffer) {
  return { stream: () => Readable.from([Buffer.from(content)]) };
}

describe("parseMessage", () => {
  test("decodes encoded words, folded lines, addresses, bodies and URLs", async () => {
    const parsed = await parseMessage(
      fromBuffer(
        [
          FOLDED_Q_SUBJECT,
          'From: "=?UTF-8?Q?J=C3=BCrgen?=" <j@sender.test>',
          "To: a@example.test, Team: b@example.test, c@example.test;",
          "Received: from one",
          "Received: from two",
          "X-Note: =?ISO-8859-1?Q?caf=E9?=",
          // The euro sign's three UTF-8 bytes split over two words.
          "X-Split: =?UTF-8?B?4oI=?= =?UTF-8?B?rA==?= sign",
          'Content-Type: multipart/alternative; boundary="b"',
          "",
          "--b",
          "Content-Type: text/plain",
          "",
          "See https://example.test/a, then <https://example.test/b>.",
          "--b",
          "Content-Type: text/html",
          "",
          '<a href="https://example.test/c?x=1&amp;y=2">c</a>',
          "--b--",
          "",
        ].join("\r\n"),
      ),
    );
    assert.equal(parsed.subject, "Claim your lottery prize");
    assert.deepEqual(parsed.from, [{ name: "Jürgen", address: "j@sender.test" }]);
    assert.deepEqual(
      parsed.to.map((mailbox) => mailbox.address),
      ["a@example.test", "b@example.test", "c@example.test"],
    );
    assert.deepEqual(parsed.headers.get("received"), ["from one", "from two"]);
    assert.deepEqual(parsed.headers.get("x-note"), ["café"]);
    assert.deepEqual(parsed.headers.get("x-split"), ["€ sign"]);
    assert.deepEqual(parsed.headers.get("subject"), ["Claim your lottery prize"]);
    assert.match(parsed.text, /^See https/);
    assert.match(parsed.html, /<a href/);
    assert.deepEqual(parsed.urls, [
      "https://example.test/a",
      "https://example.test/b",
      "https://example.test/c?x=1&y=2",
    ]);
  });

  test("holds small attachments' content and only the metadata and size of large ones", async () => {
    const parsed = await parseMessage(fromBuffer(largeMessage(10 * 2 ** 20)));
    assert.equal(parsed.subject, "Win the lottery");
    const [large, , , small] = parsed.attachments;
    assert.equal(parsed.attachments.length, 4);
    assert.equal(large.filename, "file1.bin");
    assert.equal(large.contentType, "application/octet-stream");
    assert.ok(large.size > ATTACHMENT_CONTENT_LIMIT, `size ${large.size}`);
    assert.equal(large.content, null);
    assert.deepEqual(small, {
      filename: "note.txt",
      contentType: "text/plain",
      size: 13,
      content: Buffer.from("a small note\n"),
    });
  });
});

describe("a subject filter plugin through the test kit", () => {
  for (const [kind, subject] of [
    ["base64", BASE64_SUBJECT],
    ["folded Q", FOLDED_Q_SUBJECT],
  ]) {
    test(`sees the ${kind} encoded subject decoded and rejects on its word`, async () => {
      const result = await runPlugin(subjectWords, { words: ["lottery"] }, { ...envelope, message: mail(subject) });
      assert.equal(result.outcome, "rejected");
      assert.equal(result.reply?.code, 550);
      assert.match(String((result.facts["subject-words"] as { subject: string }).subject), /lottery/);
    });
  }

  test("lets a subject without the word through", async () => {
    const result = await runPlugin(
      subjectWords,
      { words: ["lottery"] },
      { ...envelope, message: mail("Subject: =?UTF-8?B?TWVldGluZyBub3Rlcw==?=") },
    );
    assert.equal(result.outcome, "accepted");
    assert.deepEqual(result.facts["subject-words"], { subject: "Meeting notes", attachments: 0 });
  });
});

describe("parsed at most once, only when asked", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "portcullis-mime-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  async function policy(name: string, entries: string[]): Promise<string> {
    const file = join(dir, name);
    await writeFile(
      file,
      [
        "version: 1",
        "server: { hostname: gateway.test }",
        'relay: { networks: ["0.0.0.0/0"] }',
        "pipeline:",
        ...entries.map((entry) => `  - ${entry}`),
        "routes:",
        "  - { to: discard }",
        "",
      ].join("\n"),
    );
    return file;
  }

  test("two hooks asking about a 10 MB message with attachments share one parse", async (t) => {
    const parse = t.mock.method(mimeParser, "parse");
    const file = await policy("two.yaml", [
      `{ plugin: ${subjectWordsPath}, words: [unrelated] }`,
      `{ plugin: ${subjectWordsPath}, words: [lottery] }`,
    ]);
    const result = await runPolicy(file, { ...envelope, message: largeMessage(10 * 2 ** 20) });
    assert.equal(result.outcome, "rejected", "the second entry saw the decoded subject");
    assert.deepEqual(
      result.trace.filter((entry) => entry.phase === "data").map((entry) => entry.verdict),
      [null, "matched"],
    );
    assert.deepEqual(result.facts["subject-words"], { subject: "Win the lottery", attachments: 4 });
    assert.equal(parse.mock.callCount(), 1);
  });

  test("a message no hook asks about is not parsed", async (t) => {
    const parse = t.mock.method(mimeParser, "parse");
    const file = await policy("none.yaml", [`{ plugin: ${recorderPath}, id: only }`]);
    const result = await runPolicy(file, { ...envelope, message: largeMessage(2 ** 20) });
    assert.equal(result.outcome, "accepted");
    assert.equal(parse.mock.callCount(), 0);
  });
});

describe("a subject filter plugin through the wire", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay(
      (hop) => `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
pipeline:
  - { plugin: ${subjectWordsPath}, words: [unrelated] }
  - { plugin: ${subjectWordsPath}, words: [lottery] }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
  });
  after(() => relay.stop());

  test("a folded Q-encoded subject is refused at DATA, a plain one relayed", async () => {
    const client = await SmtpTestClient.connect(relay.gw.port);
    try {
      const refused = await client.transaction({
        from: "j@sender.test",
        to: ["b@example.test"],
        data: mail(FOLDED_Q_SUBJECT),
      });
      assert.equal(refused.data?.raw, "550 5.7.1 Subject not accepted");
      const relayed = await client.transaction({
        from: "j@sender.test",
        to: ["b@example.test"],
        data: mail("Subject: notes"),
      });
      assert.equal(relayed.data?.code, 250);
    } finally {
      await client.quit().catch(() => client.destroy());
    }
  });

  test("a 10 MB message, spooled to disk, is parsed once from the spool file for both hooks", async (t) => {
    const parse = t.mock.method(mimeParser, "parse");
    const client = await SmtpTestClient.connect(relay.gw.port);
    try {
      const result = await client.transaction({
        from: "j@sender.test",
        to: ["b@example.test"],
        data: largeMessage(10 * 2 ** 20),
      });
      assert.equal(result.data?.raw, "550 5.7.1 Subject not accepted");
    } finally {
      await client.quit().catch(() => client.destroy());
    }
    assert.equal(parse.mock.callCount(), 1);
    const [message] = parse.mock.calls[0].arguments;
    assert.ok(message instanceof SpooledMessage && message.path, "the message was read from its spool file");
  });
});
