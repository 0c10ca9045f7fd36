/**
 * DKIM conformance (RFC 6376, RFC 8301, RFC 5322) through the dkim plugin, with key records from
 * the in-process DNS server over real UDP: each case is a rule mailauth 4.13.3 breaks, with the
 * RFC's result. The last group runs mailauth's own code for each and asserts it still deviates:
 * when one of those fails, an upgrade follows the RFC and our fix (core/toolkit/dkim-key.ts,
 * core/toolkit/message-end.ts, the signing time in core/toolkit/mailauth.ts) may go.
 */
import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { createRequire } from "node:module";
import { after, before, describe, test } from "node:test";
import { runPlugin } from "../../app/testkit.js";
import { createResolver, type DnsResolver } from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import {
  dkimSign,
  mailauthFinish,
  mailauthGetPublicKey,
  mailauthSignerFinalize,
  preloadMailauth,
} from "../../core/toolkit/mailauth.js";
import dkimPlugin from "../../plugins/dkim/index.js";
import type { DkimFacts } from "../../plugins/shared/sender-auth/facts.js";
import { mailauthResolver } from "../../plugins/shared/sender-auth/message.js";
import { withTurningSeconds } from "../fixtures/clock.js";
import { generateKey, type TestKey } from "../fixtures/keys.js";
import { message, signed } from "../fixtures/sender-auth.js";

// mailauth is loaded (and its key lookup and message end put right) on first use; this file
// reaches into its verifier below, which must find the seam's versions in place.
preloadMailauth();
const require = createRequire(import.meta.url);
const { DkimVerifier } = require("mailauth/lib/dkim/dkim-verifier.js") as {
  DkimVerifier: new (options: object) => NodeJS.WritableStream & { results: Array<{ signingDomain?: string }> };
};
const { DkimSigner } = require("mailauth/lib/dkim/dkim-signer.js") as {
  DkimSigner: new (options: object) => NodeJS.WritableStream & { signatureHeaders: string[] };
};
const { writeToStream } = require("mailauth/lib/tools.js") as {
  writeToStream(stream: NodeJS.WritableStream, input: string): Promise<void>;
};

const DOMAIN = "sender.test";

/** The key record of `key` with `p=` holding the RSA key as PKCS#1 RSAPublicKey instead of SubjectPublicKeyInfo. */
function pkcs1Record(key: TestKey): string {
  const der = createPublicKey(key.privateKey).export({ type: "pkcs1", format: "der" });
  return `v=DKIM1; k=rsa; p=${der.toString("base64")}`;
}

