/**
 * policies/edge-mx.yaml as shipped, with the connection checks working together against an
 * in-process DNS server that serves its placeholder zones. Only what a test needs is changed: the
 * PROXY line (to connect as any address), and a shorter banner delay.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import type { DnsblFacts } from "../../plugins/dnsbl/index.js";
import type { EarlyTalkerFacts } from "../../plugins/early-talker/index.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { lastFinding, tryMail } from "./connection-checks.js";

const ptr = (n: number, name: string) => ({
  [`${n}.2.0.203.in-addr.arpa`]: { PTR: [name] },
  [name]: { A: [`203.0.113.${n}`] },
});

describe("policies/edge-mx.yaml", () => {
  let dns: TestDnsServer;
  let gw: TestGateway;

  before(async () => {
    dns = await startDnsServer({
      ...ptr(10, "mail.good.test"),
      ...ptr(11, "mail.zen-listed.test"),
      ...ptr(13, "mail.cop-listed.test"),
      ...ptr(14, "mail.partner.test"),
      "good.test": { A: ["203.0.113.10"] },
      "11.113.0.203.zen.spamhaus.example": { A: ["127.0.0.4"], TXT: ["https://check.spamhaus.example/203.0.113.11"] },
      "12.113.0.203.bl.spamcop.example": { A: ["127.0.0.2"], TXT: ["spamcop: listed"] },
      "13.113.0.203.bl.spamcop.example": { A: ["127.0.0.2"] },
      "14.113.0.203.zen.spamhaus.example": { A: ["127.0.0.2"] },
      "14.113.0.203.list.dnswl.example": { A: ["127.0.10.1"] },
    });
    const shipped = await readFile(new URL("../../policies/edge-mx.yaml", import.meta.url), "utf8");
    const policy = shipped
      .replace("  hostname: mx.example.test", "  hostname: mx.example.test\n  proxyProtocol: true")
      .replace("delay: 3s", "delay: 300ms");
    assert.notEqual(policy, shipped);
    gw = await startGateway(policy, { dnsServers: [dns.address] });
  });
  after(async () => {
    await gw.stop();
    await dns.close();
  });

  test("a clean client with confirmed reverse DNS is accepted after a polite wait", async () => {
    const { mail } = await tryMail(gw.port, "203.0.113.10", { helo: "mail.good.test", from: "a@good.test" });
    assert.equal(mail.code, 250);
    assert.equal(lastFinding<EarlyTalkerFacts>(gw, "early-talker").result, "pass");
  });

  test("a zen listing alone reaches the threshold: the dnsbl rule rejects with the TXT", async () => {
    const { mail } = await tryMail(gw.port, "203.0.113.11", { helo: "mail.zen-listed.test" });
    assert.equal(
      mail.raw,
      "554 5.7.1 Service unavailable; 203.0.113.11 blocked using zen.spamhaus.example; https://check.spamhaus.example/203.0.113.11",
    );
  });

  test("a SpamCop listing with good reverse DNS stays below the threshold", async () => {
    const { mail } = await tryMail(gw.port, "203.0.113.13", { helo: "mail.cop-listed.test" });
    assert.equal(mail.code, 250);
    assert.equal(lastFinding<DnsblFacts>(gw, "dnsbl").zone, "bl.spamcop.example");
  });

  test("SpamCop, no reverse DNS and a dynamic HELO add up past the threshold", async () => {
    const { mail } = await tryMail(gw.port, "203.0.113.12", { helo: "dsl-203-0-113-12.pool.isp.test" });
    assert.equal(
      mail.raw,
      "554 5.7.1 Service unavailable; 203.0.113.12 blocked using bl.spamcop.example; spamcop: listed",
    );
  });

  test("an allowlisted client is not refused for a listing", async () => {
    const { mail } = await tryMail(gw.port, "203.0.113.14", { helo: "mail.partner.test" });
    assert.equal(mail.code, 250);
    assert.equal(lastFinding<DnsblFacts>(gw, "dnsbl").allowlisted, "list.dnswl.example");
  });

  test("a HELO claiming our own name is refused whatever the score", async () => {
    const { mail } = await tryMail(gw.port, "203.0.113.10", { helo: "mx.example.test" });
    assert.equal(mail.raw, "550 5.7.1 <mx.example.test>: Helo command rejected: that name is mine, not yours");
  });
});
