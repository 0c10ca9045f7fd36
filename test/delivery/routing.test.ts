/**
 * Routing through the wire: a transaction split over routes, host lists, MX order and fallback
 * through the in-process DNS server, null MX, mail loops, and outbound TLS per route.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { loadPolicy } from "../../app/catalogue.js";
import { createLogger } from "../../core/observability/log.js";
import { Gateway } from "../../core/smtp/gateway.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import type { TestGateway } from "../fixtures/gateway.js";
import { closedPort, type NextHop, selfSignedCertificate } from "../fixtures/next-hop.js";
import { message, send } from "../queue/helpers.js";

const cleanups = cleanupAfterAll();
const hop = cleanups.hop;

function gateway(body: string, dns?: TestDnsServer): Promise<TestGateway> {
  return cleanups.gateway(
    `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test, other.test, nullmx.test, loop.test, self.test] }
${body}
`,
    dns ? { dnsServers: [dns.address] } : {},
  );
}

describe("routes", () => {
  it("splits a transaction whose recipients map to different routes", async () => {
    const first = await hop();
    const second = await hop();
    const gw = await gateway(`
routes:
  - { match: { recipientDomain: other.test }, to: "smtp://127.0.0.1:${second.port}" }
  - { to: "smtp://127.0.0.1:${first.port}" }
`);
    const reply = await send(gw.port, {
      to: ["a@example.test", "b@other.test", "c@example.test"],
      data: message("s1"),
    });
    assert.equal(reply.code, 250);
    assert.deepEqual(
      first.messages.map((m) => m.to),
      [["a@example.test", "c@example.test"]],
    );
    assert.deepEqual(
      second.messages.map((m) => m.to),
      [["b@other.test"]],
    );
  });

  it("tries the hosts of a list in order, moving on only when one cannot be reached", async () => {
    const down = await closedPort();
    const up = await hop();
    const gw = await gateway(`
routes:
  - { to: ["smtp://127.0.0.1:${down}", "smtp://127.0.0.1:${up.port}"] }
`);
    assert.equal((await send(gw.port, { to: ["a@example.test"], data: message("l1") })).code, 250);
    assert.equal(up.messages.length, 1);
  });
});

describe("MX delivery", () => {
  let dns: TestDnsServer;
  let mxPort: number;
  let primary: NextHop;
  let backup: NextHop;
  let gw: TestGateway;

  before(async () => {
    // One MX port for every host: the OS picks it for the first, the second binds it on its own address.
    primary = await hop({ host: "127.0.0.2" });
    mxPort = primary.port;
    backup = await hop({ host: "127.0.0.3", port: mxPort });
    dns = await startDnsServer({
      "example.test": {
        MX: [
          { priority: 20, exchange: "backup.example.test" },
          { priority: 10, exchange: "primary.example.test" },
        ],
      },
      "primary.example.test": { A: ["127.0.0.2"] },
      "backup.example.test": { A: ["127.0.0.3"] },
      "other.test": { A: ["127.0.0.3"] },
      "nullmx.test": { MX: [{ priority: 0, exchange: "." }] },
      "loop.test": { MX: [{ priority: 10, exchange: "gw.test" }] },
      "gw.test": { A: ["127.0.0.1"] },
    });
    cleanups.add(() => dns.close());
    gw = await gateway(`delivery: { mode: proxy, mxPort: ${mxPort} }`, dns);
  });

  it("delivers to the most preferred MX host", async () => {
    assert.equal((await send(gw.port, { to: ["a@example.test"], data: message("mx1") })).code, 250);
    assert.equal(primary.messages.length, 1);
    assert.equal(backup.messages.length, 0);
  });

  it("falls back to the next preference when the first cannot be reached", async () => {
    await primary.close();
    assert.equal((await send(gw.port, { to: ["a@example.test"], data: message("mx2") })).code, 250);
    assert.equal(backup.messages.length, 1);
  });

  it("uses the domain's address when it has no MX (implicit MX)", async () => {
    assert.equal((await send(gw.port, { to: ["a@other.test"], data: message("mx3") })).code, 250);
    assert.deepEqual(backup.messages.at(-1)?.to, ["a@other.test"]);
  });

  it("bounces a domain with a null MX at once (5.1.10)", async () => {
    const reply = await send(gw.port, { to: ["a@nullmx.test"], data: message("mx4") });
    assert.equal(reply.code, 550);
    assert.match(reply.text, /^5\.1\.10 /);
  });

  it("detects an MX that names this gateway (5.4.6)", async () => {
    const reply = await send(gw.port, { to: ["a@loop.test"], data: message("mx5") });
    assert.equal(reply.code, 550);
    assert.match(reply.text, /^5\.4\.6 .*loops back/);
  });

  it("detects an MX whose address is where this gateway listens (5.4.6)", async () => {
    const port = await closedPort();
    const selfDns = await startDnsServer({
      "self.test": { MX: [{ priority: 10, exchange: "relay.self.test" }] },
      "relay.self.test": { A: ["127.0.0.1"] },
    });
    cleanups.add(() => selfDns.close());
    const dir = await mkdtemp(join(tmpdir(), "portcullis-loop-"));
    cleanups.add(() => rm(dir, { recursive: true, force: true }));
    await writeFile(
      join(dir, "policy.yaml"),
      `version: 1
server: { hostname: gw.test }
relay: { domains: [self.test] }
delivery: { mode: proxy, mxPort: ${port} }
`,
    );
    const self = await Gateway.create(await loadPolicy(join(dir, "policy.yaml")), {
      log: createLogger("silent"),
      listen: `127.0.0.1:${port}`,
      dnsServers: [selfDns.address],
    });
    await self.listen();
    cleanups.add(() => self.stop(200));
    const reply = await send(port, { to: ["a@self.test"], data: message("mx6") });
    assert.equal(reply.code, 550);
    assert.match(reply.text, /^5\.4\.6 /);
  });
});

describe("outbound TLS per route", () => {
  const tls = selfSignedCertificate("next-hop.test");

  it("uses STARTTLS opportunistically with a self-signed next hop", async () => {
    const secure = await hop({ tls });
    const gw = await gateway(`
routes:
  - { to: "smtp://127.0.0.1:${secure.port}", tls: opportunistic }
`);
    assert.equal((await send(gw.port, { to: ["a@example.test"], data: message("t1") })).code, 250);
    assert.equal(secure.messages[0].secure, true);
  });

  it("defers when TLS is required and the next hop offers no STARTTLS", async () => {
    const plain = await hop();
    const gw = await gateway(`
routes:
  - { to: "smtp://127.0.0.1:${plain.port}", tls: { mode: required, verify: false } }
`);
    const reply = await send(gw.port, { to: ["a@example.test"], data: message("t2") });
    assert.equal(reply.code, 451);
    assert.equal(plain.messages.length, 0);
  });

  it("with verify on, defers when no CA vouches for the certificate of the SNI name", async () => {
    const secure = await hop({ tls });
    const wrongName = await gateway(`
routes:
  - { to: "smtp://127.0.0.1:${secure.port}", tls: { mode: required, verify: true, sni: next-hop.test } }
`);
    // Self-signed: verification fails (no CA vouches for it), so the message is deferred.
    assert.equal((await send(wrongName.port, { to: ["a@example.test"], data: message("t3") })).code, 451);
    assert.equal(secure.messages.length, 0);
  });
});
