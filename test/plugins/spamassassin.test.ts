/**
 * spamassassin through the wire, against a real spamd started for this file with its stock rules
 * and network tests off: GTUBE is tagged by default and refused past `rejectAbove` or when the
 * policy says so; a clean message passes with SpamAssassin's headers and without the ones a sender
 * forged; a message over maxSize is delivered unscanned with a finding saying so; spamd stopped
 * yields the declared onError and a log line naming the scanner, and scanning resumes when it is back.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { before, describe, test } from "node:test";
import type { SpamassassinFacts } from "../../plugins/spamassassin/index.js";
import { parseSpamdReply, spamHeaderFields } from "../../plugins/spamassassin/spamd.js";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import { eventually } from "../fixtures/eventually.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { fieldValues } from "../fixtures/sender-auth.js";
import { GTUBE, startSpamd, type TestSpamd } from "../fixtures/spamd.js";
import { lastFinding } from "./connection-checks.js";
import { scanPolicy, send, textMessage } from "./content-scan.js";

const cleanups = cleanupAfterAll();

/** Headers a sender adds to talk filters behind the gateway out of their verdict. */
const FORGED = ["X-Spam-Flag: NO", "X-Spam-Status: No, score=-100.0 required=5.0 tests=none", "X-Spam-Score: -100.0"];

const gtube = () => textMessage("Test spam mail (GTUBE)", `This is the GTUBE test.\r\n\r\n${GTUBE}\r\n`, FORGED);
const clean = () =>
  textMessage("Minutes of Tuesday's meeting", "Hello,\r\nthe minutes are below, as agreed.\r\nRegards\r\n", FORGED);

describe("spamassassin", () => {
  let spamd: TestSpamd;
  let hop: NextHop;

  before(async () => {
    spamd = await startSpamd();
    cleanups.add(() => spamd.close());
    hop = await cleanups.hop();
  });

  const gateway = (options: string) =>
    cleanups.gateway(
      scanPolicy(hop.port, `  - plugin: spamassassin\n    timeout: 30s\n    address: "${spamd.address}"\n${options}`),
    );

  /** Sends `data`, expects it delivered, and returns what the next hop received. */
  async function deliver(port: number, data: string) {
    const count = hop.messages.length;
    const reply = await send(port, data);
    assert.equal(reply.code, 250, reply.raw);
    return (await hop.waitForMessages(count + 1))[count].raw;
  }

  test("GTUBE is tagged by default: X-Spam-Flag YES, its score and rules; forged X-Spam-* fields are gone", async () => {
    const gw = await gateway("");
    const raw = await deliver(gw.port, gtube());
    const finding = lastFinding<SpamassassinFacts>(gw, "spamassassin");
    assert.equal(finding.status, "scanned");
    assert.equal(finding.spam, true);
    assert.equal(finding.threshold, 5);
    assert.ok(finding.score !== null && finding.score >= 1000, `score ${finding.score}`);
    assert.ok(finding.rules.includes("GTUBE"), finding.rules.join());
    assert.deepEqual(fieldValues(raw, "X-Spam-Flag"), ["YES"]);
    assert.deepEqual(fieldValues(raw, "X-Spam-Score"), [finding.score.toFixed(1)]);
    const [status, ...more] = fieldValues(raw, "X-Spam-Status");
    assert.deepEqual(more, []);
    assert.match(
      status.replace(/\r\n\t/g, ""),
      new RegExp(`^Yes, score=${finding.score.toFixed(1)} required=5\\.0 tests=.*\\bGTUBE\\b`),
    );
    const [summary] = gw.transactions().slice(-1) as Array<{ trace: Array<{ plugin: string; verdict: string }> }>;
    assert.equal(summary.trace.find((entry) => entry.plugin === "spamassassin")?.verdict, "spam");
  });

  test("GTUBE is refused with 554 5.7.1 at rejectAbove, or when the policy rejects spam", async () => {
    const above = await gateway("    rejectAbove: 15\n");
    const refused = await send(above.port, gtube());
    assert.equal(refused.code, 554, refused.raw);
    assert.match(refused.raw, /^554 5\.7\.1 Message rejected as spam \(score \d+(\.\d+)?\)$/);

    const byPolicy = await gateway("    on: { spam: reject }\n");
    const rejected = await send(byPolicy.port, gtube());
    assert.equal(rejected.code, 554, rejected.raw);
    assert.match(rejected.raw, /^554 5\.7\.1 /);

    // A message under both thresholds passes either gateway.
    await deliver(above.port, clean());
    await deliver(byPolicy.port, clean());
  });

  test("a clean message passes with X-Spam-Status No and its score, and no X-Spam-Flag", async () => {
    const gw = await gateway("    rejectAbove: 15\n");
    const raw = await deliver(gw.port, clean());
    const finding = lastFinding<SpamassassinFacts>(gw, "spamassassin");
    assert.equal(finding.status, "scanned");
    assert.equal(finding.spam, false);
    assert.ok(finding.score !== null && finding.score < 5, `score ${finding.score}`);
    assert.deepEqual(fieldValues(raw, "X-Spam-Flag"), []);
    assert.deepEqual(fieldValues(raw, "X-Spam-Score"), [finding.score.toFixed(1)]);
    const status = fieldValues(raw, "X-Spam-Status");
    assert.equal(status.length, 1);
    assert.match(status[0], /^No, score=-?\d+\.\d required=5\.0 tests=/);
  });

  test("user: spamd checks the message for that user (the SPAMC/1.5 User header)", async () => {
    const gw = await gateway("    user: portcullis-scan\n");
    await deliver(gw.port, clean());
    await eventually(
      () => /checking message .* for portcullis-scan:\d+/.test(spamd.log()),
      "spamd logs the message checked for portcullis-scan",
    );
  });

  test("a message over maxSize is delivered unscanned, with a finding saying so", async () => {
    const gw = await gateway("    maxSize: 1KB\n");
    const raw = await deliver(gw.port, textMessage("Large", `${GTUBE}\r\n${"a longer line of text\r\n".repeat(100)}`));
    const finding = lastFinding<SpamassassinFacts>(gw, "spamassassin");
    assert.equal(finding.status, "skipped");
    assert.match(finding.reason ?? "", /^\d+ bytes, larger than maxSize 1000$/);
    assert.equal(finding.score, null);
    assert.deepEqual(fieldValues(raw, "X-Spam-Status"), []);
  });

  test("spamd stopped: the declared onError and a log line naming spamassassin; restarted: scanning resumes", async () => {
    const gw = await gateway('    onError: { defer: "451 4.7.1 Spam scanner unavailable, try again later" }\n');
    await spamd.stop();
    try {
      const down = await send(gw.port, gtube());
      assert.equal(down.raw, "451 4.7.1 Spam scanner unavailable, try again later");
      const failure = gw.logs.find(
        (line) => line.plugin === "spamassassin" && line.msg === "hook failed; applying onError",
      );
      assert.ok(failure, "the core logs the failed hook under the plugin's name");
      assert.match(String(failure.err), /^spamd at [\d.]+:\d+: .*ECONNREFUSED/);
    } finally {
      await spamd.start();
    }
    const raw = await deliver(gw.port, gtube());
    assert.deepEqual(fieldValues(raw, "X-Spam-Flag"), ["YES"]);
  });
});

