import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import {
  httpPolicyFetch,
  MtaStsCache,
  mxMatches,
  parseMtaStsPolicy,
  parseMtaStsRecord,
} from "../../core/delivery/mta-sts.js";
import { deliverMx } from "../../core/delivery/mx.js";
import { createResolver } from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer, type ZoneData } from "../../core/testing/dns-server.js";
import { closedPort, type NextHop, selfSignedCertificate, startNextHop } from "../fixtures/next-hop.js";
import { enforcePolicy, type PolicyHost, startPolicyHost } from "../fixtures/policy-host.js";
import { createTestCa, type TestCa } from "../fixtures/test-ca.js";

describe("MTA-STS parsing", () => {
  it("reads the id of exactly one STSv1 record", () => {
    assert.equal(parseMtaStsRecord([["v=STSv1; id=20260101T000000;"]]), "20260101T000000");
    assert.equal(parseMtaStsRecord([["v=STSv1; ", "id=abc"], ["unrelated"]]), "abc");
    assert.equal(parseMtaStsRecord([["v=STSv1; id=a"], ["v=STSv1; id=b"]]), undefined);
    assert.equal(parseMtaStsRecord([["v=spf1 -all"]]), undefined);
    assert.equal(parseMtaStsRecord([["v=STSv1; id=has-dash"]]), undefined);
  });

  it("parses policies and refuses broken ones", () => {
    assert.deepEqual(
      parseMtaStsPolicy("version: STSv1\r\nmode: enforce\r\nmx: mx1.x.test\r\nmx: *.x.test\r\nmax_age: 86400\r\n"),
      {
        mode: "enforce",
        mx: ["mx1.x.test", "*.x.test"],
        maxAge: 86400,
      },
    );
    assert.equal(parseMtaStsPolicy("version: STSv1\nmode: enforce\nmax_age: 10\n"), undefined, "enforce needs mx");
    assert.equal(parseMtaStsPolicy("version: STSv2\nmode: none\nmax_age: 10\n"), undefined);
    assert.equal(parseMtaStsPolicy("version: STSv1\nmode: strict\nmx: a\nmax_age: 10\n"), undefined);
    assert.equal(parseMtaStsPolicy("version: STSv1\nmode: none\nmax_age: 99999999999\n")?.maxAge, 31_557_600);
  });

  it("matches MX names, a wildcard covering exactly one label", () => {
    const policy = { mode: "enforce" as const, mx: ["mx1.x.test", "*.x.test"], maxAge: 1 };
    assert.equal(mxMatches(policy, "MX1.x.test."), true);
    assert.equal(mxMatches(policy, "other.x.test"), true);
    assert.equal(mxMatches(policy, "a.b.x.test"), false);
    assert.equal(mxMatches(policy, "x.test"), false);
  });
});

describe("MTA-STS policy fetch (RFC 8461 §3.3)", () => {
  let ca: TestCa;
  let host: PolicyHost;
  let dns: TestDnsServer;
  const domains = ["good.test", "redirect.test", "html.test", "big.test", "untrusted.test", "wrongname.test"];

  before(async () => {
    ca = createTestCa();
    host = await startPolicyHost(ca);
    const zone: ZoneData = {};
    for (const domain of [...domains, "cached.test"]) {
      zone[`_mta-sts.${domain}`] = { TXT: ["v=STSv1; id=one"] };
      zone[`mta-sts.${domain}`] = { A: ["127.0.0.1"] };
    }
    dns = await startDnsServer(zone);
  });
  after(async () => {
    await host.close();
    await dns.close();
    ca.dispose();
  });

  const newCache = () =>
    new MtaStsCache(
      createResolver({ servers: [dns.address], cacheSize: 0 }),
      httpPolicyFetch(host.urlTemplate, { ca: ca.cert, timeoutMs: 5000 }),
      { now: () => 0 },
    );

  it("takes a policy served over verified HTTPS as text/plain", async () => {
    host.serve("good.test", { type: "text/plain; charset=utf-8", body: enforcePolicy("mx.good.test") });
    assert.deepEqual(await newCache().policyFor("good.test"), { mode: "enforce", mx: ["mx.good.test"], maxAge: 86400 });
  });

  it("leaves a domain without a policy when the fetch must be refused", async () => {
    host.serve("good.test", { body: enforcePolicy("mx.good.test") });
    host.serve("redirect.test", {
      status: 301,
      headers: { location: host.urlTemplate.replace("{domain}", "good.test") },
      body: enforcePolicy("mx.redirect.test"),
    });
    host.serve("html.test", { type: "text/html", body: enforcePolicy("mx.html.test") });
    // A valid policy followed by lines the parser ignores, past 64 KiB in all.
    host.serve("big.test", { body: enforcePolicy("mx.big.test") + `${"#".repeat(99)}\n`.repeat(700) });
    host.serve("untrusted.test", {
      body: enforcePolicy("mx.untrusted.test"),
      certificate: selfSignedCertificate("mta-sts.untrusted.test"),
    });
    host.serve("wrongname.test", {
      body: enforcePolicy("mx.wrongname.test"),
      certificate: ca.issue("mta-sts.good.test"),
    });
    const cache = newCache();
    const seen = host.requested.length;
    assert.equal(await cache.policyFor("redirect.test"), null, "a redirect is not followed");
    assert.deepEqual(host.requested.slice(seen), ["redirect.test"], "the redirect's target was never asked");
    assert.equal(await cache.policyFor("html.test"), null, "text/html is refused");
    assert.equal(await cache.policyFor("big.test"), null, "a body past 64 KiB is refused");
    assert.equal(await cache.policyFor("untrusted.test"), null, "a certificate no trusted CA issued is refused");
    assert.equal(await cache.policyFor("wrongname.test"), null, "a certificate for another name is refused");
    assert.deepEqual(host.requested.slice(seen), ["redirect.test", "html.test", "big.test"], "no request over bad TLS");
  });

  it("keeps an enforce policy it holds when a refresh meets a bad certificate", async () => {
    host.serve("cached.test", { body: enforcePolicy("mx.cached.test") });
    const cache = newCache();
    assert.equal((await cache.policyFor("cached.test"))?.mode, "enforce");
    // A new id asks for a refresh; someone else answering for the policy host must not strip the policy.
    dns.load({ "_mta-sts.cached.test": { TXT: ["v=STSv1; id=two"] } });
    host.serve("cached.test", {
      body: "version: STSv1\nmode: none\nmax_age: 86400\n",
      certificate: selfSignedCertificate("mta-sts.cached.test"),
    });
    assert.deepEqual(await cache.policyFor("cached.test"), { mode: "enforce", mx: ["mx.cached.test"], maxAge: 86400 });
  });
});

