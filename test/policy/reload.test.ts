/**
 * Hot reload under load, over real sockets: clients keep sending while the policy file is replaced
 * by a valid, then an invalid, then another valid version. No transaction fails because of a
 * reload, behaviour switches, the invalid policy never takes effect, and a connection opened before
 * a reload keeps the policy it started with.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { loadPolicy } from "../../app/catalogue.js";
import { PolicyReloader, policyFiles } from "../../core/policy/reload.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { startGatewayProcess } from "../fixtures/gateway-process.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

/** A policy whose answer to a probe sender names it; `extra` is appended to its rule list. */
function policy(label: string, extra: string[] = []): string {
  return [
    "version: 1",
    "server: { hostname: gw.test }",
    "relay: { domains: [example.test] }",
    "routes: [{ to: discard }]",
    "rules:",
    "  - name: probe",
    "    when: { sender.domain: probe.test }",
    `    action: { reject: "550 5.7.1 policy ${label}" }`,
    ...extra,
  ].join("\n");
}

/** Polls until `condition` holds; the test's own timeout bounds the wait. */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await sleep(10);
}

interface Outcome {
  readonly policy: string;
  readonly dataCode: number | undefined;
}

/** One connection: a probe (whose reply names the policy), then a real message that must be accepted. */
async function exchange(port: number): Promise<Outcome> {
  const client = await SmtpTestClient.connect(port);
  try {
    await client.command("EHLO client.test");
    const probe = await client.command("MAIL FROM:<x@probe.test>");
    assert.equal(probe.code, 550, `probe: ${probe.raw}`);
    await client.command("RSET");
    const sent = await client.transaction({
      helo: "client.test",
      from: "alice@sender.test",
      to: ["bob@example.test"],
      data: "Subject: load\r\n\r\nhello\r\n",
    });
    return { policy: /policy (\S+)$/.exec(probe.text)?.[1] ?? probe.text, dataCode: sent.data?.code };
  } finally {
    await client.quit();
  }
}

test("reload under load: valid → invalid → valid, no transaction fails, the invalid one never applies", async () => {
  const gw: TestGateway = await startGateway(policy("A"));
  const file = join(gw.dir, "policy.yaml");
  const reloader = new PolicyReloader(
    { file, load: loadPolicy, log: gw.gateway.log, apply: (p) => gw.gateway.reload(p), settleMs: 20 },
    undefined,
  );
  const outcomes: Outcome[][] = [[], [], []];
  let running = true;
  const loops = outcomes.map(async (list) => {
    while (running) list.push(await exchange(gw.port));
  });
  const seen = (label: string) => outcomes.some((list) => list.some((o) => o.policy === label));
  const count = () => outcomes.reduce((n, list) => n + list.length, 0);
  try {
    await until(() => count() >= 6);

    // Invalid: a bad network in a rule. Noticed by the file watch, refused, logged.
    await writeFile(
      file,
      policy("C", ["  - { name: bad, when: { client.ip: { network: 300.0.0.0/8 } }, action: reject }"]),
    );
    const isRefusal = (l: Record<string, unknown>) => l.event === "reload" && String(l.msg).includes("refused");
    await until(() => gw.logs.some(isRefusal));
    const problems = gw.logs.find(isRefusal)?.problems as string[];
    assert.match(
      problems[0],
      /policy\.yaml:9:\d+ rules\.1\.when\.client\.ip\.network: "300\.0\.0\.0\/8" is not an IP address/,
    );
    const afterInvalid = count();
    await until(() => count() >= afterInvalid + 6);

    // Valid again: applied through an explicit reload (what SIGHUP does).
    await writeFile(file, policy("B"));
    const result = await reloader.reload("SIGHUP");
    assert.equal(result.ok, true);
    await until(() => outcomes.every((list) => list.some((o) => o.policy === "B")));
  } finally {
    running = false;
    await Promise.all(loops);
    reloader.close();
    await gw.stop();
  }

  assert.equal(seen("C"), false, "the invalid policy never took effect");
  for (const list of outcomes) {
    // Every message went through, and each client saw A, then B, never back.
    assert.deepEqual(
      list.filter((o) => o.dataCode !== 250),
      [],
    );
    const labels = list.map((o) => o.policy).join("");
    assert.match(labels, /^A+B+$/);
  }
});

