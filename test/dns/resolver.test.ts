import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type DNSResolver, spf } from "mailauth";
import {
  createResolver,
  DnsError,
  type DnsResolver,
  type ResolverOptions,
  reverseIpLabels,
} from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer, type ZoneData } from "../../core/testing/dns-server.js";

const V6_ARPA = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";

const ZONE: ZoneData = {
  "mail.example.test": {
    A: ["192.0.2.25"],
    AAAA: ["2001:db8::25"],
    MX: [
      { priority: 20, exchange: "backup.example.test" },
      { priority: 10, exchange: "mail.example.test" },
    ],
    TXT: ["v=spf1 ip4:192.0.2.0/24 -all", ["chunk one ", "chunk two"]],
  },
  "empty.example.test": {},
  "25.2.0.192.in-addr.arpa": { PTR: ["Mail.Example.TEST."] },
  [V6_ARPA]: { PTR: ["v6.example.test"] },
  "broken.example.test": "servfail",
  "closed.example.test": "refused",
  "slow.example.test": "timeout",
};

async function rejection(promise: Promise<unknown>): Promise<DnsError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof DnsError, `expected a DnsError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected the lookup to fail");
}

describe("shared resolver", () => {
  let server: TestDnsServer;
  const fresh = (options: ResolverOptions = {}): DnsResolver =>
    createResolver({ servers: [server.address], timeoutMs: 300, ...options });

  before(async () => {
    server = await startDnsServer(ZONE);
  });
  after(() => server.close());

  it("answers A, AAAA, MX and TXT", async () => {
    const dns = fresh();
    assert.deepEqual(await dns.resolve4("mail.example.test"), ["192.0.2.25"]);
    assert.deepEqual(await dns.resolve6("mail.example.test"), ["2001:db8::25"]);
    assert.deepEqual(
      (await dns.resolveMx("mail.example.test")).sort((a, b) => a.priority - b.priority),
      [
        { exchange: "mail.example.test", priority: 10 },
        { exchange: "backup.example.test", priority: 20 },
      ],
    );
    assert.deepEqual(await dns.resolveTxt("mail.example.test"), [
      ["v=spf1 ip4:192.0.2.0/24 -all"],
      ["chunk one ", "chunk two"],
    ]);
  });

  it("reverses IPv4, IPv4-mapped and IPv6 addresses to lower-case names", async () => {
    const dns = fresh();
    assert.deepEqual(await dns.reverse("192.0.2.25"), ["mail.example.test"]);
    assert.deepEqual(await dns.reverse("::ffff:192.0.2.25"), ["mail.example.test"]);
    assert.deepEqual(await dns.reverse("2001:DB8::1"), ["v6.example.test"]);
    assert.equal((await rejection(dns.reverse("not-an-ip"))).code, "EINVAL");
  });

  it("tells ENOTFOUND from ENODATA and names the lookup in the error", async () => {
    const dns = fresh();
    const missing = await rejection(dns.resolve4("nowhere.example.test"));
    assert.equal(missing.code, "ENOTFOUND");
    assert.equal(missing.hostname, "nowhere.example.test");
    assert.equal(missing.rrtype, "A");
    const nodata = await rejection(dns.resolveMx("empty.example.test"));
    assert.equal(nodata.code, "ENODATA");
    assert.equal(nodata.rrtype, "MX");
  });

  it("caches answers: repeated lookups send one query while fresh, whatever the case or trailing dot", async () => {
    const dns = fresh();
    server.resetQueries();
    for (let i = 0; i < 5; i++) await dns.resolve4(i % 2 ? "MAIL.example.test." : "mail.example.test");
    assert.equal(server.count("mail.example.test", "A"), 1);
    assert.deepEqual(dns.stats(), { queries: 5, hits: 4, misses: 1, inflight: 0, errors: {} });
  });

  it("cacheSize 0 caches nothing: every lookup is a query, negatives included", async () => {
    const dns = fresh({ cacheSize: 0 });
    server.resetQueries();
    for (let i = 0; i < 3; i++) await dns.resolveTxt("mail.example.test");
    for (let i = 0; i < 2; i++) assert.equal((await rejection(dns.resolve4("empty.example.test"))).code, "ENODATA");
    assert.equal(server.count("mail.example.test", "TXT"), 3);
    assert.equal(server.count("empty.example.test", "A"), 2);
    assert.deepEqual(dns.stats(), { queries: 5, hits: 0, misses: 5, inflight: 0, errors: { ENODATA: 2 } });
  });
  it("cacheSize bounds the cache: beyond it the least recently used answer is asked again", async () => {
    const dns = fresh({ cacheSize: 2 });
    server.resetQueries();
    await dns.resolveTxt("mail.example.test");
    await dns.resolve4("mail.example.test");
    await dns.resolveTxt("mail.example.test"); // the A answer is now the least recently used
    await dns.resolve6("mail.example.test");
    await dns.resolveTxt("mail.example.test");
    await dns.resolve4("mail.example.test");
    assert.equal(server.count("mail.example.test", "TXT"), 1, "the TXT answer stayed cached");
    assert.equal(server.count("mail.example.test", "A"), 2, "the A answer made room and was asked again");
  });

  it("hands out copies, so a caller that mutates its answer does not change the cache", async () => {
    const dns = fresh();
    (await dns.resolveTxt("mail.example.test"))[0].push("mutated");
    (await dns.resolve4("mail.example.test")).pop();
    assert.deepEqual((await dns.resolveTxt("mail.example.test"))[0], ["v=spf1 ip4:192.0.2.0/24 -all"]);
    assert.deepEqual(await dns.resolve4("mail.example.test"), ["192.0.2.25"]);
  });

  it("shares one query among identical concurrent lookups", async () => {
    const dns = fresh();
    server.resetQueries();
    const answers = await Promise.all(Array.from({ length: 10 }, () => dns.resolveTxt("mail.example.test")));
    assert.equal(server.count("mail.example.test", "TXT"), 1);
    for (const answer of answers) assert.deepEqual(answer, answers[0]);
    assert.equal(dns.stats().misses, 1);
    assert.equal(dns.stats().hits, 9);
  });

  it("caches ENOTFOUND and ENODATA and re-throws them with their code", async () => {
    const dns = fresh();
    server.resetQueries();
    for (let i = 0; i < 3; i++) {
      assert.equal((await rejection(dns.resolve4("nowhere.example.test"))).code, "ENOTFOUND");
      assert.equal((await rejection(dns.resolveTxt("empty.example.test"))).code, "ENODATA");
    }
    assert.equal(server.count("nowhere.example.test"), 1);
    assert.equal(server.count("empty.example.test"), 1);
    assert.deepEqual(dns.stats().errors, { ENOTFOUND: 1, ENODATA: 1 });
  });

  it("does not cache SERVFAIL or REFUSED", async () => {
    const dns = fresh();
    server.resetQueries();
    for (let i = 0; i < 2; i++) {
      assert.equal((await rejection(dns.resolve4("broken.example.test"))).code, "ESERVFAIL");
      assert.equal((await rejection(dns.resolveMx("closed.example.test"))).code, "EREFUSED");
    }
    assert.equal(server.count("broken.example.test", "A"), 2);
    assert.equal(server.count("closed.example.test", "MX"), 2);
    assert.deepEqual(dns.stats().errors, { ESERVFAIL: 2, EREFUSED: 2 });
  });

  it("fails an unanswered query with ETIMEOUT and does not cache it", async () => {
    // c-ares' own timer would fire far later than ours, so the code must come from the deadline.
    const dns = createResolver({ servers: [server.address], timeoutMs: 200 });
    server.resetQueries();
    assert.equal((await rejection(dns.resolve4("slow.example.test"))).code, "ETIMEOUT");
    assert.equal((await rejection(dns.resolve4("slow.example.test"))).code, "ETIMEOUT");
    assert.equal(server.count("slow.example.test", "A"), 2);
    assert.equal(dns.stats().inflight, 0);
  });

  it("expires answers with their TTL", async () => {
    const short = await startDnsServer({ "ttl.example.test": { A: ["192.0.2.1"] } }, { ttl: 1 });
    try {
      const dns = createResolver({ servers: [short.address], timeoutMs: 300 });
      await dns.resolve4("ttl.example.test");
      await dns.resolve4("ttl.example.test");
      assert.equal(short.count("ttl.example.test"), 1);
      await sleep(1100);
      await dns.resolve4("ttl.example.test");
      assert.equal(short.count("ttl.example.test"), 2);
    } finally {
      await short.close();
    }
  });

  it("expires negative answers after negativeTtlMs", async () => {
    const dns = fresh({ negativeTtlMs: 1000 });
    server.resetQueries();
    await rejection(dns.resolve4("nowhere-ttl.example.test"));
    await rejection(dns.resolve4("nowhere-ttl.example.test"));
    assert.equal(server.count("nowhere-ttl.example.test"), 1);
    await sleep(1100);
    await rejection(dns.resolve4("nowhere-ttl.example.test"));
    assert.equal(server.count("nowhere-ttl.example.test"), 2);
  });

  it("an aborted signal ends only that caller's wait, with ECANCELLED", async () => {
    const dns = fresh();
    server.resetQueries();
    assert.equal((await rejection(dns.resolve4("mail.example.test", AbortSignal.abort()))).code, "ECANCELLED");
    assert.equal(server.count("mail.example.test", "A"), 0);

    const controller = new AbortController();
    const abandoned = dns.resolve6("mail.example.test", controller.signal);
    const kept = dns.resolve6("mail.example.test");
    controller.abort();
    assert.equal((await rejection(abandoned)).code, "ECANCELLED");
    assert.deepEqual(await kept, ["2001:db8::25"]);
    assert.equal(server.count("mail.example.test", "AAAA"), 1);

    const waiting = new AbortController();
    const stuck = dns.resolveTxt("slow.example.test", waiting.signal);
    waiting.abort();
    assert.equal((await rejection(stuck)).code, "ECANCELLED");
  });

  describe("mailauth resolver contract", () => {
    it("returns what dns.promises.resolve returns, per type", async () => {
      const dns = fresh();
      assert.deepEqual(await dns.resolve("mail.example.test", "TXT"), [
        ["v=spf1 ip4:192.0.2.0/24 -all"],
        ["chunk one ", "chunk two"],
      ]);
      assert.deepEqual(await dns.resolve("mail.example.test", "A"), ["192.0.2.25"]);
      assert.deepEqual(await dns.resolve("mail.example.test", "aaaa"), ["2001:db8::25"]);
      assert.equal(((await dns.resolve("mail.example.test", "MX")) as unknown[]).length, 2);
      assert.deepEqual(await dns.resolve("25.2.0.192.in-addr.arpa", "PTR"), ["mail.example.test"]);
    });

    it("rejects with Node's codes, cached negatives included, and ENOTIMP for other types", async () => {
      const dns = fresh();
      for (let i = 0; i < 2; i++) {
        assert.equal((await rejection(dns.resolve("nowhere.example.test", "TXT"))).code, "ENOTFOUND");
        assert.equal((await rejection(dns.resolve("empty.example.test", "TXT"))).code, "ENODATA");
      }
      assert.equal((await rejection(dns.resolve("broken.example.test", "TXT"))).code, "ESERVFAIL");
      assert.equal((await rejection(dns.resolve("mail.example.test", "SRV"))).code, "ENOTIMP");
    });

    it("drives mailauth's SPF check", async () => {
      const dns = fresh();
      const resolver = dns.resolve as DNSResolver;
      const pass = await spf({ sender: "a@mail.example.test", ip: "192.0.2.7", helo: "x", mta: "mx.test", resolver });
      assert.equal(pass.status.result, "pass");
      const fail = await spf({
        sender: "a@mail.example.test",
        ip: "198.51.100.7",
        helo: "x",
        mta: "mx.test",
        resolver,
      });
      assert.equal(fail.status.result, "fail");
      const none = await spf({
        sender: "a@nowhere.example.test",
        ip: "192.0.2.7",
        helo: "x",
        mta: "mx.test",
        resolver,
      });
      assert.equal(none.status.result, "none");
      const temp = await spf({ sender: "a@broken.example.test", ip: "192.0.2.7", helo: "x", mta: "mx.test", resolver });
      assert.equal(temp.status.result, "temperror");
    });
  });
});

describe("reverseIpLabels", () => {
  it("reverses IPv4 octets, IPv6 nibbles and mapped addresses", () => {
    assert.equal(reverseIpLabels("192.0.2.1"), "1.2.0.192");
    assert.equal(reverseIpLabels("::ffff:192.0.2.1"), "1.2.0.192");
    assert.equal(reverseIpLabels("2001:db8::1"), V6_ARPA.replace(/\.ip6\.arpa$/, ""));
    assert.equal(reverseIpLabels("::1"), `1${".0".repeat(31)}`);
    assert.equal(reverseIpLabels("2001:DB8:0:0:0:0:0:AB"), `b.a${".0".repeat(22)}.8.b.d.0.1.0.0.2`);
    assert.equal(reverseIpLabels("64:ff9b::192.0.2.1"), `1.0.2.0.0.0.0.c${".0".repeat(16)}.b.9.f.f.4.6.0.0`);
  });

  it("refuses what is not an IP address", () => {
    assert.throws(() => reverseIpLabels("example.test"), TypeError);
  });
});

describe("names c-ares cannot send, and answers it cannot read", () => {
  const LONG_TXT = `v=spf1 ${"ip4:192.0.2.1 ".repeat(45)}-all`;
  let server: TestDnsServer;
  const fresh = (options: ResolverOptions = {}): DnsResolver =>
    createResolver({ servers: [server.address], timeoutMs: 300, ...options });

  before(async () => {
    server = await startDnsServer(
      {
        "a:b/c.example.test": { A: ["192.0.2.40"], TXT: ["colon and slash"] },
        "with space.example.test": { MX: [{ priority: 5, exchange: "mx.example.test" }] },
        "long:txt.example.test": { TXT: [LONG_TXT] },
        "empty-record.example.test": { TXT: [[], "v=spf1 -all"] },
        "slow:name.example.test": "timeout",
      },
      { udpLimit: 512 },
    );
  });
  after(() => server.close());

  it("answers a name that cannot exist (a label over 63, over 253 in all, an empty label) with ENOTFOUND, asking nobody", async () => {
    const dns = fresh();
    server.resetQueries();
    for (const name of [`${"a".repeat(64)}.example.test`, `${"abcdefghi.".repeat(26)}test`, "a..example.test"]) {
      assert.equal((await rejection(dns.resolve4(name))).code, "ENOTFOUND", name);
      assert.equal((await rejection(dns.resolve(name, "TXT"))).code, "ENOTFOUND", name);
    }
    assert.deepEqual(server.queries, []);
    assert.deepEqual(await dns.resolve4(`${"a".repeat(63)}.example.test`).catch((error) => error.code), "ENOTFOUND");
    assert.equal(server.queries.length, 1, "a 63-octet label is a name like any other");
  });

  it("sends names with : / and spaces itself, to the same server, cached and shared like any lookup", async () => {
    const dns = fresh();
    server.resetQueries();
    const [first, second] = await Promise.all([dns.resolve4("a:b/c.example.test"), dns.resolve4("a:b/c.example.test")]);
    assert.deepEqual(first, ["192.0.2.40"]);
    assert.deepEqual(second, ["192.0.2.40"]);
    assert.deepEqual(await dns.resolve4("a:b/c.example.test"), ["192.0.2.40"]);
    assert.deepEqual(await dns.resolveTxt("a:b/c.example.test"), [["colon and slash"]]);
    assert.deepEqual(await dns.resolveMx("with space.example.test"), [{ exchange: "mx.example.test", priority: 5 }]);
    assert.equal(server.count("a:b/c.example.test", "A"), 1, "one query for three lookups");
    assert.equal(dns.stats().hits, 2);
    assert.equal((await rejection(dns.resolve4("no:such.example.test"))).code, "ENOTFOUND");
    assert.equal((await rejection(dns.resolve6("a:b/c.example.test"))).code, "ENODATA");
  });

  it("asks again over TCP when the UDP answer is truncated", async () => {
    server.resetQueries();
    const records = await fresh().resolveTxt("long:txt.example.test");
    assert.deepEqual(
      records.map((strings) => strings.join("")),
      [LONG_TXT],
    );
    assert.equal(server.count("long:txt.example.test", "TXT"), 2, "once over UDP, once over TCP");
  });

  it("keeps the records of a TXT answer in which one record has no strings (c-ares rejects it whole)", async () => {
    assert.deepEqual(await fresh().resolveTxt("empty-record.example.test"), [[], ["v=spf1 -all"]]);
  });

  it("holds its own query to the deadline", async () => {
    assert.equal((await rejection(fresh({ timeoutMs: 200 }).resolve4("slow:name.example.test"))).code, "ETIMEOUT");
  });
});
