/**
 * The replay memo (plugins/shared/sender-auth/replay.ts) as SPF uses it (plugins/spf/evaluate.ts), against the UDP test DNS server through the shared
 * resolver with its cache off, so every check really asks again: a repeated check is answered from
 * the memo; any changed answer (the record, an included record) is evaluated afresh; a DNS failure
 * is never remembered; a "no such name" answer is; the sender is part of the question.
 */
import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { createResolver, type DnsResolver } from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer, type ZoneData } from "../../core/testing/dns-server.js";
import { type SpfEvaluator, type SpfQuestion, spfEvaluator } from "../../plugins/spf/evaluate.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { message, sendAs } from "../fixtures/sender-auth.js";

const question = (sender: string, ip = "192.0.2.10"): SpfQuestion => ({
  ip,
  helo: "client.test",
  sender,
  mta: "gw.test",
  maxLookups: 10,
  maxVoidLookups: 2,
});

describe("SPF replay memo", () => {
  let server: TestDnsServer;
  let dns: DnsResolver;
  let evaluator: SpfEvaluator;

  before(async () => {
    server = await startDnsServer();
    dns = createResolver({ servers: [server.address], cacheSize: 0, timeoutMs: 500 });
  });
  after(() => server.close());
  beforeEach(() => {
    evaluator = spfEvaluator();
  });

  const result = async (q: SpfQuestion) => String((await evaluator.check(q, dns)).status.result);

  test("a repeated check is answered from the memo, after asking DNS the same questions", async () => {
    server.load({ "one.test": { TXT: ["v=spf1 ip4:192.0.2.0/24 -all"] } });
    server.resetQueries();
    assert.equal(await result(question("a@one.test")), "pass");
    assert.equal(await result(question("a@one.test")), "pass");
    assert.equal(evaluator.evaluations, 1);
    assert.equal(server.count("one.test", "TXT"), 2);
    assert.equal(await result(question("a@one.test", "198.51.100.1")), "fail", "another client is another question");
    assert.equal(await result(question("b@one.test")), "pass");
    assert.equal(evaluator.evaluations, 3, "so is another sender");
  });

  test("a changed record, or a changed included record, is evaluated afresh", async () => {
    server.load({
      "two.test": { TXT: ["v=spf1 include:inc.two.test -all"] },
      "inc.two.test": { TXT: ["v=spf1 ip4:192.0.2.0/24 -all"] },
    });
    assert.equal(await result(question("a@two.test")), "pass");
    server.load({ "inc.two.test": { TXT: ["v=spf1 ip4:203.0.113.0/24 -all"] } });
    assert.equal(await result(question("a@two.test")), "fail");
    server.load({ "two.test": { TXT: ["v=spf1 ip4:192.0.2.10 ~all"] } });
    assert.equal(await result(question("a@two.test")), "pass");
    assert.equal(evaluator.evaluations, 3);
  });

  test("a DNS failure is never remembered: temperror, then pass once DNS answers", async () => {
    server.load({ "three.test": "servfail" });
    assert.equal(await result(question("a@three.test")), "temperror");
    server.load({ "three.test": { TXT: ["v=spf1 ip4:192.0.2.0/24 -all"] } });
    assert.equal(await result(question("a@three.test")), "pass");
    assert.equal(await result(question("a@three.test")), "pass");
    assert.equal(evaluator.evaluations, 2);
  });

  test('"no such name" is an answer: a void lookup is remembered with its result', async () => {
    server.load({ "four.test": { TXT: ["v=spf1 a:missing.four.test ip4:192.0.2.0/24 -all"] } });
    assert.equal(await result(question("a@four.test")), "pass");
    assert.equal(await result(question("a@four.test")), "pass");
    assert.equal(evaluator.evaluations, 1);
  });

  test("a record that names the time (%{t}) outside an explanation is a permerror (RFC 7208 §7.3), remembered", async () => {
    server.load({
      "five.test": { TXT: ["v=spf1 exists:%{t}.clock.five.test -all"] },
      "*.clock.five.test": { A: ["127.0.0.2"] },
    });
    assert.equal(await result(question("a@five.test")), "permerror");
    assert.equal(await result(question("a@five.test")), "permerror");
    assert.equal(evaluator.evaluations, 1, "no question depends on the clock, so the result is kept");
  });
});

/** A gateway without a DNS cache, so every check asks the test DNS server again; stopped after `run`. */
async function withUncachedGateway(zone: ZoneData, pipeline: string, run: (relay: DnsRelay) => Promise<void>) {
  const relay = await startDnsRelay(
    zone,
    (hop) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test] }
dns: { cacheSize: 0 }
pipeline: ${pipeline}
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
  );
  try {
    await run(relay);
  } finally {
    await relay.stop();
  }
}

describe("replay memo through the wire", () => {
  test("a sender's changed record decides its next MAIL FROM (gateway without a DNS cache)", () =>
    withUncachedGateway({ "six.test": { TXT: ["v=spf1 ip4:192.0.2.10 -all"] } }, "[{ plugin: spf }]", async (relay) => {
      const send = () =>
        sendAs(relay.gw.port, "192.0.2.10", {
          from: "a@six.test",
          to: ["rcpt@example.test"],
          data: message({ from: "<a@six.test>" }),
        });
      for (let i = 0; i < 2; i++) assert.equal((await send()).data?.code, 250);
      relay.dns.load({ "six.test": { TXT: ["v=spf1 ip4:203.0.113.0/24 -all"] } });
      assert.equal(
        (await send()).mail?.raw,
        "550 5.7.23 SPF: six.test does not permit [192.0.2.10] to send mail as a@six.test",
      );
    }));

  test("a sender's changed DMARC record decides its next message (gateway without a DNS cache)", () =>
    withUncachedGateway(
      { "seven.test": { TXT: ["v=spf1 ip4:192.0.2.10 -all"] } },
      "[{ plugin: spf }, { plugin: dmarc }]",
      async (relay) => {
        // SPF passes for another domain than the From domain: not aligned, so DMARC fails.
        const send = () =>
          sendAs(relay.gw.port, "192.0.2.10", {
            from: "bounces@seven.test",
            to: ["rcpt@example.test"],
            data: message({ from: "<ceo@elsewhere.seven-corp.test>" }),
          });
        relay.dns.load({ "_dmarc.elsewhere.seven-corp.test": { TXT: ["v=DMARC1; p=none"] } });
        for (let i = 0; i < 2; i++) assert.equal((await send()).data?.code, 250);
        relay.dns.load({ "_dmarc.elsewhere.seven-corp.test": { TXT: ["v=DMARC1; p=reject"] } });
        assert.equal(
          (await send()).data?.raw,
          "550 5.7.26 DMARC: unauthenticated mail from elsewhere.seven-corp.test is refused by its policy",
        );
      },
    ));
});
