/**
 * Header injection through the wire: what a client chooses (HELO name, addresses, an XCLIENT
 * name) reaches the Received header only as safe characters, on the header's own lines.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { TestGateway } from "../fixtures/gateway.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

/** The Received field the next hop got (unfolded), and the header section after it. */
function received(raw: Buffer): { field: string; rest: string } {
  const text = raw.toString("latin1");
  const match = /^Received:(?:[^\r]*)(?:\r\n\t[^\r]*)*\r\n/.exec(text);
  assert.ok(match, text.slice(0, 300));
  return { field: match[0], rest: text.slice(match[0].length) };
}

describe("header injection", () => {
  let relay: Relay;
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    relay = await startRelay(
      (hop) => `
version: 1
server: { hostname: gw.test, xclient: true }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
    );
    ({ hop, gw } = relay);
  });
  after(() => relay.stop());

  const cases: Record<string, { helo: string; to: string; expect: RegExp; absent: RegExp }> = {
    "comment, clause and angle characters in HELO": {
      helo: 'evil(by);with<x>"q"\\@mx.example',
      to: "b@example.test",
      expect: /^Received: from evilbywithxqmx\.example \(\[127\.0\.0\.1\]\)/,
      absent: /from [^ ]*[()<>;"\\@]/,
    },
    "a HELO of 300 characters is cut to 255": {
      helo: "a".repeat(300),
      to: "b@example.test",
      expect: /^Received: from a{255}\s/,
      absent: /a{256}/,
    },
    "a recipient with a quoted local part is left out of `for`": {
      helo: "ok.example",
      to: '"x;\\"y(z)"@example.test',
      expect: /\tid [A-Za-z0-9._-]+; /,
      absent: /for </,
    },
  };

  for (const [name, input] of Object.entries(cases)) {
    test(name, async () => {
      const client = await SmtpTestClient.connect(gw.port);
      const result = await client.transaction({
        helo: input.helo,
        from: "a@sender.test",
        to: [input.to],
        data: "Subject: inject\r\n\r\nbody\r\n",
      });
      assert.equal(result.data?.code, 250, JSON.stringify(result));
      await client.quit();
      const [message] = await hop.waitForMessages(1);
      hop.messages.length = 0;
      const { field, rest } = received(message.raw);
      assert.match(field, input.expect);
      assert.doesNotMatch(field, input.absent);
      // Nothing the client sent started a header line of its own.
      assert.ok(rest.startsWith("Subject: inject\r\n"), rest.slice(0, 200));
    });
  }

  test("an XCLIENT NAME with CR/LF smuggled in xtext is refused; the HELO after it is sanitised", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO proxy.test");
    assert.equal((await client.command("XCLIENT NAME=a+0D+0AX-Evil:+1")).code, 501);
    assert.match((await client.command("XCLIENT ADDR=192.0.2.10")).raw, /^220 /);
    await client.command("EHLO x;y.example");
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
    assert.equal((await client.command("RCPT TO:<b@example.test>")).code, 250);
    assert.equal((await client.command("DATA")).code, 354);
    client.write("Subject: inject\r\n\r\nbody\r\n.\r\n");
    assert.equal((await client.reply()).code, 250);
    await client.quit();
    const [message] = await hop.waitForMessages(1);
    hop.messages.length = 0;
    const { field } = received(message.raw);
    assert.match(field, /^Received: from xy\.example \(\[192\.0\.2\.10\]\)/);
    assert.doesNotMatch(field, /X-Evil/);
  });
});