describe("a spamd that never answers", () => {
  test("the deadline yields onError, and the connection to the daemon is closed then, not left open", async () => {
    const held = new Set<Socket>();
    let closed = 0;
    const silent = createServer((socket) => {
      held.add(socket);
      socket.resume(); // reads the request, answers nothing
      socket.on("error", () => undefined);
      socket.on("close", () => closed++);
    });
    silent.listen(0, "127.0.0.1");
    await once(silent, "listening");
    cleanups.add(async () => {
      for (const socket of held) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    });
    const hop = await cleanups.hop();
    const { port } = silent.address() as AddressInfo;
    const gw = await cleanups.gateway(
      scanPolicy(hop.port, `  - plugin: spamassassin\n    timeout: 300ms\n    address: "127.0.0.1:${port}"\n`),
    );
    const reply = await send(gw.port, gtube());
    assert.match(reply.raw, /^451 4\.3\.0 /);
    const failure = gw.logs.find(
      (line) => line.plugin === "spamassassin" && line.msg === "hook failed; applying onError",
    );
    assert.equal(failure?.err, "timeout");
    assert.equal(held.size, 1, "spamd was asked");
    await eventually(() => closed === 1, "the gateway closes its connection to the hung spamd");
  });
});

describe("spamd replies and SpamAssassin's header fields", () => {
  const reply = (text: string) => parseSpamdReply(Buffer.from(text, "latin1"));

  test("a SYMBOLS reply gives the verdict, score, threshold and rule names", () => {
    const body = "GTUBE,MISSING_DATE,NO_RELAYS";
    assert.deepEqual(
      reply(`SPAMD/1.1 0 EX_OK\r\nContent-length: ${body.length}\r\nSpam: True ; 1002.5 / 5.0\r\n\r\n${body}`),
      { spam: true, score: 1002.5, threshold: 5, rules: ["GTUBE", "MISSING_DATE", "NO_RELAYS"] },
    );
    assert.deepEqual(reply("SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.1 / 5.0\r\n\r\n"), {
      spam: false,
      score: -0.1,
      threshold: 5,
      rules: [],
    });
  });

  test("spamd's errors, replies cut short and replies without a verdict are errors", () => {
    assert.match(
      String(reply("SPAMD/1.0 76 Bad header line: Content-length\r\n")),
      /spamd answered 76 Bad header line/,
    );
    assert.match(
      String(reply("SPAMD/1.1 0 EX_OK\r\nContent-length: 30\r\nSpam: True ; 9.0 / 5.0\r\n\r\nGTUBE")),
      /cut short/,
    );
    assert.match(String(reply("SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n")), /no valid Spam header/);
    assert.match(String(reply("")), /not a spamd reply/);
  });

  test("rule names that are not SpamAssassin's never reach a header field; long lists fold", () => {
    const body = "GTUBE,EVIL\r\nX-Injected: yes,OK_RULE";
    const parsed = reply(
      `SPAMD/1.1 0 EX_OK\r\nContent-length: ${body.length}\r\nSpam: True ; 6.0 / 5.0\r\n\r\n${body}`,
    );
    assert.ok(!(parsed instanceof Error));
    assert.deepEqual(parsed.rules, ["GTUBE", "OK_RULE"]);
    const rules = Array.from({ length: 12 }, (_, i) => `SOME_LONGER_RULE_NAME_${i}`);
    const [flag, score, status] = spamHeaderFields({ spam: true, score: 6, threshold: 5, rules });
    assert.deepEqual([flag, score], ["X-Spam-Flag: YES", "X-Spam-Score: 6.0"]);
    const lines = status.split("\r\n");
    assert.ok(lines.length > 1, "folded");
    for (const line of lines) assert.ok(line.length <= 100, `line of ${line.length}: ${line}`);
    for (const line of lines.slice(1)) assert.match(line, /^\t\S/);
    assert.equal(status.replace(/\r\n\t/g, "").split("tests=")[1], rules.join(","));
  });
});
