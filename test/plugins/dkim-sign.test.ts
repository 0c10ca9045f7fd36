/**
 * dkim-sign through the wire: mail relayed for relay.networks leaves with RSA and Ed25519
 * signatures that mailauth verifies against the test DNS; mail from outside is not signed but,
 * with an ARC key, leaves sealed (and a second pass through adds a second, valid set). Also: the
 * whole authentication pipeline reads the message once, and a wrong key type fails at load.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { authenticate, dkimVerify } from "mailauth";
import { parsePolicy } from "../../app/catalogue.js";
import { policyRuntime, simulate } from "../../app/testkit.js";
import { createResolver } from "../../core/dns/resolver.js";
import { SpooledMessage } from "../../core/smtp/message.js";
import type { TestDnsServer } from "../../core/testing/dns-server.js";
import type { TestGateway } from "../fixtures/gateway.js";
import { generateKey } from "../fixtures/keys.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { fieldValues, message, relayAs } from "../fixtures/sender-auth.js";

const INSIDE = "10.0.0.7";
const OUTSIDE = "192.0.2.10";

describe("dkim-sign", () => {
  let env: DnsRelay;
  let dns: TestDnsServer;
  let hop: NextHop;
  let gw: TestGateway;
  let resolve: (name: string, type: string) => Promise<string[][]>;

  const policy = (nextHop = hop) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test], networks: [10.0.0.0/8] }
pipeline:
  - plugin: spf
  - plugin: dkim
  - plugin: arc
  - plugin: dmarc
  - plugin: auth-results
  - plugin: dkim-sign
    keys:
      - { domain: corp.test, selector: r2026, key: keys/rsa.pem }
      - { domain: corp.test, selector: e2026, key: keys/ed25519.pem }
      - { domain: other.test, selector: o1, key: keys/rsa.pem }
    arcSeal: { domain: gw.test, selector: arc, key: keys/arc.pem }
routes:
  - { to: "smtp://127.0.0.1:${nextHop.port}" }
`;

  before(async () => {
    const rsa = generateKey("rsa");
    const ed25519 = generateKey("ed25519");
    const arc = generateKey("rsa");
    env = await startDnsRelay(
      {
        "r2026._domainkey.corp.test": { TXT: [rsa.txt] },
        "e2026._domainkey.corp.test": { TXT: [ed25519.txt] },
        "arc._domainkey.gw.test": { TXT: [arc.txt] },
        "sender.test": { TXT: [`v=spf1 ip4:${OUTSIDE} -all`] },
      },
      policy,
      {
        files: {
          "keys/rsa.pem": rsa.privateKey,
          "keys/ed25519.pem": ed25519.privateKey,
          "keys/arc.pem": arc.privateKey,
        },
      },
    );
    ({ dns, hop, gw } = env);
    const resolver = createResolver({ servers: [dns.address] });
    resolve = (name, type) => resolver.resolve(name, type) as Promise<string[][]>;
  });
  after(() => env.stop());

  async function relay(ip: string, from: string, data: string) {
    return (await relayAs(gw.port, hop, ip, { from, to: ["rcpt@example.test"], data })).raw;
  }

  test("mail from relay.networks is signed with every key of its From domain, and verifies", async () => {
    const raw = await relay(INSIDE, "bob@corp.test", message({ from: "Bob <bob@corp.test>" }));
    assert.equal(fieldValues(raw, "DKIM-Signature").length, 2);
    assert.deepEqual(fieldValues(raw, "ARC-Seal"), [], "our own clients' mail is signed, not sealed");
    const verified = await dkimVerify(raw, { resolver: resolve });
    const results = verified.results.map((r) => [r.signingDomain, r.selector, r.status.result, r.status.aligned]);
    assert.deepEqual(results.sort(), [
      ["corp.test", "e2026", "pass", "corp.test"],
      ["corp.test", "r2026", "pass", "corp.test"],
    ]);
    const algorithms = fieldValues(raw, "DKIM-Signature").map((value) => /\ba=([\w-]+)/.exec(value)?.[1]);
    assert.deepEqual(algorithms.sort(), ["ed25519-sha256", "rsa-sha256"]);
  });

  test("a subdomain is signed by its parent domain's keys; an unknown domain is not signed", async () => {
    const sub = await relay(INSIDE, "bob@eu.corp.test", message({ from: "<bob@eu.corp.test>" }));
    const verified = await dkimVerify(sub, { resolver: resolve });
    assert.deepEqual(verified.results.map((r) => [r.signingDomain, r.status.result]).sort(), [
      ["corp.test", "pass"],
      ["corp.test", "pass"],
    ]);
    const unknown = await relay(INSIDE, "bob@unknown.test", message({ from: "<bob@unknown.test>" }));
    assert.deepEqual(fieldValues(unknown, "DKIM-Signature"), []);
  });

  /** What the next hop (192.0.2.99, next.test) finds when it authenticates what we relayed. */
  const checkAtNextHop = (raw: Buffer) =>
    authenticate(raw, {
      ip: "192.0.2.99",
      helo: "next.test",
      sender: "alice@sender.test",
      mta: "next.test",
      resolver: resolve,
      disableBimi: true,
    });

  test("mail from outside is not signed, but leaves ARC-sealed with our results", async () => {
    const raw = await relay(OUTSIDE, "alice@sender.test", message({ from: "<bob@corp.test>" }));
    assert.deepEqual(
      fieldValues(raw, "DKIM-Signature"),
      [],
      "a From domain we sign for is no reason to sign for outsiders",
    );
    const [seal] = fieldValues(raw, "ARC-Seal");
    assert.match(seal, /^i=1; a=rsa-sha256; t=\d+; cv=none; d=gw\.test; s=arc; b=/);
    const [ours] = fieldValues(raw, "Authentication-Results");
    assert.deepEqual(fieldValues(raw, "ARC-Authentication-Results"), [`i=1; ${ours}`]);

    const checked = await checkAtNextHop(raw);
    assert.ok(checked.arc);
    assert.equal(checked.arc.status.result, "pass");

    // A second hop through us adds instance 2 over a passing chain, and the chain still validates.
    const again = await relay(OUTSIDE, "alice@sender.test", raw.toString("latin1"));
    const seals = fieldValues(again, "ARC-Seal");
    assert.equal(seals.length, 2);
    assert.match(seals[0], /^i=2; a=rsa-sha256; t=\d+; cv=pass; d=gw\.test; s=arc; b=/);
    const rechecked = await checkAtNextHop(again);
    assert.ok(rechecked.arc);
    assert.equal(rechecked.arc.status.result, "pass");
    assert.equal(rechecked.arc.i, 2);
  });

  test("dkim, arc, dmarc and dkim-sign read the message once between them", async () => {
    const runtime = await policyRuntime(await parsePolicy(policy(), join(gw.dir, "policy.yaml")), {
      dnsServers: [dns.address],
    });
    const original = SpooledMessage.prototype.stream;
    let reads = 0;
    SpooledMessage.prototype.stream = function (this: SpooledMessage, start?: number) {
      reads++;
      return original.call(this, start);
    };
    try {
      const inside = await simulate(runtime, { ip: INSIDE, from: "bob@corp.test", to: ["x@elsewhere.test"] });
      assert.equal(inside.outcome, "accepted");
      assert.equal(inside.addedHeaders.filter((field) => field.startsWith("DKIM-Signature:")).length, 2);
      assert.equal(reads, 1);
      reads = 0;
      const outside = await simulate(runtime, { ip: OUTSIDE, from: "alice@sender.test", to: ["x@example.test"] });
      assert.equal(outside.outcome, "accepted");
      assert.ok(outside.addedHeaders.some((field) => field.startsWith("ARC-Seal:")));
      assert.equal(reads, 1);
    } finally {
      SpooledMessage.prototype.stream = original;
    }
  });

  test("an ARC key that is not RSA fails the policy at load, naming the file", async () => {
    const text = policy().replace("key: keys/arc.pem", "key: keys/ed25519.pem");
    await assert.rejects(
      policyRuntime(await parsePolicy(text, join(gw.dir, "policy.yaml")), { dnsServers: [dns.address] }),
      /keys\/ed25519\.pem holds an ed25519 key; gw\.test needs rsa/,
    );
  });
});
