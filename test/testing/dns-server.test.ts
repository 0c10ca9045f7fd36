// The fixture is checked with a bare node:dns Resolver, so its semantics do not depend on core/dns.
import assert from "node:assert/strict";
import { promises as dns } from "node:dns";
import { after, before, describe, it } from "node:test";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";

function client(server: TestDnsServer): dns.Resolver {
  const resolver = new dns.Resolver({ timeout: 200, tries: 1 });
  resolver.setServers([server.address]);
  return resolver;
}

async function code(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? "no code";
  }
  assert.fail("expected the lookup to fail");
}

describe("test DNS server", () => {
  let server: TestDnsServer;
  let resolver: dns.Resolver;

  before(async () => {
    server = await startDnsServer({
      "Mixed.Example.TEST.": {
        A: ["192.0.2.1", "192.0.2.2"],
        AAAA: ["2001:db8::1"],
        MX: [{ priority: 10, exchange: "mx.example.test" }],
        TXT: ["v=spf1 -all", ["part one ", "part two"], "k".repeat(600)],
      },
      "empty.example.test": {},
      "1.2.0.192.in-addr.arpa": { PTR: ["host.example.test"] },
      "alias.example.test": { CNAME: ["mixed.example.test"] },
      "dangling.example.test": { CNAME: ["nowhere.example.test"] },
      "to-empty.example.test": { CNAME: ["empty.example.test"] },
      "*.wild.example.test": { A: ["192.0.2.9"] },
      "exact.wild.example.test": { TXT: ["exact"] },
      "broken.example.test": "servfail",
      "closed.example.test": "refused",
      "gone.example.test": "nxdomain",
      "partly.example.test": { A: ["192.0.2.3"], TXT: "servfail" },
    });
    resolver = client(server);
  });
  after(() => server.close());

  it("answers every record type, names case-insensitive and trailing dot ignored", async () => {
    assert.deepEqual(await resolver.resolve4("mixed.example.test"), ["192.0.2.1", "192.0.2.2"]);
    assert.deepEqual(await resolver.resolve6("MIXED.example.test."), ["2001:db8::1"]);
    assert.deepEqual(await resolver.resolveMx("mixed.example.test"), [{ exchange: "mx.example.test", priority: 10 }]);
    assert.deepEqual(await resolver.reverse("192.0.2.1"), ["host.example.test"]);
  });

  it("splits TXT strings longer than 255 bytes into chunks and keeps given chunks", async () => {
    const records = await resolver.resolveTxt("mixed.example.test");
    assert.deepEqual(records[0], ["v=spf1 -all"]);
    assert.deepEqual(records[1], ["part one ", "part two"]);
    assert.deepEqual(
      records[2].map((chunk) => chunk.length),
      [255, 255, 90],
    );
    assert.equal(records[2].join(""), "k".repeat(600));
  });

  it("tells a missing name (ENOTFOUND) from a missing type (ENODATA)", async () => {
    assert.equal(await code(resolver.resolve4("nowhere.example.test")), "ENOTFOUND");
    assert.equal(await code(resolver.resolve4("empty.example.test")), "ENODATA");
  });

  it("follows a CNAME inside the answer, the rcode describing the chain's last name", async () => {
    assert.deepEqual(await resolver.resolve4("alias.example.test"), ["192.0.2.1", "192.0.2.2"]);
    assert.deepEqual(await resolver.resolveCname("alias.example.test"), ["mixed.example.test"]);
    assert.equal(await code(resolver.resolve4("dangling.example.test")), "ENOTFOUND");
    // c-ares answers a CNAME-only response with an empty list, not ENODATA.
    assert.deepEqual(await resolver.resolve4("to-empty.example.test"), []);
  });

  it("matches wildcards below their parent, exact names first", async () => {
    assert.deepEqual(await resolver.resolve4("a.b.wild.example.test"), ["192.0.2.9"]);
    assert.deepEqual(await resolver.resolveTxt("exact.wild.example.test"), [["exact"]]);
    assert.equal(await code(resolver.resolve4("exact.wild.example.test")), "ENODATA");
    assert.equal(await code(resolver.resolve4("wild.example.test")), "ENOTFOUND");
  });

  it("applies whole-name and per-type behaviours", async () => {
    assert.equal(await code(resolver.resolve4("broken.example.test")), "ESERVFAIL");
    assert.equal(await code(resolver.resolveMx("closed.example.test")), "EREFUSED");
    assert.equal(await code(resolver.resolveTxt("gone.example.test")), "ENOTFOUND");
    assert.deepEqual(await resolver.resolve4("partly.example.test"), ["192.0.2.3"]);
    assert.equal(await code(resolver.resolveTxt("partly.example.test")), "ESERVFAIL");
  });

  it("never answers a name that times out", async () => {
    const local = await startDnsServer({ "slow.example.test": { A: "timeout" } });
    try {
      assert.equal(await code(client(local).resolve4("slow.example.test")), "ETIMEOUT");
      assert.equal(local.count("slow.example.test", "A"), 1);
    } finally {
      await local.close();
    }
  });

  it("load replaces the types it names and keeps the others", async () => {
    const local = await startDnsServer({ "x.example.test": { A: ["192.0.2.1"], TXT: ["old"] } });
    try {
      local.load({ "x.example.test": { TXT: ["new"] }, "y.example.test": { A: ["192.0.2.2"] } });
      const r = client(local);
      assert.deepEqual(await r.resolve4("x.example.test"), ["192.0.2.1"]);
      assert.deepEqual(await r.resolveTxt("x.example.test"), [["new"]]);
      assert.deepEqual(await r.resolve4("y.example.test"), ["192.0.2.2"]);
      local.load({ "x.example.test": "servfail" });
      assert.equal(await code(r.resolve4("x.example.test")), "ESERVFAIL");
    } finally {
      await local.close();
    }
  });

  it("rejects malformed record data at load time", async () => {
    const local = await startDnsServer();
    try {
      assert.throws(() => local.load({ "x.example.test": { MX: ["mx.example.test"] } }), TypeError);
    } finally {
      await local.close();
    }
  });

  it("records queries in order and counts them", async () => {
    const local = await startDnsServer({ "q.example.test": { A: ["192.0.2.1"] } }, { ttl: 7 });
    try {
      const r = client(local);
      const [answer] = await r.resolve4("Q.example.test", { ttl: true });
      assert.equal(answer.ttl, 7);
      await r.resolveTxt("q.example.test").catch(() => {});
      assert.deepEqual(local.queries, [
        { name: "q.example.test", type: "A" },
        { name: "q.example.test", type: "TXT" },
      ]);
      assert.equal(local.count("q.example.test."), 2);
      assert.equal(local.count("Q.EXAMPLE.TEST", "a"), 1);
      local.resetQueries();
      assert.equal(local.queries.length, 0);
    } finally {
      await local.close();
    }
  });
});
