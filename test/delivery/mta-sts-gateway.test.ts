/**
 * MTA-STS through a whole gateway (the real CLI, queue mode, the MX route): the `_mta-sts` records,
 * MX records and host addresses come from the in-process DNS server (`--dns`), the policy from an
 * HTTPS policy host, and the test CA is trusted the way an operator adds a private CA
 * (NODE_EXTRA_CA_CERTS). An MX the enforce policy names, with a certificate valid for its name,
 * gets the mail over TLS; an MX the policy does not name gets nothing and the mail stays deferred.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, it } from "node:test";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { eventually } from "../fixtures/eventually.js";
import { closedPort, type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { enforcePolicy, type PolicyHost, startPolicyHost } from "../fixtures/policy-host.js";
import { createTestCa, type TestCa } from "../fixtures/test-ca.js";
import { type ChildGateway, startChild } from "../ops/child.js";
import { message, send } from "../queue/helpers.js";

let dir: string;
let ca: TestCa;
let host: PolicyHost;
let dns: TestDnsServer;
let listedMx: NextHop;
let unlistedMx: NextHop;
let gateway: ChildGateway;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-mta-sts-"));
  ca = createTestCa();
  host = await startPolicyHost(ca);
  host.serve("sts.test", { body: enforcePolicy("mx.sts.test") });
  host.serve("wrongmx.test", { body: enforcePolicy("mx.sts.test") });
  const mxPort = await closedPort();
  // Both MX hosts offer STARTTLS with a certificate valid for their own name: only the policy's mx
  // list tells them apart.
  listedMx = await startNextHop({ host: "127.0.0.2", port: mxPort, tls: ca.issue("mx.sts.test") });
  unlistedMx = await startNextHop({ host: "127.0.0.3", port: mxPort, tls: ca.issue("mx.rogue.test") });
  dns = await startDnsServer({
    "_mta-sts.sts.test": { TXT: ["v=STSv1; id=one"] },
    "mta-sts.sts.test": { A: ["127.0.0.1"] },
    "sts.test": { MX: [{ priority: 10, exchange: "mx.sts.test" }] },
    "mx.sts.test": { A: ["127.0.0.2"] },
    "_mta-sts.wrongmx.test": { TXT: ["v=STSv1; id=one"] },
    "mta-sts.wrongmx.test": { A: ["127.0.0.1"] },
    "wrongmx.test": { MX: [{ priority: 10, exchange: "mx.rogue.test" }] },
    "mx.rogue.test": { A: ["127.0.0.3"] },
  });
  const caFile = join(dir, "ca.pem");
  await writeFile(caFile, ca.cert);
  const policyFile = join(dir, "policy.yaml");
  await writeFile(
    policyFile,
    `
version: 1
server: { hostname: gw.test }
relay: { domains: [sts.test, wrongmx.test] }
delivery:
  mode: queue
  spool: "${join(dir, "spool")}"
  mxPort: ${mxPort}
  retry: { schedule: [1h], maxAge: 1d }
  mtaSts: { policyUrl: "${host.urlTemplate}" }
`,
  );
  gateway = await startChild(policyFile, { args: ["--dns", dns.address], env: { NODE_EXTRA_CA_CERTS: caFile } });
});

after(async () => {
  if (gateway?.child.exitCode === null) {
    gateway.child.kill("SIGTERM");
    await gateway.exited;
  }
  await listedMx?.close();
  await unlistedMx?.close();
  await host?.close();
  await dns?.close();
  ca?.dispose();
  await rm(dir, { recursive: true, force: true });
});

/** The recipients of the gateway's first delivery attempt of a queued message. */
async function firstAttempt(queueId: string): Promise<Array<{ to: string; status: string; reply: string }>> {
  const attempt = () => gateway.logs().find((line) => line.event === "delivery" && line.id === queueId);
  await eventually(() => attempt() !== undefined, `a delivery attempt of ${queueId}`);
  return attempt()!.recipients as Array<{ to: string; status: string; reply: string }>;
}

async function queue(to: string, name: string): Promise<string> {
  const reply = await send(gateway.port, { to: [to], data: message(name) });
  assert.equal(reply.code, 250, reply.text);
  return /queued as (\w+)/.exec(reply.text)![1];
}

it("delivers over verified TLS to an MX the enforce policy names", async () => {
  const id = await queue("user@sts.test", "listed");
  assert.equal((await firstAttempt(id))[0].status, "delivered");
  const [received] = await listedMx.waitForMessages(1);
  assert.equal(received.secure, true, "over TLS");
  assert.deepEqual(received.to, ["user@sts.test"]);
  assert.deepEqual(host.requested, ["sts.test"], "the policy came from the policy host");
});

it("does not use an MX the policy does not name: the mail stays deferred", async () => {
  const id = await queue("user@wrongmx.test", "unlisted");
  const [recipient] = await firstAttempt(id);
  assert.equal(recipient.status, "deferred");
  assert.match(recipient.reply, /^451 4\.7\.5 /);
  assert.equal(unlistedMx.connections(), 0, "the unlisted MX was never contacted");
  assert.equal(unlistedMx.messages.length, 0);
});
