/**
 * `portcullis queue …` as a user runs it: the real CLI in a child process, against a running
 * gateway (over its control socket) and against a spool no gateway holds.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { closedPort, type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { message, parseDsn, send, until } from "./helpers.js";

const bin = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin, "queue", ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

interface Listed {
  messages: Array<{
    id: string;
    messageId: string;
    attempts: number;
    nextAt: string;
    recipients: Array<{ to: string }>;
  }>;
}

describe("portcullis queue", () => {
  let gw: TestGateway;
  let senderHop: NextHop;
  let policyFile: string;
  const ids: Record<string, string> = {};

  before(async () => {
    senderHop = await startNextHop();
    const down = await closedPort();
    gw = await startGateway(`
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes:
  - { match: { recipientDomain: sender.test }, to: "smtp://127.0.0.1:${senderHop.port}" }
  - { to: "smtp://127.0.0.1:${down}" }
delivery:
  mode: queue
  retry: { schedule: [1h], maxAge: 5d }
`);
    policyFile = join(gw.dir, "policy.yaml");
    for (const id of ["c1", "c2", "c3", "c4"]) {
      assert.equal((await send(gw.port, { to: ["b@example.test"], data: message(id) })).code, 250);
    }
    await until(() => gw.logs.filter((l) => l.event === "deferred").length >= 4, "first attempts");
  });
  after(async () => {
    await gw.gateway.stop(200);
    await rm(gw.dir, { recursive: true, force: true });
    await senderHop.close();
  });

  it("lists queued messages, as JSON and readably", async () => {
    const json = await cli("list", "--policy", policyFile, "--json");
    assert.equal(json.code, 0, json.stderr);
    const listed = JSON.parse(json.stdout) as Listed;
    assert.equal(listed.messages.length, 4);
    for (const m of listed.messages) ids[/<(\w+)@/.exec(m.messageId)![1]] = m.id;
    assert.deepEqual(Object.keys(ids).sort(), ["c1", "c2", "c3", "c4"]);
    assert.deepEqual(listed.messages[0].recipients[0].to, "b@example.test");
    const text = await cli("list", "--policy", policyFile);
    assert.match(text.stdout, new RegExp(`${ids.c1} .*attempts 1`));
    assert.match(text.stdout, /b@example\.test {2}pending {2}via smtp:\/\/127\.0\.0\.1:\d+ {2}\(451 4\.4\.1 /);
    assert.match(text.stdout, /4 messages queued/);
  });

  it("shows one message with its header", async () => {
    const shown = await cli("show", ids.c1, "--policy", policyFile);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /Message-ID: <c1@sender\.test>/);
    assert.match(shown.stdout, /^Received: from client\.test/m);
    const json = JSON.parse((await cli("show", ids.c1, "--policy", policyFile, "--json")).stdout);
    assert.equal(json.message.id, ids.c1);
    const missing = await cli("show", "NOSUCHID", "--policy", policyFile);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no queued message NOSUCHID/);
  });

  it("flushes one message or all: the worker tries them now", async () => {
    const attempts = () => gw.logs.filter((l) => l.event === "delivery" && l.id === ids.c1).length;
    const before = attempts();
    const one = await cli("flush", ids.c1, "--policy", policyFile);
    assert.equal(one.code, 0, one.stderr);
    assert.match(one.stdout, /1 message due now/);
    await until(() => attempts() === before + 1, "a new attempt");
    const all = JSON.parse((await cli("flush", "--policy", policyFile, "--json")).stdout);
    assert.equal(all.count, 4);
  });

  it("bounces a message to its sender with a DSN", async () => {
    const bounced = await cli("bounce", ids.c2, "--policy", policyFile);
    assert.equal(bounced.code, 0, bounced.stderr);
    const [dsn] = await senderHop.waitForMessages(1);
    const report = parseDsn(dsn.raw);
    assert.equal(report.status[1].action, "failed");
    assert.equal(report.status[1].status, "5.0.0");
    assert.match(report.returned, /Message-ID: <c2@sender\.test>/);
    assert.equal(gw.gateway.queue.spool?.get(ids.c2), undefined);
  });

  it("deletes a message without telling anyone", async () => {
    const deleted = await cli("delete", ids.c3, "--policy", policyFile);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.match(deleted.stdout, new RegExp(`deleted ${ids.c3}`));
    assert.equal(gw.gateway.queue.spool?.get(ids.c3), undefined);
    await until(() => gw.gateway.queue.spool?.entries().every((e) => e.envelope.from !== "") ?? false, "the DSN sent");
    assert.equal(senderHop.messages.length, 1, "only the bounce made a DSN");
  });

  it("works on the spool directly when no gateway runs", async () => {
    await gw.gateway.stop(200);
    const listed = JSON.parse((await cli("list", "--policy", policyFile, "--json")).stdout) as Listed;
    assert.deepEqual(
      listed.messages.map((m) => m.id),
      [ids.c1, ids.c4],
    );
    const flushed = await cli("flush", ids.c4, "--policy", policyFile, "--json");
    assert.equal(JSON.parse(flushed.stdout).count, 1);
    const deleted = await cli("delete", ids.c1, "--policy", policyFile);
    assert.equal(deleted.code, 0, deleted.stderr);
    const after = JSON.parse((await cli("list", "--policy", policyFile, "--json")).stdout) as Listed;
    assert.deepEqual(
      after.messages.map((m) => m.id),
      [ids.c4],
    );
    assert.ok(Date.parse(after.messages[0].nextAt) <= Date.now(), "the offline flush was written down");
  });

  it("explains bad usage", async () => {
    for (const args of [["list"], ["show", "--policy", policyFile], ["nonsense", "--policy", policyFile]]) {
      const result = await cli(...args);
      assert.equal(result.code, 2, args.join(" "));
      assert.match(result.stderr, /usage: portcullis queue/);
    }
  });
});
