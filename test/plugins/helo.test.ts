/**
 * helo: parsing and findings by table; then each finding through the wire, with the policy's
 * default actions and with a stricter `on:` map, against an in-process DNS server.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startDnsServer, type TestDnsServer, type ZoneData } from "../../core/testing/dns-server.js";
import { dnsFindings, type HeloFacts, parseHelo, staticFindings } from "../../plugins/helo/check.js";
import { HeloOptions } from "../../plugins/helo/schema.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { closedConnections, findings, lastFinding, tryMail } from "./connection-checks.js";

describe("helo parsing and findings", () => {
  test("parse", () => {
    assert.deepEqual(parseHelo("mail.example.test"), { kind: "name", domain: "mail.example.test" });
    assert.deepEqual(parseHelo("[192.0.2.1]"), { kind: "literal", address: "192.0.2.1" });
    assert.deepEqual(parseHelo("[ipv6:2001:DB8::1]"), { kind: "literal", address: "2001:db8::1" });
    assert.deepEqual(parseHelo("192.0.2.1"), { kind: "bare-ip", address: "192.0.2.1" });
    for (const bad of [
      "[2001:db8::1]",
      "[192.0.2.300]",
      "under_score.test",
      "a..b",
      "1.2.3",
      "tab\tname.test",
      "-x.test",
    ]) {
      assert.deepEqual(parseHelo(bad), { kind: "invalid" }, bad);
    }
  });

  const identity = {
    clientIp: "192.0.2.10",
    ourNames: ["mx.gateway.test"],
    ourAddresses: ["192.0.2.1"],
    dynamicPatterns: HeloOptions.parse({}).dynamicPatterns,
  };
  const cases: Array<[string, string[]]> = [
    ["mail.sender.test", []],
    ["[192.0.2.10]", []],
    ["[192.0.2.77]", ["literal-mismatch"]],
    ["192.0.2.10", ["bare-ip"]],
    ["192.0.2.77", ["bare-ip", "literal-mismatch"]],
    ["[192.0.2.1]", ["our-address", "literal-mismatch"]],
    ["mx.gateway.test", ["our-name"]],
    ["localhost", ["unqualified"]],
    ["no_such!", ["invalid"]],
    ["dsl-203-0-113-5.pool.isp.test", ["dynamic"]],
    ["host-203-0-113-5.isp.test", ["dynamic"]],
    ["dynamics-crm.example.test", []],
    ["cable.isp.test", ["dynamic"]],
  ];
  for (const [helo, want] of cases) {
    test(`${helo} → [${want.join(", ")}]`, () => assert.deepEqual(staticFindings(parseHelo(helo), identity), want));
  }

  test("forward DNS: no address of either family, a failed lookup, a match", () => {
    const none = { kind: "none", code: "ENOTFOUND" } as const;
    const fail = { kind: "error", code: "ESERVFAIL" } as const;
    assert.equal(dnsFindings(none, none, "192.0.2.10").finding, "no-address");
    assert.equal(dnsFindings(fail, none, "192.0.2.10").finding, "temperror");
    const found = dnsFindings({ kind: "answer", value: ["192.0.2.10"] }, fail, "192.0.2.10");
    assert.deepEqual(found, { addresses: ["192.0.2.10"], matchesClient: true, finding: null, errors: ["ESERVFAIL"] });
  });
});

const ZONES = {
  "mail.sender.test": { A: ["192.0.2.10"] },
  "other.sender.test": { A: ["198.51.100.7"], AAAA: ["2001:db8::7"] },
  "flaky.sender.test": "servfail",
} satisfies ZoneData;

const policy = (on: string) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test], networks: [198.51.100.0/24] }
pipeline:
  - plugin: helo
    # Behind a PROXY the listener's own address is the balancer's side; the public one is named here.
    ourAddresses: [192.0.2.1]
${on}
routes: [{ to: discard }]
`;

describe("helo through the wire, default actions", () => {
  let dns: TestDnsServer;
  let gw: TestGateway;
  before(async () => {
    dns = await startDnsServer({ ...ZONES });
    gw = await startGateway(policy(""), { dnsServers: [dns.address] });
  });
  after(async () => {
    await gw.stop();
    await dns.close();
  });

  const check = async (helo: string, reply: string, want: Partial<HeloFacts>, ip = "192.0.2.10") => {
    const { mail } = await tryMail(gw.port, ip, { helo });
    assert.equal(mail.raw, reply);
    const facts = lastFinding<HeloFacts>(gw, "helo");
    for (const [key, value] of Object.entries(want)) assert.deepEqual(facts[key as keyof HeloFacts], value, key);
  };

  test("a name with the client's address", () =>
    check("mail.sender.test", "250 2.1.0 Accepted", { findings: [], addresses: ["192.0.2.10"], matchesClient: true }));
  test("a name with others' addresses is recorded, not a finding", () =>
    check("other.sender.test", "250 2.1.0 Accepted", {
      findings: [],
      addresses: ["198.51.100.7", "2001:db8::7"],
      matchesClient: false,
    }));
  test("invalid syntax: rejected", () =>
    check("bad_name!", "501 5.5.2 <bad_name!>: Helo command rejected: invalid name", {
      kind: "invalid",
      findings: ["invalid"],
    }));
  test("a bare IP: recorded", () =>
    check("192.0.2.10", "250 2.1.0 Accepted", { kind: "bare-ip", findings: ["bare-ip"] }));
  test("a literal that is not the client: recorded", () =>
    check("[192.0.2.77]", "250 2.1.0 Accepted", { address: "192.0.2.77", findings: ["literal-mismatch"] }));
  test("the client's own IPv6 literal", () =>
    check("[IPv6:2001:db8::10]", "250 2.1.0 Accepted", { kind: "literal", findings: [] }, "2001:db8::10"));
  test("our address: rejected", () =>
    check("[192.0.2.1]", "550 5.7.1 <[192.0.2.1]>: Helo command rejected: that address is mine, not yours", {
      findings: ["our-address", "literal-mismatch"],
    }));
  test("our hostname: rejected, without a lookup", async () => {
    await check("mx.gateway.test", "550 5.7.1 <mx.gateway.test>: Helo command rejected: that name is mine, not yours", {
      findings: ["our-name"],
      addresses: null,
    });
    assert.equal(dns.count("mx.gateway.test"), 0);
  });
  test("unqualified: recorded", () => check("localhost", "250 2.1.0 Accepted", { findings: ["unqualified"] }));
  test("dynamic and unknown: both recorded, dynamic first", () =>
    check("dsl-203-0-113-5.pool.isp.test", "250 2.1.0 Accepted", { findings: ["dynamic", "no-address"] }));
  test("forward DNS failure: temperror recorded", () =>
    check("flaky.sender.test", "250 2.1.0 Accepted", {
      findings: ["temperror"],
      dnsErrors: ["ESERVFAIL", "ESERVFAIL"],
    }));
  test("a trusted client (relay.networks) is not checked", async () => {
    const before = findings(gw, "helo").length;
    assert.equal((await tryMail(gw.port, "198.51.100.5", { helo: "localhost" })).mail.code, 250);
    assert.equal(findings(gw, "helo").length, before);
  });
});

describe("helo through the wire, a strict policy", () => {
  let dns: TestDnsServer;
  let gw: TestGateway;
  before(async () => {
    dns = await startDnsServer({ ...ZONES });
    gw = await startGateway(
      policy(`    on:
      unqualified: reject
      no-address: { reject: "550 5.7.1 <{helo}>: Helo command rejected: Host not found" }
      temperror: defer
      dynamic: { score: 2 }`),
      { dnsServers: [dns.address] },
    );
  });
  after(async () => {
    await gw.stop();
    await dns.close();
  });

  test("unqualified: the plugin's reply for a bare reject", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.10", { helo: "localhost" });
    assert.equal(mail.raw, "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname");
  });
  test("no address: the policy's reply", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.10", { helo: "nx.sender.test" });
    assert.equal(mail.raw, "550 5.7.1 <nx.sender.test>: Helo command rejected: Host not found");
  });
  test("temperror: deferred", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.10", { helo: "flaky.sender.test" });
    assert.equal(mail.raw, "451 4.4.3 <flaky.sender.test>: Helo command rejected: DNS lookup failed, try again later");
  });
  test("dynamic: only scored, since it is the verdict (no-address, second, is not acted on)", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.10", { helo: "dyn-203-0-113-5.isp.test" });
    assert.equal(mail.code, 250);
    await closedConnections(gw, 4);
    assert.equal(gw.transactions().at(-1)?.score, 2);
  });
});
