/**
 * Rule header actions on a delivered message, through the wire: `addHeader` reaches the next hop,
 * and `removeHeader` strips the named field in any letter case.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type Relay, startRelay } from "../../fixtures/relay.js";
import { fieldValues, headerFields } from "../../fixtures/sender-auth.js";
import { SmtpTestClient } from "../../fixtures/smtp-client.js";

describe("rule header actions on a delivered message", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay(
      (hop) => `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
rules:
  - { name: tag, action: { addHeader: "X-Tag: yes" } }
  - { name: strip, action: { removeHeader: "X-Remove-Me" } }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
  });
  after(() => relay.stop());

  test("the next hop gets the added field and none of the removed one, whatever its case", async () => {
    const client = await SmtpTestClient.connect(relay.gw.port);
    const result = await client.transaction({
      from: "a@sender.test",
      to: ["b@example.test"],
      data: [
        "X-Remove-Me: first",
        "From: <a@sender.test>",
        "x-remove-me: second",
        "To: <b@example.test>",
        "X-REMOVE-ME: third",
        "Subject: rule headers",
        "X-Remove-Me-Not: kept",
        "Message-ID: <rh1@sender.test>",
        "",
        "X-Remove-Me: in the body, not a header",
        "",
      ].join("\r\n"),
    });
    await client.quit();
    assert.equal(result.data?.code, 250);
    const [received] = await relay.hop.waitForMessages(1);
    assert.deepEqual(fieldValues(received.raw, "X-Tag"), ["yes"]);
    const names = headerFields(received.raw).map((field) => field.name.toLowerCase());
    assert.ok(!names.includes("x-remove-me"), `removed field still there: ${names.join(", ")}`);
    assert.deepEqual(fieldValues(received.raw, "X-Remove-Me-Not"), ["kept"]);
    assert.deepEqual(fieldValues(received.raw, "Subject"), ["rule headers"]);
    assert.match(received.raw.toString("latin1"), /\r\n\r\nX-Remove-Me: in the body, not a header\r\n$/);
  });
});
