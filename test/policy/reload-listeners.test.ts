/**
 * A reload applies what the process serves, over real sockets: a listener the policy gains accepts
 * mail and one it loses refuses connections; STARTTLS appears on a listener that had none; a renewed
 * certificate is presented to the next connection; the operations endpoint moves; a key that needs a
 * restart is named in the reload's one (warning) log line and in portcullis_restart_needed.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { loadPolicy } from "../../app/catalogue.js";
import { startGateway } from "../fixtures/gateway.js";
import { startGatewayProcess } from "../fixtures/gateway-process.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { newTestCertificate, type TestCertificate, upgradeToTls } from "../fixtures/tls.js";
import { scrape } from "../ops/scrape.js";

/** A policy; `server` is the inside of its `server:` mapping, `extra` more top-level lines. */
function policy(server: string, extra: string[] = []): string {
  return [
    "version: 1",
    `server: { hostname: gw.test${server ? `, ${server}` : ""} }`,
    "relay: { domains: [example.test] }",
    "routes: [{ to: discard }]",
    ...extra,
  ].join("\n");
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await sleep(10);
}

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  assert.ok(address && typeof address === "object");
  return address.port;
}

/** Whether a TCP connection to the port is refused. */
async function refuses(port: number): Promise<boolean> {
  const socket = connect({ port, host: "127.0.0.1" });
  const [event] = await Promise.race([once(socket, "connect").then(() => ["connect"]), once(socket, "error")]);
  socket.destroy();
  return event !== "connect";
}

/** EHLO, then STARTTLS: the SHA-256 fingerprint of the certificate the listener presented. */
async function startTlsFingerprint(port: number): Promise<string> {
  const client = await SmtpTestClient.connect(port);
  assert.ok((await client.command("EHLO client.test")).lines.includes("STARTTLS"), "EHLO offers STARTTLS");
  assert.equal((await client.command("STARTTLS")).code, 220);
  client.socket.removeAllListeners("data");
  const secure = await upgradeToTls(client.socket);
  const fingerprint = secure.getPeerCertificate().fingerprint256;
  secure.destroy();
  return fingerprint;
}

const fingerprintOf = (certificate: TestCertificate) => new X509Certificate(certificate.cert).fingerprint256;

test("a reload opens a listener the policy gains (it accepts mail) and closes one it loses", async () => {
  const gw = await startGateway(policy("listen: [{ address: 127.0.0.1:0 }]"));
  const file = join(gw.dir, "policy.yaml");
  try {
    await writeFile(file, policy("listen: [{ address: 127.0.0.1:0 }, { address: 127.0.0.1:0 }]"));
    const changes = await gw.gateway.reload(await loadPolicy(file));
    const added = gw.gateway.addresses().find((address) => address.port !== gw.port);
    assert.ok(added, "a second listener");
    assert.deepEqual(changes.listenersAdded, [`127.0.0.1:${added.port} (mx)`]);
    const client = await SmtpTestClient.connect(added.port);
    const sent = await client.transaction({
      helo: "client.test",
      from: "alice@sender.test",
      to: ["bob@example.test"],
      data: "Subject: new listener\r\n\r\nhello\r\n",
    });
    await client.quit();
    assert.equal(sent.data?.code, 250);

    await writeFile(file, policy("listen: [{ address: 127.0.0.1:0 }]"));
    const removed = await gw.gateway.reload(await loadPolicy(file));
    assert.deepEqual(removed.listenersRemoved, [`127.0.0.1:${added.port} (mx)`]);
    assert.ok(await refuses(added.port), "the removed listener refuses connections");
    assert.ok(!(await refuses(gw.port)), "the kept listener still accepts");
  } finally {
    await gw.stop();
  }
});

