/**
 * dmarc through the wire (with spf, dkim and auth-results before and after it): p=reject refuses
 * unaligned mail with 550 5.7.26, p=quarantine tags and reroutes, aligned mail passes, sp=, pct=
 * and strict alignment apply, bounces are judged by their From domain, trusted clients are only
 * recorded. Then Authentication-Results field by field, and the pure policy tables.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { TestDnsServer, ZoneData } from "../../core/testing/dns-server.js";
import { alignedDomain, applyPolicy, type PolicyInput } from "../../plugins/dmarc/evaluate.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { generateKey, type TestKey } from "../fixtures/keys.js";
import { type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { fieldValues, message, parseAuthResults, relayAs, sendAs, signed } from "../fixtures/sender-auth.js";

const SENDER_IP = "192.0.2.10";
const OTHER_IP = "192.0.2.20";
const iprevPlugin = fileURLToPath(new URL("../fixtures/plugins/iprev.ts", import.meta.url));

function zone(key: TestKey): ZoneData {
  return {
    "sender.test": { TXT: [`v=spf1 ip4:${SENDER_IP} -all`] },
    "mail.sender.test": { TXT: [`v=spf1 ip4:${SENDER_IP} -all`] },
    "_dmarc.sender.test": { TXT: ["v=DMARC1; p=reject"] },
    "rsa1._domainkey.sender.test": { TXT: [key.txt] },
    "relay.test": { TXT: [`v=spf1 ip4:${OTHER_IP} -all`] },
    "_dmarc.quarantine.test": { TXT: ["v=DMARC1; p=quarantine"] },
    "_dmarc.org.test": { TXT: ["v=DMARC1; p=none; sp=reject"] },
    "_dmarc.pct.test": { TXT: ["v=DMARC1; p=reject; pct=0"] },
    "_dmarc.strict.test": { TXT: ["v=DMARC1; p=reject; aspf=s"] },
    "mail.strict.test": { TXT: [`v=spf1 ip4:${OTHER_IP} -all`] },
  };
}

describe("dmarc", () => {
  let relay: DnsRelay;
  let dns: TestDnsServer;
  let hop: NextHop;
  let quarantineHop: NextHop;
  let gw: TestGateway;
  let key: TestKey;

  before(async () => {
    key = generateKey("rsa");
    quarantineHop = await startNextHop();
    relay = await startDnsRelay(
      zone(key),
      (hop) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test], networks: [10.0.0.0/8] }
pipeline:
  - plugin: spf
  - plugin: dkim
  - plugin: dmarc
    quarantine: { route: "smtp://127.0.0.1:${quarantineHop.port}" }
  - plugin: auth-results
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
    ({ dns, hop, gw } = relay);
  });
  after(async () => {
    await relay.stop();
    await quarantineHop.close();
  });

  async function send(input: { ip: string; from: string; headerFrom: string; helo?: string; data?: string }) {
    return sendAs(gw.port, input.ip, {
      helo: input.helo,
      from: input.from,
      to: ["rcpt@example.test"],
      data: input.data ?? message({ from: `<${input.headerFrom}>` }),
    });
  }

  function dmarcOf(raw: Buffer) {
    const [ar] = fieldValues(raw, "Authentication-Results");
    return parseAuthResults(ar).results.find((result) => result.method === "dmarc");
  }

  test("p=reject: unaligned mail is refused with 550 5.7.26", async () => {
    const replies = await send({ ip: OTHER_IP, from: "bounce@relay.test", headerFrom: "alice@sender.test" });
    assert.equal(replies.mail.code, 250, "SPF passes for relay.test");
    assert.equal(replies.data?.raw, "550 5.7.26 DMARC: unauthenticated mail from sender.test is refused by its policy");
  });

  test("aligned by SPF: accepted, dmarc=pass", async () => {
    const replies = await send({ ip: SENDER_IP, from: "alice@sender.test", headerFrom: "alice@sender.test" });
    assert.equal(replies.data?.code, 250);
    const dmarc = dmarcOf(hop.messages[hop.messages.length - 1].raw);
    assert.deepEqual(dmarc, {
      method: "dmarc",
      result: "pass",
      comment: "p=reject",
      properties: { "header.from": "sender.test" },
    });
  });

  test("aligned by DKIM (relaxed, From a subdomain using the organizational record): accepted", async () => {
    const data = await signed(message({ from: "<alice@news.sender.test>" }), {
      domain: "sender.test",
      selector: "rsa1",
      privateKey: key.privateKey,
    });
    const replies = await send({ ip: OTHER_IP, from: "bounce@relay.test", headerFrom: "", data });
    assert.equal(replies.data?.code, 250);
    assert.equal(dmarcOf(hop.messages[hop.messages.length - 1].raw)?.result, "pass");
  });

  test("p=quarantine: accepted, tagged and routed to the quarantine route", async () => {
    const before = { hop: hop.messages.length, quarantine: quarantineHop.messages.length };
    const replies = await send({ ip: OTHER_IP, from: "bounce@relay.test", headerFrom: "alice@quarantine.test" });
    assert.equal(replies.data?.code, 250);
    assert.equal(hop.messages.length, before.hop, "not delivered to the usual route");
    const [held] = (await quarantineHop.waitForMessages(before.quarantine + 1)).slice(before.quarantine);
    assert.deepEqual(fieldValues(held.raw, "X-Portcullis-Quarantine"), [
      "dmarc=fail policy=quarantine header.from=quarantine.test",
    ]);
    assert.deepEqual(dmarcOf(held.raw), {
      method: "dmarc",
      result: "fail",
      comment: "p=quarantine",
      properties: { "header.from": "quarantine.test", "policy.dmarc": "quarantine" },
    });
  });

  test("sp= applies to a subdomain without its own record", async () => {
    const replies = await send({ ip: OTHER_IP, from: "bounce@relay.test", headerFrom: "a@news.org.test" });
    assert.equal(replies.data?.code, 550);
    assert.match(replies.data?.raw ?? "", /^550 5\.7\.26 .* news\.org\.test /);
  });

  test("pct=0 steps p=reject down to quarantine", async () => {
    const before = quarantineHop.messages.length;
    const replies = await send({ ip: OTHER_IP, from: "bounce@relay.test", headerFrom: "a@pct.test" });
    assert.equal(replies.data?.code, 250);
    const [held] = (await quarantineHop.waitForMessages(before + 1)).slice(before);
    assert.deepEqual(dmarcOf(held.raw), {
      method: "dmarc",
      result: "fail",
      comment: "p=reject pct=0 override=pct",
      properties: { "header.from": "pct.test", "policy.dmarc": "quarantine" },
    });
  });

  test("aspf=s: an SPF pass for a subdomain does not align", async () => {
    const replies = await send({ ip: OTHER_IP, from: "bounce@mail.strict.test", headerFrom: "a@strict.test" });
    assert.equal(replies.mail.code, 250, "SPF passes for mail.strict.test");
    assert.equal(replies.data?.code, 550);
  });

  test("the null sender: SPF checks the HELO name, DMARC the From domain", async () => {
    const bounce = { from: "", headerFrom: "mailer-daemon@sender.test" };
    const accepted = await send({ ...bounce, ip: SENDER_IP, helo: "mail.sender.test" });
    assert.equal(accepted.data?.code, 250);
    const [ar] = fieldValues(hop.messages[hop.messages.length - 1].raw, "Authentication-Results");
    const results = parseAuthResults(ar).results;
    const spf = results.find((result) => result.method === "spf");
    assert.equal(spf?.result, "pass");
    assert.deepEqual(spf?.properties, { "smtp.helo": "mail.sender.test" });
    assert.deepEqual(results.find((result) => result.method === "dmarc")?.properties, { "header.from": "sender.test" });

    const refused = await send({ ...bounce, ip: OTHER_IP, helo: "mx.relay.test" });
    assert.equal(refused.mail.code, 250, "no SPF record for the HELO name: none");
    assert.match(refused.data?.raw ?? "", /^550 5\.7\.26 .* sender\.test /);
  });

  test("a client in relay.networks is recorded, not refused", async () => {
    const replies = await send({ ip: "10.0.0.5", from: "bounce@relay.test", headerFrom: "alice@sender.test" });
    assert.equal(replies.data?.code, 250);
    assert.deepEqual(dmarcOf(hop.messages[hop.messages.length - 1].raw), {
      method: "dmarc",
      result: "fail",
      comment: "p=reject override=trusted-client",
      properties: { "header.from": "sender.test", "policy.dmarc": "none" },
    });
  });

  test("onPolicyReject: quarantine holds p=reject failures instead of refusing them", async () => {
    const holding = await startGateway(
      `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test] }
pipeline:
  - plugin: spf
  - plugin: dmarc
    onPolicyReject: quarantine
    quarantine: { header: X-Held, route: "smtp://127.0.0.1:${quarantineHop.port}" }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
      { dnsServers: [dns.address] },
    );
    try {
      const held = await relayAs(holding.port, quarantineHop, OTHER_IP, {
        from: "bounce@relay.test",
        to: ["rcpt@example.test"],
        data: message({ from: "<alice@sender.test>" }),
      });
      assert.deepEqual(fieldValues(held.raw, "X-Held"), ["dmarc=fail policy=reject header.from=sender.test"]);
    } finally {
      await holding.stop();
    }
  });
});

describe("Authentication-Results", () => {
  let relay: DnsRelay;
  let hop: NextHop;
  let gw: TestGateway;
  let key: TestKey;

  before(async () => {
    key = generateKey("rsa");
    relay = await startDnsRelay(
      zone(key),
      (hop) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test] }
pipeline:
  - { plugin: ${iprevPlugin}, result: pass, name: mail.sender.test }
  - plugin: spf
  - plugin: dkim
  - plugin: dmarc
  - plugin: auth-results
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
    ({ hop, gw } = relay);
  });
  after(() => relay.stop());

  test("one field under our authserv-id, result by result; forged ones with our id are removed", async () => {
    const data = await signed(
      message({
        from: "Alice <alice@sender.test>",
        headers: [
          "Authentication-Results: gw.test; dmarc=pass header.from=sender.test",
          "Authentication-Results: (looks official) GW.TEST 1;\r\n spf=pass smtp.mailfrom=alice@sender.test",
          "Authentication-Results: mx.upstream.test; spf=pass smtp.mailfrom=alice@sender.test",
        ],
      }),
      { domain: "sender.test", selector: "rsa1", privateKey: key.privateKey },
    );
    const replies = await sendAs(gw.port, SENDER_IP, { from: "alice@sender.test", to: ["rcpt@example.test"], data });
    assert.equal(replies.data?.code, 250);
    const [delivered] = await hop.waitForMessages(1);

    const fields = fieldValues(delivered.raw, "Authentication-Results");
    assert.equal(fields.length, 2, "ours and the upstream one; both forgeries are gone");
    assert.equal(fields[1], "mx.upstream.test; spf=pass smtp.mailfrom=alice@sender.test");

    const ours = parseAuthResults(fields[0]);
    assert.equal(ours.authservId, "gw.test");
    assert.deepEqual(
      ours.results.map((result) => result.method),
      ["iprev", "spf", "dkim", "dmarc"],
    );
    const [iprev, spf, dkim, dmarc] = ours.results;
    assert.deepEqual(iprev, {
      method: "iprev",
      result: "pass",
      comment: "mail.sender.test",
      properties: { "policy.iprev": SENDER_IP },
    });
    assert.equal(spf.result, "pass");
    assert.equal(spf.comment, `gw.test: domain of alice@sender.test designates ${SENDER_IP} as permitted sender`);
    assert.deepEqual(spf.properties, { "smtp.mailfrom": "alice@sender.test" });
    assert.equal(dkim.result, "pass");
    assert.equal(dkim.comment, null);
    assert.deepEqual(Object.keys(dkim.properties), ["header.d", "header.s", "header.a", "header.b"]);
    assert.equal(dkim.properties["header.d"], "sender.test");
    assert.equal(dkim.properties["header.s"], "rsa1");
    assert.equal(dkim.properties["header.a"], "rsa-sha256");
    assert.equal(dkim.properties["header.b"], /b=([^;\s]{8})/.exec(data)?.[1]);
    assert.deepEqual(dmarc, {
      method: "dmarc",
      result: "pass",
      comment: "p=reject",
      properties: { "header.from": "sender.test" },
    });

    // The field is folded one result per line, each continuation starting with a tab.
    const raw = delivered.raw.toString("latin1");
    const start = raw.indexOf("Authentication-Results: gw.test;");
    const block = raw.slice(start, raw.indexOf("\r\n", raw.indexOf("dmarc=", start)));
    assert.equal(block.split("\r\n\t").length, 5);
  });
});

describe("dmarc decisions (pure)", () => {
  test("alignment: relaxed by organizational domain, strict by exact domain", () => {
    const table: Array<[string, string, string[], boolean, string | null]> = [
      ["sender.test", "sender.test", ["sender.test"], false, "sender.test"],
      ["news.sender.test", "sender.test", ["sender.test"], false, "sender.test"],
      ["sender.test", "sender.test", ["mail.sender.test"], false, "mail.sender.test"],
      ["sender.test", "sender.test", ["notsender.test"], false, null],
      ["sender.test", "sender.test", ["mail.sender.test"], true, null],
      ["news.sender.test", "sender.test", ["sender.test"], true, null],
      ["sender.test", "sender.test", ["other.test", "SENDER.test"], true, "SENDER.test"],
    ];
    for (const [from, org, domains, strict, expected] of table) {
      assert.equal(alignedDomain(from, org, domains, strict), expected, `${from} ${domains} strict=${strict}`);
    }
  });

  test("policy: pct sampling steps down, overrides win, reject may become quarantine", () => {
    const base: PolicyInput = {
      policy: "reject",
      pct: 100,
      sample: 0.5,
      arcTrusted: false,
      trustedClient: false,
      rejectAs: "reject",
    };
    const table: Array<[Partial<PolicyInput>, ReturnType<typeof applyPolicy>]> = [
      [{}, { applied: "reject", override: null }],
      [{ rejectAs: "quarantine" }, { applied: "quarantine", override: null }],
      [
        { pct: 50, sample: 0.49 },
        { applied: "reject", override: null },
      ],
      [
        { pct: 50, sample: 0.5 },
        { applied: "quarantine", override: "pct" },
      ],
      [
        { policy: "quarantine", pct: 0 },
        { applied: "none", override: "pct" },
      ],
      [
        { policy: "none", pct: 0 },
        { applied: "none", override: null },
      ],
      [{ arcTrusted: true }, { applied: "none", override: "arc" }],
      [
        { trustedClient: true, arcTrusted: true },
        { applied: "none", override: "trusted-client" },
      ],
    ];
    for (const [change, expected] of table) {
      assert.deepEqual(applyPolicy({ ...base, ...change }), expected, JSON.stringify(change));
    }
  });
});
