/**
 * ARC conformance (RFC 8617, with RFC 6376 §3.2 tag lists) through the arc plugin, with keys from
 * the in-process DNS server over real UDP. Each malformed ARC-Seal is signed over its malformed
 * text, as the ARC test suite's `as_format_tags_*` cases are, so only its syntax is wrong: the
 * chain must fail (RFC 8617 §5.2). A well-formed seal made the same way passes, which shows the
 * signing here is right. The last group runs mailauth's own chain validation on each and asserts
 * it still passes them: when one fails, an upgrade follows the RFC and core/toolkit/arc-seal.ts
 * may go.
 */
import assert from "node:assert/strict";
import { sign } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { runPlugin } from "../../app/testkit.js";
import { createResolver, type DnsResolver } from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { arc, dkimVerify, sealMessage } from "../../core/toolkit/mailauth.js";
import arcPlugin from "../../plugins/arc/index.js";
import type { ArcFacts } from "../../plugins/shared/sender-auth/facts.js";
import { mailauthResolver } from "../../plugins/shared/sender-auth/message.js";
import { withTurningSeconds } from "../fixtures/clock.js";
import { generateKey, type TestKey } from "../fixtures/keys.js";
import { message } from "../fixtures/sender-auth.js";

/** RFC 6376 §3.4.2 relaxed header canonicalization of one field ("Name: value", maybe folded). */
function relaxed(field: string): string {
  const colon = field.indexOf(":");
  const value = field
    .slice(colon + 1)
    .replace(/\r\n/g, "")
    .replace(/[ \t]+/g, " ")
    .trim();
  return `${field.slice(0, colon).trim().toLowerCase()}:${value}`;
}

const MALFORMED: ReadonlyArray<{ readonly rule: string; readonly mutate: (tags: string) => string }> = [
  { rule: "a duplicated tag (i= twice)", mutate: (tags) => tags.replace("i=1;", "i=1; i=1;") },
  { rule: "an upper-case tag name (S= for s=)", mutate: (tags) => tags.replace(/(^|;)(\s*)s=/, "$1$2S=") },
  { rule: "an invalid tag name (_=)", mutate: (tags) => tags.replace("i=1;", "i=1; _=x;") },
  { rule: "an empty tag between ;;", mutate: (tags) => tags.replace("i=1;", "i=1;;") },
];

describe("ARC conformance (RFC 8617)", () => {
  let server: TestDnsServer;
  let dns: DnsResolver;
  let sealer: TestKey;
  let body: string;
  let sealFields: { aar: string; ams: string; as: string };

  before(async () => {
    sealer = generateKey("rsa");
    server = await startDnsServer({ "arc._domainkey.list.test": { TXT: [sealer.txt] } });
    dns = createResolver({ servers: [server.address], timeoutMs: 1000 });
    body = message({ from: "Alice <alice@sender.test>", to: "<members@list.test>", body: "Meeting at noon.\r\n" });
    const seal = await sealMessage(body, {
      signingDomain: "list.test",
      selector: "arc",
      privateKey: sealer.privateKey,
      authResults: "list.test; spf=pass smtp.mailfrom=alice@sender.test",
      cv: "none",
    } as Parameters<typeof sealMessage>[1]);
    const fields = seal
      .toString()
      .trimEnd()
      .split(/\r\n(?=\S)/);
    const named = (name: string) => fields.find((field) => field.toLowerCase().startsWith(`${name}:`))!;
    sealFields = {
      aar: named("arc-authentication-results"),
      ams: named("arc-message-signature"),
      as: named("arc-seal"),
    };
  });
  after(() => server.close());

  /** The message with an ARC-Seal whose tag list is `mutate`d, then signed (RFC 8617 §5.1.1) over that text. */
  function sealedWith(mutate: (tags: string) => string): string {
    const tags = sealFields.as
      .slice(sealFields.as.indexOf(":") + 1)
      .replace(/\r\n/g, "")
      .replace(/(^|;)\s*b=[^;]*/, "$1 b=");
    const unsigned = `ARC-Seal:${mutate(tags)}`;
    const signed = [relaxed(sealFields.aar), relaxed(sealFields.ams), relaxed(unsigned)].join("\r\n");
    const signature = sign("sha256", Buffer.from(signed), sealer.privateKey).toString("base64");
    const seal = unsigned.replace(/(^|;)(\s*)b=(?=;|$)/, `$1$2b=${signature}`);
    return `${seal}\r\n${sealFields.ams}\r\n${sealFields.aar}\r\n${body}`;
  }

  async function arcResult(data: string): Promise<ArcFacts> {
    const result = await runPlugin(
      arcPlugin,
      {},
      { ip: "192.0.2.30", from: "members@list.test", to: ["rcpt@example.test"], message: data },
      { dns },
    );
    return result.facts.arc as ArcFacts;
  }

  test("RFC 8617 §5.2: a well-formed seal signed the same way validates: pass", async () => {
    assert.equal((await arcResult(sealedWith((tags) => tags))).result, "pass");
  });

  test("RFC 8617 §4.1.2, RFC 6376 §3.5 t=: a seal made with no time given, while the clock turns a second, validates: pass", async () => {
    const seal = await withTurningSeconds(() =>
      sealMessage(body, {
        signingDomain: "list.test",
        selector: "arc",
        privateKey: sealer.privateKey,
        authResults: "list.test; spf=pass smtp.mailfrom=alice@sender.test",
        cv: "none",
      } as Parameters<typeof sealMessage>[1]),
    );
    const facts = await arcResult(seal.toString() + body);
    assert.deepEqual([facts.result, facts.reason], ["pass", null]);
  });

  for (const { rule, mutate } of MALFORMED) {
    test(`RFC 8617 §5.2, RFC 6376 §3.2: an ARC-Seal with ${rule} fails the chain`, async () => {
      const facts = await arcResult(sealedWith(mutate));
      assert.equal(facts.result, "fail");
      assert.match(facts.reason ?? "", /ARC-Seal/);
    });
  }

  describe("mailauth 4.13.3 still deviates (when one of these fails, an upgrade follows the RFC there)", () => {
    for (const { rule, mutate } of MALFORMED) {
      test(`RFC 6376 §3.2 — mailauth passes an ARC-Seal with ${rule}`, async () => {
        const resolver = mailauthResolver(dns);
        const verified = await dkimVerify(sealedWith(mutate), { resolver });
        const chain = await arc((verified as unknown as { arc: Parameters<typeof arc>[0] }).arc, { resolver });
        assert.equal(chain.status.result, "pass");
      });
    }
  });
});