describe("MTA-STS enforcement in MX delivery", () => {
  let ca: TestCa;
  let dns: TestDnsServer;
  let host: PolicyHost;
  const cert = selfSignedCertificate("mx.sts.test");
  const hops: NextHop[] = [];
  let port: number;

  before(async () => {
    port = await closedPort();
    ca = createTestCa();
    host = await startPolicyHost(ca);
    dns = await startDnsServer({
      "_mta-sts.sts.test": { TXT: ["v=STSv1; id=one"] },
      "mta-sts.sts.test": { A: ["127.0.0.1"] },
      "sts.test": { MX: [{ priority: 10, exchange: "mx.sts.test" }] },
      "mx.sts.test": { A: ["127.0.0.4"] },
      "_mta-sts.other.test": { TXT: ["v=STSv1; id=one"] },
      "mta-sts.other.test": { A: ["127.0.0.1"] },
      "other.test": { MX: [{ priority: 10, exchange: "mx.elsewhere.test" }] },
      "mx.elsewhere.test": { A: ["127.0.0.4"] },
    });
  });
  after(async () => {
    for (const hop of hops) await hop.close();
    await dns.close();
    await host.close();
    ca.dispose();
  });

  const policyFetch = () => httpPolicyFetch(host.urlTemplate, { ca: ca.cert });

  async function deliver(domain: string, cache: MtaStsCache, ca?: Buffer) {
    return deliverMx(
      domain,
      { from: "a@x.test", to: [`b@${domain}`] },
      () => Readable.from([Buffer.from("Subject: sts\r\n\r\nhi\r\n")]),
      createResolver({ servers: [dns.address] }),
      { name: "gw.test", timeoutMs: 5000, port, mtaSts: cache, ...(ca ? { ca } : {}) },
    );
  }

  it("delivers only over verified TLS to an MX the enforce policy names", async () => {
    host.serve("sts.test", { body: "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 600\n" });
    host.serve("other.test", { body: "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 600\n" });
    const clock = { now: () => 0 };
    const cache = new MtaStsCache(createResolver({ servers: [dns.address] }), policyFetch(), clock);

    const plain = await startNextHop({ host: "127.0.0.4", port });
    hops.push(plain);
    const noTls = await deliver("sts.test", cache);
    assert.equal(noTls.recipients[0].status, "deferred", "no STARTTLS: deferred, not sent in clear");
    assert.equal(plain.messages.length, 0);
    await plain.close();

    const secure = await startNextHop({ host: "127.0.0.4", port, tls: cert });
    hops.push(secure);
    const unverified = await deliver("sts.test", cache);
    assert.equal(unverified.recipients[0].status, "deferred", "a certificate nobody vouches for is refused");
    const verified = await deliver("sts.test", cache, cert.cert);
    assert.equal(verified.recipients[0].status, "delivered");
    assert.equal(secure.messages[0].secure, true);

    const mismatch = await deliver("other.test", cache, cert.cert);
    assert.equal(mismatch.recipients[0].reply.enhanced, "4.7.5", "an MX the policy does not name is not used");
    assert.equal(secure.messages.length, 1);
  });

  it("caches a policy until its id changes, and keeps it when a refresh fails", async () => {
    host.serve("sts.test", { body: "version: STSv1\nmode: testing\nmx: mx.sts.test\nmax_age: 600\n" });
    let now = 0;
    const resolver = createResolver({ servers: [dns.address], cacheSize: 0 });
    const cache = new MtaStsCache(resolver, policyFetch(), { now: () => now });
    const before = host.requested.length;
    assert.equal((await cache.policyFor("sts.test"))?.mode, "testing");
    assert.equal((await cache.policyFor("sts.test"))?.mode, "testing");
    assert.equal(host.requested.length - before, 1, "same id: no second fetch");
    dns.load({ "_mta-sts.sts.test": { TXT: ["v=STSv1; id=two"] } });
    host.serve("sts.test", { status: 404 });
    now = 1000;
    assert.equal((await cache.policyFor("sts.test"))?.mode, "testing", "the fetch failed: the cached policy holds");
    now = 700_000;
    assert.equal(await cache.policyFor("sts.test"), null, "expired and not refreshable: no policy");
    assert.equal(await cache.policyFor("nosts.test"), null);
  });
});
