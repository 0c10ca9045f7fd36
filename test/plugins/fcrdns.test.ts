/**
 * fcrdns: the pure judgement by table, then every DNS case through the wire against an in-process
 * DNS server: the reply the client sees, the findings, iprev and the Received header's name.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { DnsOutcome } from "../../core/dns/lookup.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { candidateNames, type FcrdnsFacts, iprevOf, judgeFcrdns } from "../../plugins/fcrdns/check.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { connectAs } from "../fixtures/smtp-client.js";
import { lastFinding, tryMail } from "./connection-checks.js";

const answer = (...value: string[]): DnsOutcome<string[]> => ({ kind: "answer", value });
const none: DnsOutcome<string[]> = { kind: "none", code: "ENOTFOUND" };
const servfail: DnsOutcome<string[]> = { kind: "error", code: "ESERVFAIL" };

describe("fcrdns judgement", () => {
  test("candidate names: valid host names only, each once, at most max", () => {
    assert.deepEqual(candidateNames(["A.example.test", "a.example.test", "bad_name.test", "b.test", "c.test"], 2), [
      "a.example.test",
      "b.test",
    ]);
    assert.deepEqual(candidateNames(["in\r\njected.test", "-x.test"], 10), []);
  });

  const ip = "192.0.2.10";
  const cases: Array<{
    name: string;
    ptr: DnsOutcome<string[]>;
    forward?: Record<string, DnsOutcome<string[]>>;
    want: Pick<FcrdnsFacts, "result" | "confirmed">;
    iprev: string;
  }> = [
    {
      name: "a name pointing back confirms",
      ptr: answer("mail.test"),
      forward: { "mail.test": answer("192.0.2.9", "192.0.2.10") },
      want: { result: "pass", confirmed: "mail.test" },
      iprev: "pass",
    },
    {
      name: "a name pointing elsewhere fails",
      ptr: answer("mail.test"),
      forward: { "mail.test": answer("198.51.100.1") },
      want: { result: "fail", confirmed: null },
      iprev: "fail",
    },
    {
      name: "a name with no address fails",
      ptr: answer("mail.test"),
      forward: { "mail.test": none },
      want: { result: "fail", confirmed: null },
      iprev: "fail",
    },
    {
      name: "no PTR is none (iprev permerror)",
      ptr: none,
      want: { result: "none", confirmed: null },
      iprev: "permerror",
    },
    {
      name: "PTR SERVFAIL is temperror",
      ptr: servfail,
      want: { result: "temperror", confirmed: null },
      iprev: "temperror",
    },
    {
      name: "a forward error without any match is temperror",
      ptr: answer("a.test", "b.test"),
      forward: { "a.test": answer("198.51.100.1"), "b.test": servfail },
      want: { result: "temperror", confirmed: null },
      iprev: "temperror",
    },
    {
      name: "a match wins over another name's error",
      ptr: answer("a.test", "b.test"),
      forward: { "a.test": servfail, "b.test": answer("192.0.2.10") },
      want: { result: "pass", confirmed: "b.test" },
      iprev: "pass",
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const names = c.ptr.kind === "answer" ? candidateNames(c.ptr.value, 10) : [];
      const facts = judgeFcrdns(ip, c.ptr, names, new Map(Object.entries(c.forward ?? {})), "A");
      assert.equal(facts.result, c.want.result);
      assert.equal(facts.confirmed, c.want.confirmed);
      assert.equal(iprevOf(facts).result, c.iprev);
    });
  }

  test("IPv6 addresses compare in any spelling", () => {
    const facts = judgeFcrdns(
      "2001:db8::10",
      answer("v6.test"),
      ["v6.test"],
      new Map([["v6.test", answer("2001:0db8:0000:0000:0000:0000:0000:0010")]]),
      "AAAA",
    );
    assert.equal(facts.result, "pass");
  });
});

describe("fcrdns through the wire", () => {
  let relay: DnsRelay;
  let dns: TestDnsServer;
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    relay = await startDnsRelay(
      {
        "10.2.0.192.in-addr.arpa": { PTR: ["mail.sender.test"] },
        "mail.sender.test": { A: ["192.0.2.10"] },
        "11.2.0.192.in-addr.arpa": { PTR: ["elsewhere.sender.test"] },
        "elsewhere.sender.test": { A: ["198.51.100.7"] },
        "13.2.0.192.in-addr.arpa": "servfail",
        "14.2.0.192.in-addr.arpa": "timeout",
        "15.2.0.192.in-addr.arpa": { PTR: ["flaky.sender.test"] },
        "flaky.sender.test": "servfail",
        "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa": { PTR: ["v6.sender.test"] },
        "v6.sender.test": { AAAA: ["2001:db8::10"] },
        "16.2.0.192.in-addr.arpa": { PTR: ["cached.sender.test"] },
        "cached.sender.test": { A: ["192.0.2.16"] },
      },
      (hop) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test] }
pipeline:
  - plugin: fcrdns
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
    ({ dns, hop, gw } = relay);
  });
  after(() => relay.stop());

  test("PTR with a matching A passes and names the client in the Received header", async () => {
    const client = await connectAs(gw.port, "192.0.2.10");
    const result = await client.transaction({
      from: "a@sender.test",
      to: ["b@example.test"],
      data: "Subject: hi\r\n\r\nhello\r\n",
    });
    await client.quit();
    assert.equal(result.mail.code, 250);
    assert.equal(result.data?.code, 250);
    assert.deepEqual(lastFinding<FcrdnsFacts>(gw, "fcrdns"), {
      result: "pass",
      names: ["mail.sender.test"],
      confirmed: "mail.sender.test",
      errors: [],
    });
    const [message] = await hop.waitForMessages(1);
    assert.match(message.raw.toString(), /^Received: from client\.test \(mail\.sender\.test \[192\.0\.2\.10\]\)/);
    assert.deepEqual(gw.transactions().at(-1)?.client, { ip: "192.0.2.10", name: "mail.sender.test" });
  });

  test("PTR whose name points elsewhere fails: 550 5.7.25 at MAIL", async () => {
    const { greeting, mail } = await tryMail(gw.port, "192.0.2.11");
    assert.equal(greeting.code, 220);
    assert.equal(mail.raw, "550 5.7.25 Client host rejected: reverse DNS does not match [192.0.2.11]");
    assert.deepEqual(lastFinding<FcrdnsFacts>(gw, "fcrdns"), {
      result: "fail",
      names: ["elsewhere.sender.test"],
      confirmed: null,
      errors: [],
    });
  });

  test("no PTR is none: 450 4.7.25", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.12");
    assert.equal(mail.raw, "450 4.7.25 Client host rejected: cannot find your hostname [192.0.2.12]");
    assert.equal(lastFinding<FcrdnsFacts>(gw, "fcrdns").result, "none");
  });

  for (const [ip, code, what] of [
    ["192.0.2.13", "ESERVFAIL", "PTR SERVFAIL"],
    ["192.0.2.14", "ETIMEOUT", "PTR that never answers"],
  ] as const) {
    test(`${what} is temperror: 451 4.4.3`, async () => {
      const { mail } = await tryMail(gw.port, ip);
      assert.equal(mail.raw, `451 4.4.3 Client host rejected: reverse DNS lookup failed for [${ip}], try again later`);
      assert.deepEqual(lastFinding<FcrdnsFacts>(gw, "fcrdns"), {
        result: "temperror",
        names: [],
        confirmed: null,
        errors: [{ type: "PTR", name: ip, code }],
      });
    });
  }

  test("forward SERVFAIL is temperror", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.15");
    assert.equal(mail.code, 451);
    assert.deepEqual(lastFinding<FcrdnsFacts>(gw, "fcrdns").errors, [
      { type: "A", name: "flaky.sender.test", code: "ESERVFAIL" },
    ]);
  });

  test("an IPv6 client is confirmed by AAAA", async () => {
    const { mail } = await tryMail(gw.port, "2001:db8::10");
    assert.equal(mail.code, 250);
    assert.equal(lastFinding<FcrdnsFacts>(gw, "fcrdns").confirmed, "v6.sender.test");
  });

  test("repeated connections from one IP cost one PTR and one A query while fresh", async () => {
    for (let i = 0; i < 5; i++) assert.equal((await tryMail(gw.port, "192.0.2.16")).mail.code, 250);
    assert.equal(dns.count("16.2.0.192.in-addr.arpa", "PTR"), 1);
    assert.equal(dns.count("cached.sender.test", "A"), 1);
  });
});

describe("fcrdns: the policy decides", () => {
  test("on: maps results to other actions, e.g. a missing PTR only scored", async () => {
    const dns = await startDnsServer({});
    const gw = await startGateway(
      `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
relay: { domains: [example.test] }
pipeline:
  - plugin: fcrdns
    on: { none: { score: 3 } }
routes: [{ to: discard }]
`,
      { dnsServers: [dns.address] },
    );
    try {
      const { mail } = await tryMail(gw.port, "192.0.2.12");
      assert.equal(mail.code, 250);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(dns.count("12.2.0.192.in-addr.arpa", "PTR"), 1);
      assert.equal(lastFinding<FcrdnsFacts>(gw, "fcrdns").result, "none");
    } finally {
      await gw.stop();
      await dns.close();
    }
  });
});
