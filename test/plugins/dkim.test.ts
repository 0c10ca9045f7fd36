/**
 * dkim through the wire: RSA and Ed25519 signatures pass; one changed body byte makes each of them
 * fail (mailauth's "neutral" for a body hash mismatch is reported as fail), in the findings, in
 * Authentication-Results, and for a policy that refuses DKIM failures.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { generateKey, type TestKey } from "../fixtures/keys.js";
import { type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { fieldValues, message, parseAuthResults, relayAs, sendAs, signed } from "../fixtures/sender-auth.js";

const CLIENT = "192.0.2.10";

describe("dkim", () => {
  let dns: TestDnsServer;
  let hop: NextHop;
  let observe: TestGateway;
  let enforce: TestGateway;
  let rsa: TestKey;
  let ed25519: TestKey;
  let original: string;

  const policy = (on: string) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test] }
pipeline:
  - { plugin: dkim${on} }
  - plugin: auth-results
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`;

  before(async () => {
    rsa = generateKey("rsa");
    ed25519 = generateKey("ed25519");
    dns = await startDnsServer({
      "rsa1._domainkey.sender.test": { TXT: [rsa.txt] },
      "ed1._domainkey.sender.test": { TXT: [ed25519.txt] },
    });
    hop = await startNextHop();
    observe = await startGateway(policy(""), { dnsServers: [dns.address] });
    enforce = await startGateway(policy(', on: { fail: { reject: "550 5.7.20 DKIM signature did not verify" } }'), {
      dnsServers: [dns.address],
    });
    const raw = message({ from: "Alice <alice@sender.test>", body: "Quarterly numbers attached.\r\n" });
    const once = await signed(raw, { domain: "sender.test", selector: "rsa1", privateKey: rsa.privateKey });
    original = await signed(once, { domain: "sender.test", selector: "ed1", privateKey: ed25519.privateKey });
  });
  after(async () => {
    await observe.stop();
    await enforce.stop();
    await hop.close();
    await dns.close();
  });

  async function deliver(data: string) {
    const received = await relayAs(observe.port, hop, CLIENT, {
      from: "alice@sender.test",
      to: ["rcpt@example.test"],
      data,
    });
    const all = observe.transactions();
    const verdict = (all[all.length - 1].trace as Array<{ plugin: string; verdict: string }>)[0].verdict;
    const [ar] = fieldValues(received.raw, "Authentication-Results");
    return { verdict, results: parseAuthResults(ar).results.filter((result) => result.method === "dkim") };
  }

  test("an RSA and an Ed25519 signature both pass", async () => {
    const { verdict, results } = await deliver(original);
    assert.equal(verdict, "pass");
    assert.equal(results.length, 2);
    const byAlgorithm = Object.fromEntries(results.map((result) => [result.properties["header.a"], result]));
    for (const [algorithm, selector] of [
      ["rsa-sha256", "rsa1"],
      ["ed25519-sha256", "ed1"],
    ]) {
      const result = byAlgorithm[algorithm];
      assert.equal(result?.result, "pass", algorithm);
      assert.equal(result.comment, null);
      assert.equal(result.properties["header.d"], "sender.test");
      assert.equal(result.properties["header.s"], selector);
      assert.equal(result.properties["header.b"].length, 8);
    }
  });

  test("one changed body byte fails every signature, with the reason", async () => {
    const tampered = original.replace("Quarterly numbers", "Quarterly Numbers");
    assert.notEqual(tampered, original);
    const { verdict, results } = await deliver(tampered);
    assert.equal(verdict, "fail");
    assert.equal(results.length, 2);
    for (const result of results) {
      assert.equal(result.result, "fail");
      assert.equal(result.comment, "body hash did not verify");
    }
  });

  test("a policy that refuses DKIM failures refuses the changed message, not the original", async () => {
    const tampered = original.replace("Quarterly numbers", "Quarterly Numbers");
    const refused = await sendAs(enforce.port, CLIENT, {
      from: "alice@sender.test",
      to: ["rcpt@example.test"],
      data: tampered,
    });
    assert.equal(refused.data?.raw, "550 5.7.20 DKIM signature did not verify");
    const accepted = await sendAs(enforce.port, CLIENT, {
      from: "alice@sender.test",
      to: ["rcpt@example.test"],
      data: original,
    });
    assert.equal(accepted.data?.code, 250);
  });

  test("an unsigned message is dkim=none", async () => {
    const { verdict, results } = await deliver(message({ from: "<alice@sender.test>" }));
    assert.equal(verdict, "none");
    assert.deepEqual(results, [{ method: "dkim", result: "none", comment: null, properties: {} }]);
  });

  test("a DNS failure for the key is temperror", async () => {
    dns.load({ "down._domainkey.sender.test": "servfail" });
    const data = await signed(message({ from: "<alice@sender.test>" }), {
      domain: "sender.test",
      selector: "down",
      privateKey: rsa.privateKey,
    });
    const { verdict, results } = await deliver(data);
    assert.equal(verdict, "temperror");
    assert.equal(results[0].result, "temperror");
    assert.equal(results[0].properties["header.s"], "down");
  });
});
