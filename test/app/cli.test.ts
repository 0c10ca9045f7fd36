/**
 * The CLI as a newcomer meets it: `start` with the shipped default policy takes mail into its
 * maildir, `check` and `schema` answer, a bad policy is refused with its location, SIGTERM exits 0.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { startChild } from "../ops/child.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const cli = join(root, "bin/portcullis.js");

function run(...args: string[]) {
  const result = spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: "utf8" });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

test("npm start's default policy takes a message for postmaster@localhost into its maildir", async () => {
  // A copy of the shipped policy in a scratch tree, so its ../var paths land in the scratch tree.
  const scratch = await mkdtemp(join(tmpdir(), "portcullis-cli-"));
  await mkdir(join(scratch, "policies"));
  await copyFile(join(root, "policies/default.yaml"), join(scratch, "policies/default.yaml"));
  const gateway = await startChild(join(scratch, "policies/default.yaml"));
  try {
    const client = await SmtpTestClient.connect(gateway.port);
    assert.match(client.greeting.raw, /^220 localhost ESMTP Portcullis$/);
    const result = await client.transaction({
      helo: "newcomer.test",
      from: "me@newcomer.test",
      to: ["postmaster@localhost"],
      data: "Subject: hello\r\n\r\nFirst message.\r\n",
    });
    await client.quit();
    assert.equal(result.data?.code, 250);
    const maildir = join(scratch, "var/maildir/new");
    const [file] = await readdir(maildir);
    const stored = await readFile(join(maildir, file), "latin1");
    assert.match(stored, /^Return-Path: <me@newcomer\.test>\r\nReceived: from newcomer\.test /);
    assert.ok(stored.endsWith("Subject: hello\r\n\r\nFirst message.\r\n"));
    gateway.child.kill("SIGTERM");
    const [code] = await once(gateway.child, "exit");
    assert.equal(code, 0);
    // Log lines are buffered; everything must be out once the process has exited.
    const summary = gateway
      .stdout()
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line))
      .find((line) => line.event === "transaction");
    assert.equal(summary.outcome, "accepted");
    assert.deepEqual(summary.to, ["postmaster@localhost"]);
    assert.equal(summary.from, "me@newcomer.test");
    assert.equal(typeof summary.tx, "string");
  } finally {
    gateway.child.kill("SIGKILL");
    await rm(scratch, { recursive: true, force: true });
  }
});

test("check accepts the shipped policies and lists every problem of a bad one", () => {
  assert.deepEqual(run("check", "policies/default.yaml"), {
    code: 0,
    stdout: "policies/default.yaml: ok\n",
    stderr: "",
  });
  const bad = run("check", "test/fixtures/policies/many-problems.yaml");
  assert.equal(bad.code, 1);
  const lines = bad.stderr.trim().split("\n");
  assert.ok(lines.length >= 2, bad.stderr);
  for (const line of lines) assert.match(line, /^test\/fixtures\/policies\/many-problems\.yaml:\d+:\d+ \S+: .+/);
});

test("start refuses a bad policy and says where the problem is", () => {
  const result = run("start", "--policy", "test/fixtures/policies/unknown-plugin.yaml");
  assert.equal(result.code, 1);
  assert.match(result.stderr, /unknown-plugin\.yaml:\d+:\d+ pipeline\.\d+\.plugin: /);
});

test("schema prints the JSON Schema that policy.schema.json holds", async () => {
  const result = run("schema");
  assert.equal(result.code, 0);
  const committed = await readFile(join(root, "policy.schema.json"), "utf8");
  assert.equal(
    result.stdout,
    committed,
    "policy.schema.json is stale: run `node bin/portcullis.js schema > policy.schema.json`",
  );
});

test("schema offers every finding path under when:, with the values it can hold", () => {
  type Property = { description: string; anyOf: unknown[] };
  const schema = JSON.parse(run("schema").stdout) as {
    $defs: Record<string, { properties?: Record<string, Property> }>;
  };
  const when = Object.values(schema.$defs).find((def) => def.properties && "any" in def.properties)?.properties ?? {};
  assert.deepEqual(when["fcrdns.result"]?.anyOf[0], { enum: ["pass", "fail", "none", "temperror"] });
  assert.deepEqual(when.dmarcPolicy?.anyOf[0], { enum: ["none", "quarantine", "reject"] });
  assert.match(when["spf.result"]?.description ?? "", /softfail/);
});

test("bad usage exits 2 with the usage text", () => {
  const result = run("frobnicate");
  assert.equal(result.code, 2);
  assert.match(result.stderr, /unknown command "frobnicate"\nusage:/);
});
