/**
 * SPF conformance (RFC 7208) through the spf plugin, with answers from the in-process DNS server
 * over real UDP: each case is a rule of the RFC that mailauth 4.13.3 or Node's c-ares broke, with
 * the RFC's result. Two groups hold the reasons for our own code to their upgrades: mailauth's
 * `spf` run on the same cases still deviates where its evaluation does (else core/toolkit/spf.ts
 * may go), and c-ares still refuses the names and answers core/dns/wire-query.ts sends for it.
 */
import assert from "node:assert/strict";
import { promises as nodeDns } from "node:dns";
import { after, before, describe, test } from "node:test";
import { runPlugin } from "../../app/testkit.js";
import { createResolver, type DnsResolver } from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { spf as mailauthSpf } from "../../core/toolkit/mailauth.js";
import type { SpfFacts } from "../../plugins/shared/sender-auth/facts.js";
import { mailauthResolver } from "../../plugins/shared/sender-auth/message.js";
import spfPlugin from "../../plugins/spf/index.js";

const CLIENT = "192.0.2.10";
const LONG_LABEL = "a".repeat(64);

interface Case {
  /** The test's name: the RFC section and the rule. */
  readonly rule: string;
  readonly sender: string;
  readonly helo?: string;
  readonly ip?: string;
  readonly expected: string;
  /** What mailauth 4.13.3's own evaluation gives where it differs, through our resolver (which fixes what c-ares got wrong). */
  readonly mailauth?: string;
}

const CASES: readonly Case[] = [
  {
    rule: "RFC 7208 §4.6: a bare `ip6` mechanism after a matching `-all` → permerror",
    sender: "a@bare-ip6.conform.test",
    expected: "permerror",
    mailauth: "fail",
  },
  {
    rule: "RFC 7208 §4.6: an unknown term after a matching mechanism → permerror",
    sender: "a@late-error.conform.test",
    expected: "permerror",
  },
  {
    rule: "RFC 7208 §6: two `exp=` modifiers → permerror",
    sender: "a@two-exp.conform.test",
    expected: "permerror",
    mailauth: "fail",
  },
  {
    rule: "RFC 7208 §6.2: `exp=-all` is not a domain-spec → permerror",
    sender: "a@exp-all.conform.test",
    expected: "permerror",
    mailauth: "neutral",
  },
  {
    rule: "RFC 7208 §7.3: an `exp=` domain-spec with an explanation-only macro letter (%{r}) → permerror",
    sender: "a@exp-macro.conform.test",
    expected: "permerror",
    mailauth: "fail",
  },
  {
    rule: "RFC 7208 §7.1, §4.8: %{H} of a domain-literal HELO is not checked after expansion, it just does not exist → fail",
    sender: "a@helo-macro.conform.test",
    helo: `[${CLIENT}]`,
    expected: "fail",
    mailauth: "permerror",
  },
  {
    rule: "RFC 7208 §7.1, §4.8: %{H} of a HELO that is no domain name (spaces, quote) does not exist → fail",
    sender: "a@helo-macro.conform.test",
    helo: "JUMPIN' JUPITER",
    expected: "fail",
    mailauth: "permerror",
  },
  {
    rule: "RFC 7208 §4.3, §7.3: a macro expanding to a label over 63 octets names nothing → fail",
    sender: "a@long-macro.conform.test",
    helo: "%".repeat(22),
    expected: "fail",
  },
  {
    rule: "RFC 7208 §7.3: %{p} is the client's validated PTR name, not the sender's domain → pass",
    sender: "a@p-macro.conform.test",
    expected: "pass",
    mailauth: "fail",
  },
  {
    rule: 'RFC 7208 §7.3: %{p} of a client whose PTR name does not validate is "unknown" → pass',
    sender: "a@p-macro-unknown.conform.test",
    ip: "192.0.2.77",
    expected: "pass",
    mailauth: "fail",
  },
  {
    rule: "RFC 7208 §4.3, §5: an `a:` target with a label over 63 octets does not exist → fail",
    sender: "a@long-label.conform.test",
    expected: "fail",
  },
  {
    rule: "RFC 7208 §4.3: a HELO identity with a label over 63 octets has no SPF record → none",
    sender: "",
    helo: `${LONG_LABEL}.conform.test`,
    expected: "none",
  },
  {
    rule: "RFC 7208 §7.1 (RFC 2181 §11): an `a:` target with `:` and `/` is queried and matches → pass",
    sender: "a@colon-a.conform.test",
    expected: "pass",
  },
  {
    rule: "RFC 7208 §7.1 (RFC 2181 §11): an `include:` target with `:` is queried and its record applies → pass",
    sender: "a@colon-include.conform.test",
    expected: "pass",
  },
  {
    rule: "RFC 7208 §7.3: a target with a space (from %_) is queried and matches → pass",
    sender: "a@space-macro.conform.test",
    expected: "pass",
  },
  {
    rule: "RFC 7208 §4.5 (RFC 1035 §3.3.14): a TXT record with no strings beside the SPF record is ignored → pass",
    sender: "a@empty-txt.conform.test",
    expected: "pass",
  },
  {
    rule: "RFC 7208 §4.5: a TXT record with no strings, alone, is no SPF record → none",
    sender: "a@only-empty-txt.conform.test",
    expected: "none",
  },
];

