import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
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
import { createResolver } from "../../core/dns.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { closedPort, type NextHop, selfSignedCertificate, startNextHop } from "../fixtures/next-hop.js";

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

describe("MTA-STS enforcement in MX delivery", () => {
  let dns: TestDnsServer;
  let http: Server;
  let url: string;
  let fetches = 0;
  const policies = new Map<string, string>();
  const cert = selfSignedCertificate("mx.sts.test");
  const hops: NextHop[] = [];
  let port: number;

  before(async () => {
    port = await closedPort();
    http = createServer((request, response) => {
      fetches++;
      const body = policies.get(request.url!.slice(1));
      response.writeHead(body ? 200 : 404, { "content-type": "text/plain" }).end(body ?? "");
    });
    http.listen(0, "127.0.0.1");
    await once(http, "listening");
    url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/{domain}`;
    dns = await startDnsServer({
      "_mta-sts.sts.test": { TXT: ["v=STSv1; id=one"] },
      "sts.test": { MX: [{ priority: 10, exchange: "mx.sts.test" }] },
      "mx.sts.test": { A: ["127.0.0.4"] },
      "_mta-sts.other.test": { TXT: ["v=STSv1; id=one"] },
      "other.test": { MX: [{ priority: 10, exchange: "mx.elsewhere.test" }] },
      "mx.elsewhere.test": { A: ["127.0.0.4"] },
    });
  });
  after(async () => {
    for (const hop of hops) await hop.close();
    await dns.close();
    http.close();
  });

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
    policies.set("sts.test", "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 600\n");
    policies.set("other.test", "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 600\n");
    const clock = { now: () => 0 };
    const cache = new MtaStsCache(createResolver({ servers: [dns.address] }), httpPolicyFetch(url), clock);

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
    policies.set("sts.test", "version: STSv1\nmode: testing\nmx: mx.sts.test\nmax_age: 600\n");
    let now = 0;
    const resolver = createResolver({ servers: [dns.address], cacheSize: 0 });
    const cache = new MtaStsCache(resolver, httpPolicyFetch(url), { now: () => now });
    const before = fetches;
    assert.equal((await cache.policyFor("sts.test"))?.mode, "testing");
    assert.equal((await cache.policyFor("sts.test"))?.mode, "testing");
    assert.equal(fetches - before, 1, "same id: no second fetch");
    dns.load({ "_mta-sts.sts.test": { TXT: ["v=STSv1; id=two"] } });
    policies.delete("sts.test");
    now = 1000;
    assert.equal((await cache.policyFor("sts.test"))?.mode, "testing", "the fetch failed: the cached policy holds");
    now = 700_000;
    assert.equal(await cache.policyFor("sts.test"), null, "expired and not refreshable: no policy");
    assert.equal(await cache.policyFor("nosts.test"), null);
  });
});
