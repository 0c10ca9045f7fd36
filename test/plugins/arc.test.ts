/**
 * arc through the wire: a mailing list forwards a DKIM-signed message from a p=reject domain,
 * adding a footer (which breaks the author's signature) and ARC-sealing what it saw on arrival.
 * A gateway that trusts the list lets it through; one that does not refuses it with 550 5.7.26;
 * a sealed message changed after sealing fails the chain and is refused even by the trusting one.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createResolver } from "../../core/dns/resolver.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { authenticate, sealMessage } from "../../core/toolkit/mailauth.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { generateKey } from "../fixtures/keys.js";
import { type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { fieldValues, message, parseAuthResults, sendAs, signed } from "../fixtures/sender-auth.js";

const SENDER_IP = "192.0.2.10";
const LIST_IP = "192.0.2.30";

describe("arc", () => {
  let dns: TestDnsServer;
  let hop: NextHop;
  let trusting: TestGateway;
  let distrusting: TestGateway;
  let forwarded: string;

  const policy = (sealers: string) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test] }
pipeline:
  - plugin: spf
  - plugin: dkim
  - plugin: arc
    trustedSealers: [${sealers}]
  - plugin: dmarc
  - plugin: auth-results
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`;

  before(async () => {
    const author = generateKey("rsa");
    const list = generateKey("rsa");
    dns = await startDnsServer({
      "sender.test": { TXT: [`v=spf1 ip4:${SENDER_IP} -all`] },
      "_dmarc.sender.test": { TXT: ["v=DMARC1; p=reject"] },
      "rsa1._domainkey.sender.test": { TXT: [author.txt] },
      "list.test": { TXT: [`v=spf1 ip4:${LIST_IP} -all`] },
      "arc._domainkey.list.test": { TXT: [list.txt] },
    });
    hop = await startNextHop();
    trusting = await startGateway(policy("lists.other.test, LIST.test"), { dnsServers: [dns.address] });
    distrusting = await startGateway(policy("lists.other.test"), { dnsServers: [dns.address] });

    // The list receives the author's signed message and records what it found…
    const original = await signed(
      message({ from: "Alice <alice@sender.test>", to: "<members@list.test>", body: "Meeting at noon.\r\n" }),
      { domain: "sender.test", selector: "rsa1", privateKey: author.privateKey },
    );
    const resolver = createResolver({ servers: [dns.address] });
    const onArrival = await authenticate(original, {
      ip: SENDER_IP,
      helo: "mail.sender.test",
      sender: "alice@sender.test",
      mta: "list.test",
      resolver: (name, type) => resolver.resolve(name, type) as Promise<string[][]>,
      disableBimi: true,
    });
    assert.ok(onArrival.dmarc && onArrival.arc);
    assert.equal(onArrival.dmarc.status.result, "pass", "the list saw DMARC pass");
    // …adds its footer, and seals the result with what it saw on arrival.
    const withFooter = `${original}-- \r\nmembers mailing list\r\n`;
    const seal = await sealMessage(withFooter, {
      signingDomain: "list.test",
      selector: "arc",
      privateKey: list.privateKey,
      authResults: onArrival.arc.authResults,
      cv: "none",
    } as Parameters<typeof sealMessage>[1]);
    forwarded = seal.toString() + withFooter;
  });
  after(async () => {
    await trusting.stop();
    await distrusting.stop();
    await hop.close();
    await dns.close();
  });

  const fromList = (port: number, data: string) =>
    sendAs(port, LIST_IP, { helo: "mx.list.test", from: "bounce@list.test", to: ["rcpt@example.test"], data });

  test("a gateway that trusts the sealer accepts the forwarded message", async () => {
    const replies = await fromList(trusting.port, forwarded);
    const arcStep = trusting.transactions().at(-1)?.trace;
    assert.equal(replies.data?.code, 250, `the gateway's trace: ${JSON.stringify(arcStep)}`);
    const [delivered] = await hop.waitForMessages(1);
    const [ar] = fieldValues(delivered.raw, "Authentication-Results");
    const results = parseAuthResults(ar).results;
    const byMethod = (method: string) => results.filter((result) => result.method === method);
    assert.deepEqual(
      byMethod("dkim").map((result) => [result.result, result.comment]),
      [["fail", "body hash did not verify"]],
      "the author's signature broke in transit",
    );
    assert.deepEqual(byMethod("arc"), [{ method: "arc", result: "pass", comment: "i=1 d=list.test", properties: {} }]);
    assert.deepEqual(byMethod("dmarc"), [
      {
        method: "dmarc",
        result: "fail",
        comment: "p=reject override=arc",
        properties: { "header.from": "sender.test", "policy.dmarc": "none" },
      },
    ]);
  });

  test("a gateway that does not trust the sealer refuses it with 550 5.7.26", async () => {
    const replies = await fromList(distrusting.port, forwarded);
    assert.equal(replies.data?.raw, "550 5.7.26 DMARC: unauthenticated mail from sender.test is refused by its policy");
    const all = distrusting.transactions();
    const trace = all[all.length - 1].trace as Array<{ plugin: string; verdict: string }>;
    assert.equal(trace.find((entry) => entry.plugin === "arc")?.verdict, "pass", "the chain itself is fine");
  });

  test("a message changed after sealing fails the chain and is refused even by the trusting gateway", async () => {
    const replies = await fromList(trusting.port, forwarded.replace("Meeting at noon.", "Meeting at once."));
    assert.equal(replies.data?.code, 550);
    const all = trusting.transactions();
    const trace = all[all.length - 1].trace as Array<{ plugin: string; verdict: string }>;
    assert.equal(trace.find((entry) => entry.plugin === "arc")?.verdict, "fail");
  });
});