describe("SPF conformance (RFC 7208)", () => {
  let server: TestDnsServer;
  let dns: DnsResolver;

  before(async () => {
    server = await startDnsServer({
      "bare-ip6.conform.test": { TXT: ["v=spf1 -all ip6"] },
      "late-error.conform.test": { TXT: [`v=spf1 ip4:${CLIENT} -all moo`] },
      "two-exp.conform.test": { TXT: ["v=spf1 exp=one.conform.test exp=two.conform.test -all"] },
      "exp-all.conform.test": { TXT: ["v=spf1 exp=-all"] },
      "exp-macro.conform.test": { TXT: ["v=spf1 -all exp=%{r}.conform.test"] },
      "helo-macro.conform.test": { TXT: ["v=spf1 a:%{H} -all"] },
      "long-macro.conform.test": { TXT: ["v=spf1 a:%{H}.bar.conform.test -all"] },
      "p-macro.conform.test": { TXT: ["v=spf1 exists:%{p}.ok.conform.test -all"] },
      "p-macro-unknown.conform.test": { TXT: ["v=spf1 exists:%{p}.ok.conform.test -all"] },
      "10.2.0.192.in-addr.arpa": { PTR: ["mx.conform.test"] },
      "77.2.0.192.in-addr.arpa": { PTR: ["elsewhere.conform.test"] },
      "elsewhere.conform.test": { A: ["198.51.100.1"] },
      "mx.conform.test": { A: [CLIENT] },
      "mx.conform.test.ok.conform.test": { A: ["127.0.0.2"] },
      "unknown.ok.conform.test": { A: ["127.0.0.2"] },
      "long-label.conform.test": { TXT: [`v=spf1 a:${LONG_LABEL}.conform.test -all`] },
      "colon-a.conform.test": { TXT: ["v=spf1 a:foo:bar/baz.conform.test -all"] },
      "foo:bar/baz.conform.test": { A: [CLIENT] },
      "colon-include.conform.test": { TXT: ["v=spf1 include:inc:colon.conform.test -all"] },
      "inc:colon.conform.test": { TXT: [`v=spf1 ip4:${CLIENT} -all`] },
      "space-macro.conform.test": { TXT: ["v=spf1 a:with%_space.conform.test -all"] },
      "with space.conform.test": { A: [CLIENT] },
      "empty-txt.conform.test": { TXT: [[], `v=spf1 ip4:${CLIENT} -all`] },
      "only-empty-txt.conform.test": { TXT: [[]] },
    });
    dns = createResolver({ servers: [server.address], timeoutMs: 1000 });
  });
  after(() => server.close());

  async function pluginResult(input: Case): Promise<string> {
    const result = await runPlugin(
      spfPlugin,
      {},
      { ip: input.ip ?? CLIENT, helo: input.helo ?? "client.test", from: input.sender, to: ["rcpt@example.test"] },
      { dns },
    );
    return (result.facts.spf as SpfFacts).result;
  }

  for (const input of CASES) {
    test(input.rule, async () => {
      assert.equal(await pluginResult(input), input.expected);
    });
  }

  test("RFC 7208 §4.3, §5: names that cannot exist are not sent to DNS; names c-ares refuses are", async () => {
    const uncached = createResolver({ servers: [server.address], timeoutMs: 1000, cacheSize: 0 });
    server.resetQueries();
    for (const sender of ["a@long-label.conform.test", "a@colon-a.conform.test"]) {
      await runPlugin(spfPlugin, {}, { ip: CLIENT, from: sender, to: ["rcpt@example.test"] }, { dns: uncached });
    }
    assert.equal(
      server.queries.filter((query) => query.name.startsWith(LONG_LABEL)).length,
      0,
      "a label over 63 octets is never asked",
    );
    assert.equal(server.count("foo:bar/baz.conform.test", "A"), 1, "a name with : and / is asked over the wire");
  });

  describe("c-ares still refuses what our own query path sends (when one of these fails, a Node upgrade fixed it)", () => {
    const cares = () => {
      const resolver = new nodeDns.Resolver({ timeout: 1000, tries: 1 });
      resolver.setServers([server.address]);
      return resolver;
    };
    for (const name of ["foo:bar/baz.conform.test", "with space.conform.test"]) {
      test(`"${name}" → EBADNAME`, async () => {
        await assert.rejects(cares().resolve4(name), { code: "EBADNAME" });
      });
    }
    test("a TXT answer holding a record with no strings → EBADRESP", async () => {
      await assert.rejects(cares().resolveTxt("empty-txt.conform.test"), { code: "EBADRESP" });
    });
  });

  describe("mailauth 4.13.3 still deviates (when one of these fails, an upgrade follows the RFC there)", () => {
    for (const input of CASES.filter((candidate) => candidate.mailauth !== undefined)) {
      test(`${input.rule} — mailauth gives ${input.mailauth}`, async () => {
        const checked = await mailauthSpf({
          ip: input.ip ?? CLIENT,
          helo: input.helo ?? "client.test",
          sender: input.sender || undefined,
          mta: "gateway.test",
          resolver: mailauthResolver(dns),
        });
        assert.equal(checked.status.result, input.mailauth);
      });
    }
  });
});