describe("DKIM conformance (RFC 6376)", () => {
  let server: TestDnsServer;
  let dns: DnsResolver;
  let key: TestKey;
  /** The same message signed with each selector. */
  const signedWith: Record<string, string> = {};

  before(async () => {
    key = generateKey("rsa");
    server = await startDnsServer({
      [`good._domainkey.${DOMAIN}`]: { TXT: [key.txt] },
      [`other-service._domainkey.${DOMAIN}`]: { TXT: [`${key.txt}; s=other`] },
      [`email-listed._domainkey.${DOMAIN}`]: { TXT: [`${key.txt}; s=other:email`] },
      [`star._domainkey.${DOMAIN}`]: { TXT: [`${key.txt}; s=*`] },
      [`pkcs1._domainkey.${DOMAIN}`]: { TXT: [pkcs1Record(key)] },
      // `missing._domainkey` is not published at all.
    });
    dns = createResolver({ servers: [server.address], timeoutMs: 1000 });
    const raw = message({ from: `Alice <alice@${DOMAIN}>`, body: "Quarterly numbers attached.\r\n" });
    for (const selector of ["good", "other-service", "email-listed", "star", "pkcs1", "missing"]) {
      signedWith[selector] = await signed(raw, { domain: DOMAIN, selector, privateKey: key.privateKey });
    }
  });
  after(() => server.close());

  async function verify(data: string): Promise<DkimFacts> {
    const result = await runPlugin(
      dkimPlugin,
      {},
      { ip: "192.0.2.10", from: `alice@${DOMAIN}`, to: ["rcpt@example.test"], message: data },
      { dns },
    );
    return result.facts.dkim as DkimFacts;
  }

  test("a key record without s= (all services) verifies: pass", async () => {
    assert.equal((await verify(signedWith.good)).result, "pass");
  });

  test("RFC 6376 §3.6.1: a key record whose s= names neither email nor * is ignored, as if absent", async () => {
    const ignored = (await verify(signedWith["other-service"])).signatures[0];
    const absent = (await verify(signedWith.missing)).signatures[0];
    assert.notEqual(ignored.result, "pass");
    assert.deepEqual(
      { result: ignored.result, reason: ignored.reason },
      { result: absent.result, reason: absent.reason },
    );
  });

  test("RFC 6376 §3.6.1: s= listing email among other services, or *, is for email: pass", async () => {
    assert.equal((await verify(signedWith["email-listed"])).result, "pass");
    assert.equal((await verify(signedWith.star)).result, "pass");
  });

  test("RFC 6376 §3.6.1, RFC 8301 §3.2: p= as a PKCS#1 RSAPublicKey is read as other verifiers do: pass", async () => {
    assert.equal((await verify(signedWith.pkcs1)).result, "pass");
  });

  test("RFC 5322 §3.5: a message of header fields only, with no empty line and no body, verifies: pass", async () => {
    // Signed with its empty line, then sent without it: the empty body hashes the same either way.
    const headerOnly = signedWith.good.replace(/\r\n\r\n[\s\S]*$/, "\r\n");
    const withEmptyLine = `${headerOnly}\r\n`;
    const resigned = await signed(withEmptyLine.replace(/^DKIM-Signature:[\s\S]*?\r\n(?=\S)/, ""), {
      domain: DOMAIN,
      selector: "good",
      privateKey: key.privateKey,
    });
    const sent = resigned.replace(/\r\n\r\n$/, "\r\n");
    assert.ok(!sent.includes("\r\n\r\n"), "the message has no empty line");
    const facts = await verify(sent);
    assert.equal(facts.signatures.length, 1, "the signature in the header block is found");
    // The signature's own result and reason, so an unexpected one says what the verifier saw.
    assert.deepEqual(
      facts.signatures.map((signature) => [signature.result, signature.reason]),
      [["pass", null]],
    );
  });

  /** `raw` signed with the `good` key by the toolkit's dkimSign, given no signing time. */
  async function signedUntimed(raw: string): Promise<string> {
    const result = await dkimSign(raw, {
      signatureData: [{ signingDomain: DOMAIN, selector: "good", privateKey: key.privateKey }],
    } as unknown as Parameters<typeof dkimSign>[1]);
    return result.signatures + raw;
  }

  test("RFC 6376 §3.5 t=: a signature made with no time given, while the clock turns a second, says the t= it signed: pass", async () => {
    const raw = message({ from: `Alice <alice@${DOMAIN}>` });
    const sent = await withTurningSeconds(() => signedUntimed(raw));
    const facts = await verify(sent);
    assert.deepEqual(
      facts.signatures.map((signature) => [signature.result, signature.reason]),
      [["pass", null]],
    );
  });

  describe("mailauth 4.13.3 still deviates (when one of these fails, an upgrade follows the RFC there)", () => {
    test("RFC 6376 §3.6.1 — mailauth uses a key record whose s= is not for email", async () => {
      const answer = await mailauthGetPublicKey(
        "DKIM",
        `other-service._domainkey.${DOMAIN}`,
        1024,
        mailauthResolver(dns),
      );
      assert.match(answer.rr, /s=other/);
    });

    test("RFC 6376 §3.6.1 — mailauth calls a PKCS#1 p= an unknown key type", async () => {
      await assert.rejects(mailauthGetPublicKey("DKIM", `pkcs1._domainkey.${DOMAIN}`, 1024, mailauthResolver(dns)), {
        code: "EINVALIDTYPE",
      });
    });

    test("RFC 5322 §3.5 — mailauth's message end finds no signature in a header-only message", async () => {
      const headerOnly = signedWith.good.replace(/\r\n\r\n[\s\S]*$/, "\r\n");
      const verifier = new DkimVerifier({ resolver: mailauthResolver(dns) });
      Object.assign(verifier, { finish: mailauthFinish });
      await writeToStream(verifier, headerOnly);
      assert.equal(verifier.results.filter((row) => row.signingDomain).length, 0);
    });

    test("RFC 6376 §3.5 t= — mailauth's signer, given no time, writes a t= other than the one it signed when the clock turns", async () => {
      const raw = message({ from: `Alice <alice@${DOMAIN}>` });
      const signer = new DkimSigner({
        signatureData: [{ signingDomain: DOMAIN, selector: "good", privateKey: key.privateKey }],
      });
      Object.assign(signer, { finalize: mailauthSignerFinalize });
      await withTurningSeconds(() => writeToStream(signer, raw));
      const facts = await verify(signer.signatureHeaders.join("\r\n") + "\r\n" + raw);
      assert.deepEqual(
        facts.signatures.map((signature) => [signature.result, signature.reason]),
        [["fail", "bad signature"]],
      );
    });
  });
});
