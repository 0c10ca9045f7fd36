import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { deliverMx, type MxResolver, resolveMxHosts } from "../../core/delivery/mx.js";
import { closedPort, type NextHop, startNextHop } from "../fixtures/next-hop.js";

type Answer<T> = T | { error: string };
interface Zone {
  mx?: Record<string, Answer<Array<{ exchange: string; priority: number }>>>;
  a?: Record<string, Answer<string[]>>;
  aaaa?: Record<string, Answer<string[]>>;
}

/** Answers from a table; a name missing from a table has no record of that type (ENODATA). */
function fakeDns(zone: Zone): MxResolver & { queries: string[] } {
  const queries: string[] = [];
  const answer = <T>(type: string, table: Record<string, Answer<T>> | undefined, name: string): Promise<T> => {
    queries.push(`${type} ${name}`);
    const value = table?.[name];
    if (value === undefined) return Promise.reject(Object.assign(new Error("no data"), { code: "ENODATA" }));
    if (typeof value === "object" && value !== null && "error" in value) {
      return Promise.reject(Object.assign(new Error(value.error), { code: value.error }));
    }
    return Promise.resolve(value as T);
  };
  return {
    queries,
    resolveMx: (name) => answer("MX", zone.mx, name),
    resolve4: (name) => answer("A", zone.a, name),
    resolve6: (name) => answer("AAAA", zone.aaaa, name),
  };
}

/** A random source that replays fixed values, so equal-preference order is reproducible. */
function sequence(values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length];
}

describe("resolveMxHosts", () => {
  it("orders hosts by preference and resolves each one's IPv4 then IPv6 addresses", async () => {
    const dns = fakeDns({
      mx: {
        "example.test": [
          { exchange: "backup.example.test", priority: 20 },
          { exchange: "MX1.Example.Test.", priority: 10 },
        ],
      },
      a: { "mx1.example.test": ["192.0.2.1"], "backup.example.test": ["192.0.2.2"] },
      aaaa: { "mx1.example.test": ["2001:db8::1"] },
    });
    assert.deepEqual(await resolveMxHosts("example.test", dns), {
      kind: "hosts",
      hosts: [
        { exchange: "mx1.example.test", priority: 10, addresses: ["192.0.2.1", "2001:db8::1"] },
        { exchange: "backup.example.test", priority: 20, addresses: ["192.0.2.2"] },
      ],
    });
  });

  it("shuffles hosts of equal preference, and only those", async () => {
    const dns = fakeDns({
      mx: {
        "example.test": [
          { exchange: "a.example.test", priority: 10 },
          { exchange: "b.example.test", priority: 10 },
          { exchange: "c.example.test", priority: 5 },
        ],
      },
      a: { "a.example.test": ["192.0.2.1"], "b.example.test": ["192.0.2.2"], "c.example.test": ["192.0.2.3"] },
    });
    const order = async (random: () => number) => {
      const plan = await resolveMxHosts("example.test", dns, undefined, random);
      assert.equal(plan.kind, "hosts");
      return plan.kind === "hosts" ? plan.hosts.map((h) => h.exchange) : [];
    };
    const orders = new Set<string>();
    for (const values of [[0], [0.99], [0.5, 0], [0.2, 0.9]]) orders.add((await order(sequence(values))).join(" "));
    assert.deepEqual([...orders].sort(), [
      "c.example.test a.example.test b.example.test",
      "c.example.test b.example.test a.example.test",
    ]);
  });

  it("uses the domain itself when it has no MX records (implicit MX)", async () => {
    const dns = fakeDns({ a: { "plain.test": ["192.0.2.9"] }, aaaa: { "plain.test": ["2001:db8::9"] } });
    assert.deepEqual(await resolveMxHosts("plain.test", dns), {
      kind: "hosts",
      hosts: [{ exchange: "plain.test", priority: 0, addresses: ["192.0.2.9", "2001:db8::9"] }],
    });
  });

  it("recognises a null MX (RFC 7505) and looks nothing else up", async () => {
    const dns = fakeDns({ mx: { "nomail.test": [{ exchange: "", priority: 0 }] } });
    assert.deepEqual(await resolveMxHosts("nomail.test", dns), { kind: "nullMx" });
    assert.deepEqual(dns.queries, ["MX nomail.test"]);
    const dotted = fakeDns({ mx: { "nomail.test": [{ exchange: ".", priority: 0 }] } });
    assert.deepEqual(await resolveMxHosts("nomail.test", dotted), { kind: "nullMx" });
  });

  it("ignores a '.' record listed among real hosts", async () => {
    const dns = fakeDns({
      mx: {
        "mixed.test": [
          { exchange: "", priority: 0 },
          { exchange: "mx.mixed.test", priority: 10 },
        ],
      },
      a: { "mx.mixed.test": ["192.0.2.4"] },
    });
    assert.deepEqual(await resolveMxHosts("mixed.test", dns), {
      kind: "hosts",
      hosts: [{ exchange: "mx.mixed.test", priority: 10, addresses: ["192.0.2.4"] }],
    });
  });

  it("reports NXDOMAIN, and a domain with neither MX nor addresses, as nodomain", async () => {
    assert.deepEqual(await resolveMxHosts("gone.test", fakeDns({ mx: { "gone.test": { error: "ENOTFOUND" } } })), {
      kind: "nodomain",
    });
    assert.deepEqual(await resolveMxHosts("empty.test", fakeDns({})), { kind: "nodomain" });
  });

  it("reports temporary DNS failures as temperror with the resolver's code", async () => {
    const servfail = fakeDns({ mx: { "flaky.test": { error: "ESERVFAIL" } } });
    assert.deepEqual(await resolveMxHosts("flaky.test", servfail), { kind: "temperror", code: "ESERVFAIL" });
    const implicit = fakeDns({ a: { "flaky.test": { error: "ETIMEOUT" } } });
    assert.deepEqual(await resolveMxHosts("flaky.test", implicit), { kind: "temperror", code: "ETIMEOUT" });
    const hostsOnly = fakeDns({
      mx: { "flaky.test": [{ exchange: "mx.flaky.test", priority: 10 }] },
      a: { "mx.flaky.test": { error: "ETIMEOUT" } },
    });
    assert.deepEqual(await resolveMxHosts("flaky.test", hostsOnly), { kind: "temperror", code: "ETIMEOUT" });
  });

  it("skips hosts without addresses; a temporary failure of one host does not matter when another answers", async () => {
    const dns = fakeDns({
      mx: {
        "part.test": [
          { exchange: "dead.part.test", priority: 5 },
          { exchange: "slow.part.test", priority: 10 },
          { exchange: "ok.part.test", priority: 20 },
        ],
      },
      a: {
        "dead.part.test": { error: "ENOTFOUND" },
        "slow.part.test": { error: "ETIMEOUT" },
        "ok.part.test": ["192.0.2.5"],
      },
    });
    assert.deepEqual(await resolveMxHosts("part.test", dns), {
      kind: "hosts",
      hosts: [{ exchange: "ok.part.test", priority: 20, addresses: ["192.0.2.5"] }],
    });
  });
});

