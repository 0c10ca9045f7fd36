/**
 * The real sender-authentication plugins feeding each other through the wire (no stand-ins):
 * fcrdns's iprev in auth-results' Authentication-Results, and greylist's SPF+DMARC skip reading
 * the real spf and dmarc findings.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { ZoneData } from "../../core/testing/dns-server.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { fieldValues, message, parseAuthResults, relayAs, sendAs } from "../fixtures/sender-auth.js";

const SENDER_IP = "192.0.2.10";
const STRANGER_IP = "198.51.100.7";

const zone: ZoneData = {
  "10.2.0.192.in-addr.arpa": { PTR: ["mail.sender.test"] },
  "mail.sender.test": { A: [SENDER_IP], TXT: [`v=spf1 ip4:${SENDER_IP} -all`] },
  "7.100.51.198.in-addr.arpa": { PTR: ["host.stranger.test"] },
  "host.stranger.test": { A: [STRANGER_IP] },
  "sender.test": { TXT: [`v=spf1 ip4:${SENDER_IP} -all`] },
  "_dmarc.sender.test": { TXT: ["v=DMARC1; p=none"] },
  "soft.test": { TXT: ["v=spf1 ~all"] },
  "_dmarc.soft.test": { TXT: ["v=DMARC1; p=none"] },
  "_dmarc.other.test": { TXT: ["v=DMARC1; p=none"] },
};

describe("fcrdns → auth-results: iprev from the real plugin", () => {
  let relay: DnsRelay;
  before(async () => {
    relay = await startDnsRelay(
      zone,
      (hop) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
dns: { timeout: 500ms }
relay: { domains: [example.test] }
pipeline:
  - plugin: fcrdns
  - plugin: spf
  - plugin: dmarc
  - plugin: auth-results
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
  });
  after(() => relay.stop());

  test("Authentication-Results carries iprev=pass (name) policy.iprev=<ip> next to spf and dmarc", async () => {
    const received = await relayAs(relay.gw.port, relay.hop, SENDER_IP, {
      helo: "mail.sender.test",
      from: "a@sender.test",
      to: ["rcpt@example.test"],
      data: message({ from: "<a@sender.test>" }),
    });
    const values = fieldValues(received.raw, "Authentication-Results");
    assert.equal(values.length, 1, values.join("\n"));
    assert.match(values[0], /iprev=pass \(mail\.sender\.test\) policy\.iprev=192\.0\.2\.10/);
    const ours = parseAuthResults(values[0]);
    assert.equal(ours.authservId, "gw.test");
    assert.deepEqual(
      ours.results.map((r) => r.method),
      ["iprev", "spf", "dmarc"],
    );
    assert.deepEqual(ours.results[0], {
      method: "iprev",
      result: "pass",
      comment: "mail.sender.test",
      properties: { "policy.iprev": SENDER_IP },
    });
    assert.equal(ours.results[1].result, "pass");
    assert.equal(ours.results[2].result, "pass");
  });
});

describe("greylist skip.when with the real spf and dmarc", () => {
  let relay: DnsRelay;
  before(async () => {
    relay = await startDnsRelay(
      zone,
      (hop) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
dns: { timeout: 500ms }
relay: { domains: [example.test] }
pipeline:
  - plugin: spf
  - plugin: dmarc
  - plugin: greylist
    at: data
    skip:
      when:
        - { spf.result: pass, dmarc.result: pass }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
  });
  after(() => relay.stop());

  test("SPF and DMARC pass: delivered on the first attempt, not greylisted", async () => {
    const received = await relayAs(relay.gw.port, relay.hop, SENDER_IP, {
      from: "a@sender.test",
      to: ["rcpt@example.test"],
      data: message({ from: "<a@sender.test>" }),
    });
    assert.deepEqual(received.to, ["rcpt@example.test"]);
  });

  async function greylisted(input: { from: string; headerFrom: string }) {
    const before = relay.hop.messages.length;
    const replies = await sendAs(relay.gw.port, SENDER_IP, {
      from: input.from,
      to: ["rcpt@example.test"],
      data: message({ from: `<${input.headerFrom}>` }),
    });
    assert.equal(replies.mail.code, 250);
    assert.equal(replies.rcpts[0].code, 250);
    assert.match(replies.data?.raw ?? "", /^451 4\.7\.1 Greylisted, please try again in \d+s$/);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(relay.hop.messages.length, before, "nothing delivered");
    assert.equal(relay.gw.transactions().at(-1)?.decidedBy, "plugin:greylist");
  }

  test("SPF softfail (and so no DMARC pass): 451 4.7.1 at the end of DATA", async () => {
    await greylisted({ from: "a@soft.test", headerFrom: "a@soft.test" });
  });

  test("SPF passes but DMARC fails (unaligned From): still greylisted, both must pass", async () => {
    await greylisted({ from: "a@sender.test", headerFrom: "a@other.test" });
  });
});