test("a connection opened before a reload keeps its policy; new connections get the new one", async () => {
  const gw = await startGateway(policy("A"));
  const reloader = new PolicyReloader({
    load: loadPolicy,
    file: join(gw.dir, "policy.yaml"),
    log: gw.gateway.log,
    apply: (p) => gw.gateway.reload(p),
    watch: false,
  });
  try {
    const early = await SmtpTestClient.connect(gw.port);
    await early.command("EHLO client.test");
    await writeFile(join(gw.dir, "policy.yaml"), policy("B"));
    assert.equal((await reloader.reload("SIGHUP")).ok, true);
    assert.equal((await early.command("MAIL FROM:<x@probe.test>")).text, "5.7.1 policy A");
    await early.quit();
    const late = await SmtpTestClient.connect(gw.port);
    await late.command("EHLO client.test");
    assert.equal((await late.command("MAIL FROM:<x@probe.test>")).text, "5.7.1 policy B");
    await late.quit();
  } finally {
    reloader.close();
    await gw.stop();
  }
});

test("list files named by the policy are watched and reloaded with it", async () => {
  const gw = await startGateway(
    [
      "version: 1",
      "server: { hostname: gw.test }",
      "relay: { domains: [example.test] }",
      "routes: [{ to: discard }]",
      "rules:",
      "  - name: blocked",
      "    when: { sender: { address: { file: lists/blocked.txt } } }",
      '    action: { reject: "550 5.7.1 {sender} blocked" }',
    ].join("\n"),
    { files: { "lists/blocked.txt": "# blocked senders\nmallory@*\n" } },
  );
  const file = join(gw.dir, "policy.yaml");
  const loaded = await loadPolicy(file);
  assert.deepEqual(policyFiles(loaded), [file, join(gw.dir, "lists/blocked.txt")]);
  const reloader = new PolicyReloader(
    { file, load: loadPolicy, log: gw.gateway.log, apply: (p) => gw.gateway.reload(p), settleMs: 20 },
    loaded,
  );
  const mail = async (from: string) => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    const reply = await client.command(`MAIL FROM:<${from}>`);
    await client.quit();
    return reply.code;
  };
  try {
    assert.equal(await mail("eve@sender.test"), 250);
    await writeFile(join(gw.dir, "lists/blocked.txt"), "mallory@*\neve@*\n");
    await until(() => gw.logs.some((l) => l.event === "reload" && l.reason === "file change"));
    assert.equal(await mail("eve@sender.test"), 550);
  } finally {
    reloader.close();
    await gw.stop();
  }
});

test("portcullis start reloads on a file change and on SIGHUP, and refuses an invalid version", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-reload-cli-"));
  const file = join(dir, "policy.yaml");
  await writeFile(file, policy("A"));
  // Resolves once the policy file is watched: a change before that would go unseen.
  const gateway = await startGatewayProcess(file);
  const lines = gateway.logs;
  const reloads = () => lines.filter((l) => l.event === "reload");
  try {
    await writeFile(
      file,
      policy("B", ["  - { name: bad, when: { client.ip: { network: nonsense } }, action: reject }"]),
    );
    await until(() => reloads().length === 1);
    assert.equal(reloads()[0].msg, "policy reload refused; the previous policy stays");
    // The operator's SIGHUP after the same edit: that content was just refused, so no second line.
    gateway.send("SIGHUP");
    await sleep(300);
    assert.equal(reloads().length, 1, JSON.stringify(reloads()));
    await writeFile(file, policy("B"));
    await until(() => reloads().length === 2);
    assert.deepEqual([reloads()[1].msg, reloads()[1].reason], ["policy reload applied", "file change"]);
    gateway.send("SIGHUP");
    await until(() => reloads().length === 3);
    assert.deepEqual([reloads()[2].msg, reloads()[2].reason], ["policy reload applied", "SIGHUP"]);
    // One line per reload: the gateway adds none of its own.
    assert.equal(lines.filter((l) => /reload/.test(String(l.msg))).length, 3);
  } finally {
    await gateway.kill();
    await rm(dir, { recursive: true, force: true });
  }
});