describe("deliverMx", () => {
  const envelope = { from: "sender@a.test", to: ["one@b.test", "two@b.test"] };
  const message = () => Readable.from([Buffer.from("Subject: mx\r\n\r\nbody\r\n")]);
  let hop: NextHop;
  let deadPort: number;
  before(async () => {
    hop = await startNextHop({ rejectRecipients: { "two@b.test": "550 5.1.1 no such user" } });
    deadPort = await closedPort();
  });
  after(() => hop.close());

  const refusal = async (zone: Zone) => {
    const result = await deliverMx("b.test", envelope, message, fakeDns(zone), { name: "gw.test", timeoutMs: 5000 });
    assert.deepEqual(
      result.recipients.map((r) => [r.recipient, r.status]),
      envelope.to.map((r) => [r, result.recipients[0].status]),
    );
    return result.recipients[0].reply;
  };

  it("maps null MX, nodomain and temperror to per-recipient replies", async () => {
    assert.deepEqual(await refusal({ mx: { "b.test": [{ exchange: "", priority: 0 }] } }), {
      code: 550,
      enhanced: "5.1.10",
      text: "Recipient address has null MX",
    });
    assert.deepEqual(await refusal({ mx: { "b.test": { error: "ENOTFOUND" } } }), {
      code: 550,
      enhanced: "5.1.2",
      text: "Bad destination domain",
    });
    const temp = await refusal({ mx: { "b.test": { error: "ESERVFAIL" } } });
    assert.equal(temp.code, 451);
    assert.equal(temp.enhanced, "4.4.3");
    assert.match(temp.text, /^DNS lookup failed/);
  });

  it("moves past an address that refuses connections, and stops at the host that answers", async () => {
    const dns = fakeDns({
      mx: {
        "b.test": [
          { exchange: "mx1.b.test", priority: 10 },
          { exchange: "mx2.b.test", priority: 20 },
        ],
      },
      // 127.0.0.2 is loopback too, but nothing listens there on the next hop's port.
      a: { "mx1.b.test": ["127.0.0.2"], "mx2.b.test": ["127.0.0.1"] },
    });
    const result = await deliverMx("b.test", envelope, message, dns, {
      name: "gw.test",
      timeoutMs: 5000,
      port: hop.port,
    });
    assert.deepEqual(
      result.recipients.map((r) => [r.recipient, r.status, r.reply.enhanced]),
      [
        ["one@b.test", "delivered", "2.0.0"],
        ["two@b.test", "failed", "5.1.1"],
      ],
    );
    assert.equal(result.nextHop, `mx2.b.test[127.0.0.1]:${hop.port}`);
    assert.equal(hop.messages.length, 1);
    assert.deepEqual(hop.messages[0].to, ["one@b.test"]);
  });

  it("defers every recipient with the last connection failure when no address answers", async () => {
    const dns = fakeDns({ a: { "b.test": ["127.0.0.1"] } });
    const result = await deliverMx("b.test", envelope, message, dns, {
      name: "gw.test",
      timeoutMs: 5000,
      port: deadPort,
    });
    assert.ok(result.unreachable);
    assert.deepEqual(
      result.recipients.map((r) => [r.recipient, r.status, r.reply.enhanced]),
      envelope.to.map((to) => [to, "deferred", "4.4.1"]),
    );
  });
});
