/**
 * core/toolkit/mailauth.ts memoizes mailauth's DKIM key parse by the key record's text. Through the wire:
 * repeated signatures with one key parse it once and still pass although every message asks DNS for
 * the record; a rotated key is used at once (and the old signature then fails); a broken record is
 * reported the same way every time. If a mailauth upgrade moves the seam (its verifier no longer
 * taking `getPublicKey` from `lib/tools.js`), the parse counts here stop moving and these fail.
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { createResolver } from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { dkimVerify, keyCacheActive, mailauthProcessChunk, publicKeyParses } from "../../core/toolkit/mailauth.js";
import { mailauthResolver } from "../../plugins/shared/sender-auth/message.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { generateKey, type TestKey } from "../fixtures/keys.js";
import { type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { fieldValues, message, parseAuthResults, relayAs, signed } from "../fixtures/sender-auth.js";

const { MessageParser } = createRequire(import.meta.url)("mailauth/lib/dkim/message-parser.js") as {
  MessageParser: { prototype: { processChunk: typeof mailauthProcessChunk } };
};

const CLIENT = "192.0.2.10";
const SELECTOR = "s1._domainkey.sender.test";

describe("mailauth DKIM key memo", () => {
  let dns: TestDnsServer;
  let hop: NextHop;
  let gateway: TestGateway;
  let first: TestKey;
  let second: TestKey;

  before(async () => {
    first = generateKey("rsa");
    second = generateKey("rsa");
    dns = await startDnsServer({ [SELECTOR]: { TXT: [first.txt] } });
    hop = await startNextHop();
    gateway = await startGateway(
      `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test] }
# No DNS cache: every message asks for the key record, so a changed record is seen at once.
dns: { cacheSize: 0 }
pipeline:
  - { plugin: dkim }
  - plugin: auth-results
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
      { dnsServers: [dns.address] },
    );
  });
  after(async () => {
    await gateway.stop();
    await hop.close();
    await dns.close();
  });

  async function dkimResult(key: TestKey, body: string) {
    const data = await signed(message({ from: "<alice@sender.test>", body }), {
      domain: "sender.test",
      selector: "s1",
      privateKey: key.privateKey,
    });
    const received = await relayAs(gateway.port, hop, CLIENT, {
      from: "alice@sender.test",
      to: ["rcpt@example.test"],
      data,
    });
    const [field] = fieldValues(received.raw, "Authentication-Results");
    const [result] = parseAuthResults(field).results.filter((entry) => entry.method === "dkim");
    return result;
  }

  test("is in effect: mailauth is loaded after the patch in the gateway's import order", () => {
    assert.equal(keyCacheActive(), true);
  });

  test("three messages signed with one key: all pass, the key is parsed once", async () => {
    const before = publicKeyParses();
    const queries = dns.count(SELECTOR, "TXT");
    for (const body of ["one\r\n", "two\r\n", "three\r\n"]) {
      const result = await dkimResult(first, body);
      assert.equal(result.result, "pass", body);
    }
    assert.equal(publicKeyParses() - before, 1);
    assert.equal(dns.count(SELECTOR, "TXT") - queries, 3);
  });

  test("a rotated key is used at once (the memo is keyed by the record); the old signature then fails", async () => {
    dns.load({ [SELECTOR]: { TXT: [second.txt] } });
    const before = publicKeyParses();
    assert.equal((await dkimResult(second, "rotated\r\n")).result, "pass");
    const stale = await dkimResult(first, "stale\r\n");
    assert.equal(stale.result, "fail");
    assert.equal(publicKeyParses() - before, 1);
  });

  test("a record without a key is reported the same way from the memo", async () => {
    dns.load({ [SELECTOR]: { TXT: ["v=DKIM1; k=rsa; p="] } });
    const before = publicKeyParses();
    for (const body of ["broken one\r\n", "broken two\r\n"]) {
      const result = await dkimResult(first, body);
      assert.equal(result.result, "neutral", body);
      assert.equal(result.comment, "invalid public key", body);
    }
    assert.equal(publicKeyParses() - before, 1);
  });
});

test("mailauth's results still show the key as PEM text", async () => {
  const key = generateKey("ed25519");
  const dns = await startDnsServer({ "s2._domainkey.sender.test": { TXT: [key.txt] } });
  try {
    const data = await signed(message({ from: "<alice@sender.test>" }), {
      domain: "sender.test",
      selector: "s2",
      privateKey: key.privateKey,
    });
    const resolver = mailauthResolver(createResolver({ servers: [dns.address] }));
    for (let round = 0; round < 2; round++) {
      const { results } = await dkimVerify(Buffer.from(data), { resolver });
      assert.equal(results[0].status.result, "pass");
      assert.match(
        String((results[0] as { publicKey?: unknown }).publicKey),
        /^-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+-----END PUBLIC KEY-----\n$/,
      );
    }
  } finally {
    await dns.close();
  }
});

describe("mailauth header scan (indexOf instead of byte by byte)", () => {
  test("gives the same verification results as mailauth's own scan, however the message is split", async () => {
    const key = generateKey("rsa");
    const dns = await startDnsServer({ "s3._domainkey.sender.test": { TXT: [key.txt] } });
    const resolver = mailauthResolver(createResolver({ servers: [dns.address] }));
    const crlf = await signed(message({ from: "<alice@sender.test>", body: "one\r\n\r\ntwo\r\n" }), {
      domain: "sender.test",
      selector: "s3",
      privateKey: key.privateKey,
    });
    const messages = {
      crlf,
      "bare LF": crlf.replace(/\r\n/g, "\n"),
      "mixed line ends": crlf.replace("\r\n\r\n", "\n\r\n"),
      "no body": crlf.slice(0, crlf.indexOf("\r\n\r\n") + 2),
      "empty body": crlf.slice(0, crlf.indexOf("\r\n\r\n") + 4),
    };
    const parser = MessageParser.prototype;
    const ours = parser.processChunk;
    const checkedAt = new Date();
    const verify = async (raw: Buffer, at: number) => {
      const stream = Readable.from(
        [raw.subarray(0, at), raw.subarray(at)].filter((part) => part.length > 0),
        {
          objectMode: false,
        },
      );
      // One fixed "now" for both scans: mailauth judges the signature time against it.
      const { results, headerFrom } = await dkimVerify(stream, { resolver, curTime: checkedAt });
      return JSON.stringify({ results, headerFrom });
    };
    try {
      for (const [name, text] of Object.entries(messages)) {
        const raw = Buffer.from(text);
        const end = text.search(/\r?\n\r?\n/);
        // Every split around the end of the header block, and a few elsewhere.
        const splits = [0, 1, 7, Math.floor(raw.length / 2), raw.length];
        for (let at = Math.max(0, end - 3); at <= Math.min(raw.length, end + 6); at++) splits.push(at);
        for (const at of splits) {
          parser.processChunk = mailauthProcessChunk;
          const expected = await verify(raw, at);
          parser.processChunk = ours;
          assert.equal(await verify(raw, at), expected, `${name}, split at ${at}`);
        }
      }
      assert.match(await verify(Buffer.from(crlf), 10), /"result":"pass"/);
    } finally {
      parser.processChunk = ours;
      await dns.close();
    }
  });
});