test("a listener whose settings change is replaced on its port; a session open on the old one finishes", async () => {
  const gw = await startGateway(policy(""));
  const file = join(gw.dir, "policy.yaml");
  try {
    const open = await SmtpTestClient.connect(gw.port);
    assert.match((await open.command("EHLO client.test")).lines[0], /^gw\.test/);
    await writeFile(file, policy("hostname: renamed.test").replace("hostname: gw.test, ", ""));
    const changes = await gw.gateway.reload(await loadPolicy(file));
    assert.deepEqual(changes.listenersAdded, [`127.0.0.1:${gw.port} (mx)`]);
    assert.deepEqual(changes.listenersRemoved, [`127.0.0.1:${gw.port} (mx)`]);
    const sent = await open.transaction({
      from: "alice@sender.test",
      to: ["bob@example.test"],
      data: "Subject: across a reload\r\n\r\nhello\r\n",
    });
    assert.equal(sent.data?.code, 250, "the session on the replaced listener finishes its mail");
    const next = await SmtpTestClient.connect(gw.port);
    assert.match((await next.command("EHLO client.test")).lines[0], /^renamed\.test/);
    await next.quit();
    // A stop while the old listener still holds a session waits the stop's grace, not the reload's.
    const stopping = Date.now();
    await gw.gateway.stop(200);
    assert.ok(Date.now() - stopping < 2_000, `stop took ${Date.now() - stopping} ms`);
  } finally {
    await gw.stop();
  }
});

test("a reload enables STARTTLS on a running listener, and the next one presents a renewed certificate", async () => {
  const first = newTestCertificate();
  const renewed = newTestCertificate();
  const gw = await startGateway(policy(""));
  const file = join(gw.dir, "policy.yaml");
  try {
    const before = await SmtpTestClient.connect(gw.port);
    assert.ok(!(await before.command("EHLO client.test")).lines.includes("STARTTLS"));
    await before.quit();

    for (const [name, content] of Object.entries(first.files)) await writeFile(join(gw.dir, name), content);
    await writeFile(file, policy("tls: { cert: cert.pem, key: key.pem }"));
    const enabled = await gw.gateway.reload(await loadPolicy(file));
    assert.equal(enabled.certificate, "enabled");
    assert.equal(await startTlsFingerprint(gw.port), fingerprintOf(first));

    // Renewal: new files, the policy unchanged, then the reload an operator's SIGHUP makes.
    for (const [name, content] of Object.entries(renewed.files)) await writeFile(join(gw.dir, name), content);
    const swapped = await gw.gateway.reload(await loadPolicy(file));
    assert.equal(swapped.certificate, "renewed");
    assert.equal(await startTlsFingerprint(gw.port), fingerprintOf(renewed));
  } finally {
    await gw.stop();
  }
});

test("portcullis start: a reload moves the metrics endpoint and warns, in one line, that server.workers needs a restart", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-reload-ops-"));
  const file = join(dir, "policy.yaml");
  const [oldPort, newPort] = [await freePort(), await freePort()];
  const observability = (port: number) => [`observability: { metrics: "127.0.0.1:${port}" }`];
  await writeFile(file, policy("", observability(oldPort)));
  // Resolves once the policy file is watched: a change before that would go unseen.
  const gateway = await startGatewayProcess(file);
  const lines = gateway.logs;
  const reloads = () => lines.filter((l) => l.event === "reload");
  try {
    assert.equal(
      (await scrape(`http://127.0.0.1:${oldPort}`)).value("portcullis_restart_needed", { key: "server.workers" }),
      0,
    );
    // The file watcher reloads this edit.
    await writeFile(file, policy("workers: 2", observability(newPort)));
    await until(() => reloads().length === 1);
    const [line] = reloads();
    assert.equal(line.level, 40, "a warning");
    assert.equal(line.msg, "policy reload applied; restart needed for server.workers");
    assert.deepEqual(line.restartNeeded, ["server.workers"]);
    assert.equal(line.metrics, `moved from 127.0.0.1:${oldPort} to 127.0.0.1:${newPort}`);
    assert.ok(await refuses(oldPort), "the old metrics port refuses");
    const metrics = await scrape(`http://127.0.0.1:${newPort}`);
    assert.equal(metrics.value("portcullis_restart_needed", { key: "server.workers" }), 1);
    assert.equal(metrics.value("portcullis_policy_reloads_total", { result: "ok" }), 1);
    await sleep(300);
    assert.equal(reloads().length, 1, "one line for one reload");
  } finally {
    await gateway.kill();
    await rm(dir, { recursive: true, force: true });
  }
});
