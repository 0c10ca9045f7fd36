/**
 * Proxy mode at its edges: a next hop that accepts TCP but never greets (the delivery deadline
 * turns it into a 451 4.4.x, nothing acknowledged), and a message past the 256 KiB spill threshold
 * (written to `<spool>/tmp`, forwarded byte for byte, the temporary file removed).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { startSilentServer } from "../fixtures/next-hop.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

describe("proxy mode: a next hop that never greets", () => {
  let silent: Awaited<ReturnType<typeof startSilentServer>>;
  let gw: TestGateway;
  before(async () => {
    silent = await startSilentServer();
    gw = await startGateway(`
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes:
  - { to: "smtp://127.0.0.1:${silent.port}" }
delivery: { mode: proxy, timeout: 500ms }
`);
  });
  after(async () => {
    await gw.stop();
    await silent.close();
  });

  // No clock is read here: without the deadline the transaction would hang and the test time out.
  test("the client gets 451 4.4.x once the deadline passes; nothing is acknowledged", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    const result = await client.transaction({
      from: "a@sender.test",
      to: ["b@example.test"],
      data: "From: <a@sender.test>\r\nSubject: hung\r\nMessage-ID: <hung@sender.test>\r\n\r\nhello\r\n",
    });
    await client.quit().catch(() => client.destroy());
    assert.equal(result.rcpts[0].code, 250);
    assert.match(result.data?.raw ?? "", /^451 4\.4\.\d+ /);
    const summary = gw.transactions().at(-1)!;
    assert.notEqual(summary.outcome, "accepted");
    assert.ok(!String(summary.reply).startsWith("250"), String(summary.reply));
  });
});

describe("proxy mode: a message past the spill threshold", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay(
      (hop) => `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
delivery: { mode: proxy, spool: ./spool }
`,
    );
  });
  after(() => relay.stop());

  test("arrives byte for byte and leaves <spool>/tmp empty", async () => {
    // ~600 KiB of base64 lines, some starting with a dot (dot-stuffing across the spill boundary).
    const lines: string[] = [];
    for (let i = 0; lines.join("\r\n").length < 600 * 1024; i++) {
      const line = randomBytes(57).toString("base64");
      lines.push(i % 97 === 0 ? `.${line}` : line);
    }
    const body = Buffer.from(
      `From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: large\r\nMessage-ID: <large@sender.test>\r\n\r\n${lines.join("\r\n")}\r\n`,
      "latin1",
    );
    assert.ok(body.length > 256 * 1024);
    const client = await SmtpTestClient.connect(relay.gw.port);
    const result = await client.transaction({ from: "a@sender.test", to: ["b@example.test"], data: body });
    await client.quit();
    assert.equal(result.data?.code, 250, result.data?.raw);
    const [received] = await relay.hop.waitForMessages(1);
    // The gateway prepends its Received field; everything after it is the client's bytes.
    const raw = received.raw;
    assert.ok(raw.length > body.length);
    assert.match(raw.subarray(0, raw.length - body.length).toString("latin1"), /^Received: [\s\S]*\r\n$/);
    assert.ok(raw.subarray(raw.length - body.length).equals(body), "the message differs from what was sent");
    const tmp = join(relay.gw.dir, "spool", "tmp");
    // The folder exists only because the message was spilled into it (core/smtp/message.ts creates it then).
    assert.deepEqual(await readdir(tmp), []);
  });
});
