/**
 * dnsbl: answers, filters, batch decisions and the share guard by table; then every listing case
 * through the wire against an in-process DNS server: the reply the client sees and the findings.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { DnsOutcome } from "../../core/dns/lookup.js";
import { startDnsServer, type TestDnsServer, type ZoneData } from "../../core/testing/dns-server.js";
import {
  classifyAnswer,
  decideBatch,
  decidesAlone,
  isListingCode,
  probeProblem,
  txtText,
  type ZoneFinding,
} from "../../plugins/dnsbl/answer.js";
import { ListingShare } from "../../plugins/dnsbl/health.js";
import type { DnsblFacts } from "../../plugins/dnsbl/index.js";
import { DnsblOptions } from "../../plugins/dnsbl/schema.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { closedConnections, lastFinding, tryMail } from "./connection-checks.js";

const answer = (...value: string[]): DnsOutcome<string[]> => ({ kind: "answer", value });

describe("dnsbl answers", () => {
  test("listing codes are 127.0.0.0/8 outside 127.255.255.0/24", () => {
    for (const [code, listing] of [
      ["127.0.0.2", true],
      ["127.1.2.3", true],
      ["127.255.254.1", true],
      ["127.255.255.254", false],
      ["127.255.255.0", false],
      ["126.0.0.2", false],
      ["192.0.2.1", false],
      ["::1", false],
    ] as const) {
      assert.equal(isListingCode(code), listing, code);
    }
  });

  const filter = DnsblOptions.parse({ zones: [{ zone: "bl.test", codes: ["127.0.0.2-127.0.0.11", "127.0.0.20"] }] })
    .zones[0].codes;
  const cases: Array<[string, DnsOutcome<string[]>, typeof filter, ReturnType<typeof classifyAnswer>]> = [
    ["NXDOMAIN is clean", { kind: "none", code: "ENOTFOUND" }, undefined, { status: "clean" }],
    ["NODATA is clean", { kind: "none", code: "ENODATA" }, undefined, { status: "clean" }],
    ["a code is a listing", answer("127.0.0.4"), undefined, { status: "listed", codes: ["127.0.0.4"] }],
    [
      "codes inside the filter count",
      answer("127.0.0.20", "127.0.0.3"),
      filter,
      { status: "listed", codes: ["127.0.0.20", "127.0.0.3"] },
    ],
    [
      "codes outside the filter leave it clean",
      answer("127.0.0.12"),
      filter,
      { status: "clean", codes: ["127.0.0.12"] },
    ],
    [
      "127.255.255.254 is the list refusing",
      answer("127.255.255.254"),
      undefined,
      { status: "error", kind: "list-error", detail: "127.255.255.254" },
    ],
    [
      "an error code spoils a listing",
      answer("127.0.0.2", "127.255.255.252"),
      undefined,
      { status: "error", kind: "list-error", detail: "127.0.0.2 127.255.255.252" },
    ],
    [
      "an address outside 127/8 is no listing",
      answer("192.0.2.1"),
      undefined,
      { status: "error", kind: "bad-answer", detail: "192.0.2.1" },
    ],
    [
      "SERVFAIL",
      { kind: "error", code: "ESERVFAIL" },
      undefined,
      { status: "error", kind: "dns", detail: "ESERVFAIL" },
    ],
    [
      "timeout",
      { kind: "error", code: "ETIMEOUT" },
      undefined,
      { status: "error", kind: "timeout", detail: "ETIMEOUT" },
    ],
  ];
  for (const [name, outcome, codes, want] of cases) {
    test(name, () => assert.deepEqual(classifyAnswer(outcome, codes), want));
  }

  test("the test point's answer: a listing lists everything, 127.255.255.0/24 refuses the resolver", () => {
    assert.equal(probeProblem({ kind: "none", code: "ENOTFOUND" }), null);
    assert.equal(probeProblem({ kind: "error", code: "ESERVFAIL" }), null);
    assert.equal(probeProblem(answer("127.0.0.2")), "test-point");
    assert.equal(probeProblem(answer("127.255.255.254")), "refused");
    assert.equal(probeProblem(answer("127.255.255.252")), "refused");
  });

  test("TXT: chunks joined, records separated, absence is null", () => {
    assert.equal(txtText({ kind: "answer", value: [["listed ", "here"], ["see x"]] }), "listed here; see x");
    assert.equal(txtText({ kind: "none", code: "ENODATA" }), null);
    assert.equal(txtText({ kind: "error", code: "ETIMEOUT" }), null);
  });
});

describe("dnsbl batch decisions", () => {
  const ALL = new Set(["a.test", "b.test", "bl.test", "wl.test"]);
  const finding = (zone: string, status: "listed" | "clean" | "error", extra: Partial<ZoneFinding> = {}): ZoneFinding =>
    ({
      zone,
      target: "ip",
      name: "192.0.2.1",
      score: 0,
      allow: false,
      broken: null,
      ...(status === "listed"
        ? { status, codes: ["127.0.0.2"] }
        : status === "error"
          ? { status, kind: "dns", detail: "ESERVFAIL" }
          : { status }),
      ...extra,
    }) as ZoneFinding;

  const weighted = [
    finding("a.test", "clean"),
    finding("b.test", "listed", { score: 3 }),
    finding("c.test", "listed", { score: 7 }),
  ];

  test("the first listing of a deciding zone decides and every listing scores", () => {
    const decision = decideBatch(weighted, new Set(["c.test"]));
    assert.equal(decision.verdict, "listed");
    assert.equal(decision.decider?.zone, "c.test");
    assert.deepEqual(
      decision.scores.map((s) => s.points),
      [3, 7],
    );
  });

  test("listings of zones that only score add up without a verdict, the first one named", () => {
    const decision = decideBatch(weighted, new Set());
    assert.equal(decision.verdict, null);
    assert.equal(decision.decider?.zone, "b.test");
    assert.deepEqual(
      decision.scores.map((s) => s.points),
      [3, 7],
    );
  });

  test("a zone decides alone without a score, or with verdict: true", () => {
    const zone = { allow: false, score: 0 };
    assert.equal(decidesAlone(zone), true);
    assert.equal(decidesAlone({ ...zone, score: 5 }), false);
    assert.equal(decidesAlone({ ...zone, score: 5, verdict: true }), true);
    assert.equal(decidesAlone({ ...zone, verdict: false }), false);
    assert.equal(decidesAlone({ ...zone, allow: true, verdict: true }), false);
  });

  test("an allow listing wins and only its score counts", () => {
    const decision = decideBatch(
      [finding("bl.test", "listed", { score: 10 }), finding("wl.test", "listed", { allow: true, score: -5 })],
      ALL,
    );
    assert.equal(decision.verdict, "allowlisted");
    assert.deepEqual(decision.scores, [{ points: -5, reason: "wl.test lists ip" }]);
  });

  test("a negative-score zone only scores: no listed verdict", () => {
    const decision = decideBatch([finding("wl.test", "listed", { score: -20 })], ALL);
    assert.equal(decision.verdict, null);
    assert.deepEqual(
      decision.scores.map((s) => s.points),
      [-20],
    );
  });

  test("a listing outranks an error; an error alone is the verdict; allowlist errors do not count", () => {
    assert.equal(decideBatch([finding("a.test", "error"), finding("b.test", "listed")], ALL).verdict, "listed");
    assert.equal(decideBatch([finding("a.test", "error"), finding("b.test", "clean")], ALL).verdict, "error");
    assert.equal(decideBatch([finding("wl.test", "error", { allow: true })], ALL).verdict, null);
  });

  test("broken zones count for nothing", () => {
    const decision = decideBatch([finding("bl.test", "listed", { score: 10, broken: "test-point" })], ALL);
    assert.deepEqual(decision, { verdict: null, decider: null, scores: [] });
  });
});

describe("dnsbl share guard", () => {
  test("trips above the share once enough distinct names were seen, and recovers as the window moves", () => {
    const share = new ListingShare(10_000, 0.9, 10);
    for (let i = 0; i < 9; i++) share.record(`n${i}`, true, 0);
    assert.equal(share.exceeded(0), false, "fewer than minQueries names");
    share.record("n9", true, 500);
    assert.equal(share.exceeded(500), true);
    assert.deepEqual(share.counts(500), { queries: 10, listed: 10 });
    assert.equal(share.exceeded(11_000), false, "everything aged out of the window");
    assert.deepEqual(share.counts(11_000), { queries: 0, listed: 0 });
  });

  test("one listed name looked up over and over counts once per bucket", () => {
    const share = new ListingShare(10_000, 0.5, 2);
    for (let i = 0; i < 50; i++) share.record("spammer", true, 10);
    share.record("clean", false, 20);
    assert.deepEqual(share.counts(20), { queries: 2, listed: 1 });
    assert.equal(share.exceeded(20), false);
  });
});

describe("dnsbl options", () => {
  test("bad return codes and misplaced check are reported", () => {
    assert.equal(
      DnsblOptions.safeParse({ zones: [{ zone: "bl.test", codes: ["127.0.0.9-127.0.0.2"] }] }).success,
      false,
    );
    assert.equal(DnsblOptions.safeParse({ zones: [{ zone: "bl.test", check: ["helo"] }] }).success, false);
    const [zone] = DnsblOptions.parse({ zones: [{ zone: "DBL.Test", type: "domain" }] }).zones;
    assert.deepEqual(zone.check, ["helo", "sender", "ptr"]);
    assert.equal(zone.zone, "dbl.test");
  });
});

const ZONES = {
  // 192.0.2.99: listed with a reason; .98 listed without TXT; .97 the list refuses us; .96 allowlisted;
  // .95 listed and allowlisted; .94 SERVFAIL; .93 no answer; .92 a code outside the filter; .91 an address.
  "99.2.0.192.bl.test": { A: ["127.0.0.2"], TXT: ["listed: see http://bl.test/192.0.2.99"] },
  "98.2.0.192.bl.test": { A: ["127.0.0.3"] },
  "97.2.0.192.bl.test": { A: ["127.255.255.254"] },
  "96.2.0.192.wl.test": { A: ["127.0.2.1"] },
  "95.2.0.192.bl.test": { A: ["127.0.0.2"], TXT: ["listed"] },
  "95.2.0.192.wl.test": { A: ["127.0.2.1"] },
  "94.2.0.192.bl.test": "servfail",
  "93.2.0.192.bl.test": "timeout",
  "92.2.0.192.bl.test": { A: ["127.0.0.12"] },
  "91.2.0.192.bl.test": { A: ["192.0.2.1"] },
  "9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test": { A: ["127.0.0.2"], TXT: ["v6 listed"] },
  "bad-helo.test.dbl.test": { A: ["127.0.1.2"], TXT: ["helo name listed"] },
  "spammer.test.dbl.test": { A: ["127.0.1.2"], TXT: ["sender domain listed"] },
  "50.2.0.192.in-addr.arpa": { PTR: ["listed-ptr.sender.test"] },
  "listed-ptr.sender.test": { A: ["192.0.2.50"] },
  "listed-ptr.sender.test.dbl.test": { A: ["127.0.1.4"] },
  "*.broken.test": { A: ["127.0.0.2"] },
  // How Spamhaus answers a public resolver: every name, the test point included.
  "*.refusing.test": { A: ["127.255.255.254"] },
} satisfies ZoneData;

const gatewayPolicy = (pipeline: string) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test] }
pipeline:
${pipeline}
routes: [{ to: discard }]
`;

describe("dnsbl through the wire", () => {
  let dns: TestDnsServer;
  let gw: TestGateway;

  before(async () => {
    dns = await startDnsServer(ZONES);
    gw = await startGateway(
      gatewayPolicy(`
  - plugin: fcrdns
    on: { none: ignore, fail: ignore, temperror: ignore }
  - plugin: dnsbl
    zones:
      - { zone: wl.test, allow: true }
      - { zone: bl.test, score: 10, verdict: true, codes: ["127.0.0.2-127.0.0.11"] }
      - { zone: dbl.test, type: domain }
`),
      { dnsServers: [dns.address] },
    );
  });
  after(async () => {
    await gw.stop();
    await dns.close();
  });

  const dnsbl = () => lastFinding<DnsblFacts>(gw, "dnsbl");

  test("a clean client passes; its HELO name and sender domain are looked up at the domain list", async () => {
    assert.equal((await tryMail(gw.port, "192.0.2.10")).mail.code, 250);
    assert.deepEqual(
      dnsbl().findings.map((f) => [f.zone, f.target, f.name, f.status]),
      [
        ["wl.test", "ip", "192.0.2.10", "clean"],
        ["bl.test", "ip", "192.0.2.10", "clean"],
        ["dbl.test", "helo", "mail.sender.test", "clean"],
        ["dbl.test", "sender", "sender.test", "clean"],
      ],
    );
  });

  test("listed with TXT: rejected with the TXT in the reply", async () => {
    // An address literal is no domain, so the HELO phase adds no finding to compare.
    const { mail } = await tryMail(gw.port, "192.0.2.99", { helo: "[192.0.2.99]" });
    assert.equal(
      mail.raw,
      "554 5.7.1 Service unavailable; 192.0.2.99 blocked using bl.test; listed: see http://bl.test/192.0.2.99",
    );
    assert.deepEqual(dnsbl(), {
      findings: [
        { status: "clean", zone: "wl.test", target: "ip", name: "192.0.2.99", score: 0, allow: true, broken: null },
        {
          status: "listed",
          codes: ["127.0.0.2"],
          zone: "bl.test",
          target: "ip",
          name: "192.0.2.99",
          score: 10,
          allow: false,
          broken: null,
          txt: "listed: see http://bl.test/192.0.2.99",
        },
      ],
      listed: true,
      allowlisted: null,
      zone: "bl.test",
      name: "192.0.2.99",
      codes: ["127.0.0.2"],
      txt: "listed: see http://bl.test/192.0.2.99",
      reason: "listed: see http://bl.test/192.0.2.99",
      broken: [],
    });
  });

  test("listed without TXT: still a listing, the codes stand in for the reason", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.98");
    assert.equal(mail.raw, "554 5.7.1 Service unavailable; 192.0.2.98 blocked using bl.test; 127.0.0.3");
    assert.equal(dnsbl().txt, null);
    assert.equal(dns.count("98.2.0.192.bl.test", "TXT"), 1, "the TXT was asked for separately");
  });

  test("127.255.255.254 is not a listing but an error finding: deferred", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.97");
    assert.equal(mail.raw, "451 4.4.3 Blocklist lookup failed for [192.0.2.97], try again later");
    assert.deepEqual(
      dnsbl().findings.find((f) => f.zone === "bl.test"),
      {
        status: "error",
        kind: "list-error",
        detail: "127.255.255.254",
        zone: "bl.test",
        target: "ip",
        name: "192.0.2.97",
        score: 10,
        allow: false,
        broken: null,
      },
    );
    assert.equal(dnsbl().zone, null);
  });

  test("an address outside 127/8 is an error finding too", async () => {
    assert.equal((await tryMail(gw.port, "192.0.2.91")).mail.code, 451);
    assert.equal(dnsbl().findings.find((f) => f.zone === "bl.test")?.status, "error");
  });

  test("allowlisted: accepted, and the domain checks of later phases are skipped", async () => {
    dns.resetQueries();
    const { mail } = await tryMail(gw.port, "192.0.2.96", { helo: "bad-helo.test" });
    assert.equal(mail.code, 250);
    assert.equal(dnsbl().allowlisted, "wl.test");
    assert.equal(dns.count("bad-helo.test.dbl.test"), 0);
  });

  test("listed and allowlisted: allow wins", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.95");
    assert.equal(mail.code, 250);
    const facts = dnsbl();
    assert.equal(facts.allowlisted, "wl.test");
    assert.equal(facts.zone, null);
    assert.equal(facts.findings.find((f) => f.zone === "bl.test")?.status, "listed");
  });

  test("zone SERVFAIL: error finding, deferred", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.94");
    assert.equal(mail.code, 451);
    const finding = dnsbl().findings.find((f) => f.zone === "bl.test");
    assert.equal(finding?.status === "error" && `${finding.kind} ${finding.detail}`, "dns ESERVFAIL");
  });

  test("zone timeout: error finding, deferred", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.93");
    assert.equal(mail.code, 451);
    const finding = dnsbl().findings.find((f) => f.zone === "bl.test");
    assert.equal(finding?.status === "error" && finding.kind, "timeout");
  });

  test("a return code outside the zone's filter is clean", async () => {
    assert.equal((await tryMail(gw.port, "192.0.2.92")).mail.code, 250);
    assert.deepEqual(
      dnsbl().findings.find((f) => f.zone === "bl.test"),
      {
        status: "clean",
        codes: ["127.0.0.12"],
        zone: "bl.test",
        target: "ip",
        name: "192.0.2.92",
        score: 10,
        allow: false,
        broken: null,
      },
    );
  });

  test("an IPv6 client is looked up by nibbles", async () => {
    const { mail } = await tryMail(gw.port, "2001:db8::99");
    assert.equal(mail.raw, "554 5.7.1 Service unavailable; 2001:db8::99 blocked using bl.test; v6 listed");
  });

  test("domain list: the HELO name", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.10", { helo: "bad-helo.test" });
    assert.equal(mail.raw, "554 5.7.1 Service unavailable; bad-helo.test blocked using dbl.test; helo name listed");
    assert.deepEqual(
      dnsbl().findings.map((f) => [f.zone, f.target, f.status]),
      [
        ["wl.test", "ip", "clean"],
        ["bl.test", "ip", "clean"],
        ["dbl.test", "helo", "listed"],
      ],
    );
  });

  test("domain list: the sender domain, at MAIL", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.10", { from: "a@spammer.test" });
    assert.equal(mail.raw, "554 5.7.1 Service unavailable; spammer.test blocked using dbl.test; sender domain listed");
  });

  test("domain list: the forward-confirmed PTR name", async () => {
    const { mail } = await tryMail(gw.port, "192.0.2.50");
    assert.equal(mail.raw, "554 5.7.1 Service unavailable; listed-ptr.sender.test blocked using dbl.test; 127.0.1.4");
    assert.equal(dnsbl().findings.find((f) => f.target === "ptr")?.name, "listed-ptr.sender.test");
  });
});

describe("dnsbl: the policy decides", () => {
  let dns: TestDnsServer;
  before(async () => {
    dns = await startDnsServer(ZONES);
  });
  after(() => dns.close());

  test("listed only scored when the policy says score", async () => {
    const gw = await startGateway(
      gatewayPolicy(`
  - plugin: dnsbl
    zones: [{ zone: bl.test, score: 10, verdict: true }]
    on: { listed: { score: 5 } }
`),
      { dnsServers: [dns.address] },
    );
    try {
      const { mail } = await tryMail(gw.port, "192.0.2.99");
      assert.equal(mail.code, 250);
      await closedConnections(gw, 1);
      assert.equal(gw.transactions().at(-1)?.score, 15, "10 for the zone, 5 for the verdict");
      assert.equal(lastFinding<DnsblFacts>(gw, "dnsbl").txt, "listed: see http://bl.test/192.0.2.99");
    } finally {
      await gw.stop();
    }
  });

  test("a policy reply template gets {dnsbl.zone} and {dnsbl.txt}", async () => {
    const gw = await startGateway(
      gatewayPolicy(`
  - plugin: dnsbl
    zones: [{ zone: bl.test }]
    on: { listed: { reject: "550 5.7.1 [{client.ip}] is on {dnsbl.zone}: {dnsbl.txt}" } }
`),
      { dnsServers: [dns.address] },
    );
    try {
      const { mail } = await tryMail(gw.port, "192.0.2.99");
      assert.equal(mail.raw, "550 5.7.1 [192.0.2.99] is on bl.test: listed: see http://bl.test/192.0.2.99");
    } finally {
      await gw.stop();
    }
  });

  test("a zone that lists everything, 127.0.0.1 included, is broken: ignored and reported, no rejection", async () => {
    const gw = await startGateway(
      gatewayPolicy(`
  - plugin: dnsbl
    zones: [{ zone: broken.test, score: 10 }]
`),
      { dnsServers: [dns.address] },
    );
    try {
      for (const ip of ["192.0.2.10", "192.0.2.11"]) assert.equal((await tryMail(gw.port, ip)).mail.code, 250);
      const facts = lastFinding<DnsblFacts>(gw, "dnsbl");
      assert.deepEqual(facts.broken, ["broken.test"]);
      assert.equal(facts.findings[0].status, "listed");
      assert.equal(facts.findings[0].broken, "test-point");
      assert.equal(facts.zone, null);
      assert.equal(dns.count("1.0.0.127.broken.test", "A"), 1, "the test point is cached like any answer");
      const warnings = gw.logs.filter((line) => line.event === "dnsbl-zone-broken");
      assert.deepEqual(
        warnings.map((line) => [line.zone, line.reason]),
        [["broken.test", "test-point"]],
      );
      await closedConnections(gw, 2);
      assert.equal(gw.transactions().at(-1)?.score, 0);
    } finally {
      await gw.stop();
    }
  });

  test("zones with a score add up and refuse nothing on their own; verdict: true makes one decide", async () => {
    const gw = await startGateway(
      gatewayPolicy(`
  - plugin: dnsbl
    zones: [{ zone: bl.test, score: 4 }, { zone: dbl.test, type: domain, score: 3 }]
`),
      { dnsServers: [dns.address] },
    );
    try {
      const { mail } = await tryMail(gw.port, "192.0.2.99", { helo: "bad-helo.test" });
      assert.equal(mail.code, 250, "no single scored listing refuses");
      await closedConnections(gw, 1);
      assert.equal(gw.transactions().at(-1)?.score, 7, "both listings count");
      const facts = lastFinding<DnsblFacts>(gw, "dnsbl");
      assert.equal(facts.zone, "dbl.test", "the latest listing is named, for rules and replies");
      assert.equal(facts.listed, true);
    } finally {
      await gw.stop();
    }
    const deciding = await startGateway(
      gatewayPolicy(`
  - plugin: dnsbl
    zones: [{ zone: bl.test, score: 4, verdict: true }]
`),
      { dnsServers: [dns.address] },
    );
    try {
      assert.equal((await tryMail(deciding.port, "192.0.2.99")).mail.code, 554);
    } finally {
      await deciding.stop();
    }
  });

  test("a zone that refuses the resolver (127.255.255.254 for everything) is ignored: mail flows, log, metric", async () => {
    const gw = await startGateway(
      gatewayPolicy(`
  - plugin: dnsbl
    zones: [{ zone: refusing.test }]
`),
      { dnsServers: [dns.address] },
    );
    try {
      for (const ip of ["192.0.2.10", "192.0.2.11"]) assert.equal((await tryMail(gw.port, ip)).mail.code, 250);
      const facts = lastFinding<DnsblFacts>(gw, "dnsbl");
      assert.deepEqual(facts.broken, ["refusing.test"]);
      assert.deepEqual(
        facts.findings.map((f) => [f.status, f.broken]),
        [["error", "refused"]],
      );
      const warnings = gw.logs.filter((line) => line.event === "dnsbl-zone-broken");
      assert.deepEqual(
        warnings.map((line) => [line.level, line.zone, line.reason, line.msg]),
        [
          [
            40, // warn
            "refusing.test",
            "refused",
            "your resolver is refused by refusing.test: use your own recursive resolver (not a public one) in dns.servers; ignoring the zone",
          ],
        ],
      );
      await closedConnections(gw, 2);
      const scraped =
        (await gw.gateway.metrics?.registry.getSingleMetricAsString("portcullis_dnsbl_broken_lookups_total")) ?? "";
      assert.match(scraped, /portcullis_dnsbl_broken_lookups_total\{zone="refusing.test",reason="refused"\} 2/);
    } finally {
      await gw.stop();
    }
  });
});
