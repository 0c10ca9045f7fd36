/**
 * `portcullis test` and the shipped policies: the example test files pass (edge-mx with fake DNS,
 * outbound-relay with the shipped example DKIM key), a broken expectation exits 1 with expected vs got, a
 * malformed test file is refused at its line, and default.yaml, edge-mx.yaml and outbound-relay.yaml
 * each load and carry the schema line.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPolicy } from "../../app/catalogue.js";
import { testCommand } from "../../app/policy-test.js";
import { runPolicy } from "../../app/testkit.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const cli = join(root, "bin/portcullis.js");

/** A folder for test files written by the cases. */
let scratch: string;

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "portcullis-policy-test-"));
});

after(async () => {
  await rm(scratch, { recursive: true, force: true });
});

test("the edge-mx example test file passes: eighteen cases against fake DNS", async () => {
  const result = await testCommand([join(root, "policies/examples/edge-mx.test.yaml")]);
  assert.equal(result.code, 0, result.output);
  assert.match(result.output, /\n18 cases: 18 passed, 0 failed\n$/);
  assert.match(result.output, /\n {2}ok {4}a client on ZEN is refused at connect, naming the list\n/);
});

test("the outbound-relay example test file passes", async () => {
  const result = await testCommand([join(root, "policies/examples/outbound-relay.test.yaml")]);
  assert.equal(result.code, 0, result.output);
  assert.match(result.output, /\n7 cases: 7 passed, 0 failed\n$/);
});

test("a broken expectation makes portcullis test exit 1 with expected vs got", async () => {
  const file = join(scratch, "broken.test.yaml");
  await writeFile(
    file,
    [
      `policy: ${join(root, "policies/edge-mx.yaml")}`,
      "dns:",
      "  2.100.51.198.zen.spamhaus.example: { A: [127.0.0.2] }",
      "cases:",
      "  - name: listed client",
      "    client: { ip: 198.51.100.2, helo: host.isp.test }",
      "    envelope: { from: x@isp.test, to: bob@example.test }",
      "    expect: { decision: accept, route: 'smtp://10.0.0.25:25' }",
      "  - name: clean client",
      "    client: { ip: 192.0.2.99, helo: mail.good.test }",
      "    envelope: { from: x@good.test, to: bob@example.test }",
      "    expect: { decision: accept }",
    ].join("\n"),
  );
  const run = spawnSync(process.execPath, [cli, "test", file], { cwd: root, encoding: "utf8" });
  assert.equal(run.status, 1, run.stderr);
  const lines = run.stdout.split("\n");
  assert.equal(lines[1], `  FAIL  listed client (${file}:5)`);
  assert.equal(lines[2], '        decision  expected "accept", got "reject"');
  assert.equal(lines[3], '        route     expected "smtp://10.0.0.25:25", got []');
  assert.match(
    lines[4],
    /^ {8}got: rejected at connect by rule dnsbl: 554 5\.7\.1 Service unavailable; 198\.51\.100\.2 blocked using zen\.spamhaus\.example/,
  );
  assert.match(lines[5], /^ {8}trace: connect fcrdns continue; connect dnsbl continue; .*connect rule dnsbl reject$/);
  assert.equal(lines[6], "  ok    clean client");
  assert.equal(lines[7], "2 cases: 1 passed, 1 failed");
});

test("a malformed test file is refused with each problem at its line", async () => {
  const file = join(scratch, "malformed.test.yaml");
  await writeFile(
    file,
    [
      "policy: ../nowhere.yaml",
      "dns:",
      "  a.test: { A: 192.0.2.1 }",
      "cases:",
      "  - name: x",
      "    client: { ip: 192.0.2.1 }",
      "    envelope: { from: a@b.test, to: c@d.test }",
      "    expect: { decision: maybe }",
    ].join("\n"),
  );
  const result = await testCommand([file]);
  assert.equal(result.code, 1);
  const lines = result.output.split("\n");
  assert.equal(lines[0], `${file}: cannot run`);
  assert.match(lines[1], new RegExp(`^ {2}${file}:3:11 dns\\.a\\.test: expected \\{ TYPE: \\[records\\] \\}`));
  assert.equal(lines[2], `  FAIL  x (${file}:5): invalid`);
  assert.match(lines[3], new RegExp(`^ {8}${file}:8:25 cases\\.0\\.expect\\.decision: `));
  assert.equal(lines.at(-2), "1 case: 0 passed, 1 failed");
});

test("each invalid case fails on its own, at its line; the valid ones still run", async () => {
  const file = join(scratch, "two-invalid.test.yaml");
  await writeFile(
    file,
    [
      `policy: ${join(root, "policies/edge-mx.yaml")}`,
      "cases:",
      "  - name: no envelope",
      "    client: { ip: 192.0.2.10 }",
      "    expect: { decision: accept }",
      "  - name: clean client",
      "    client: { ip: 192.0.2.99, helo: mail.good.test }",
      "    envelope: { from: x@good.test, to: bob@example.test }",
      "    expect: { decision: accept }",
      "  - name: a typo",
      "    client: { ip: 192.0.2.10 }",
      "    envelope: { from: x@good.test, to: bob@example.test }",
      "    expect: { decision: accept, cod: 250 }",
    ].join("\n"),
  );
  const result = await testCommand([file]);
  assert.equal(result.code, 1);
  const lines = result.output.split("\n");
  assert.deepEqual(lines.slice(1, 6), [
    `  FAIL  no envelope (${file}:3): invalid`,
    `        ${file}:3:5 cases.0.envelope: Invalid input: expected object, received undefined`,
    "  ok    clean client",
    `  FAIL  a typo (${file}:10): invalid`,
    `        ${file}:13:13 cases.2.expect: Unrecognized key: "cod"`,
  ]);
  assert.equal(lines.at(-2), "3 cases: 1 passed, 2 failed");
  const json = JSON.parse((await testCommand(["--json", file])).output);
  assert.deepEqual(json.summary, { cases: 3, passed: 1, failed: 2 });
  assert.deepEqual(
    json.files[0].cases.map((c: { name: string; line: number; status: string; problems: unknown[] }) => [
      c.name,
      c.line,
      c.status,
      c.problems.length,
    ]),
    [
      ["no envelope", 3, "fail", 1],
      ["clean client", 6, "pass", 0],
      ["a typo", 10, "fail", 1],
    ],
  );
});

test("an accepted case is told 250 2.0.0, as the client would be", async () => {
  const file = join(scratch, "accepted.test.yaml");
  await writeFile(
    file,
    [
      `policy: ${join(root, "policies/edge-mx.yaml")}`,
      "cases:",
      "  - name: accepted",
      "    client: { ip: 192.0.2.99, helo: mail.good.test }",
      "    envelope: { from: x@good.test, to: bob@example.test }",
      "    expect: { decision: accept, code: 250, enhanced: 2.0.0, reply: 250 2.0.0 }",
    ].join("\n"),
  );
  const result = await testCommand([file]);
  assert.equal(result.output.split("\n").at(-2), "1 case: 1 passed, 0 failed", result.output);
  assert.equal(result.code, 0);
});

test("shipped policies load, carry the schema line, and handle a message as their comments say", async () => {
  for (const name of ["default.yaml", "edge-mx.yaml", "outbound-relay.yaml"]) {
    const source = await readFile(join(root, "policies", name), "utf8");
    assert.match(source, /^# yaml-language-server: \$schema=\.\.\/policy\.schema\.json\n/, name);
    await loadPolicy(join(root, "policies", name));
  }
  // default.yaml: accepts mail for localhost into its maildir.
  const local = await runPolicy(join(root, "policies/default.yaml"), {
    ip: "127.0.0.1",
    helo: "me.test",
    from: "me@newcomer.test",
    to: ["postmaster@localhost"],
  });
  assert.equal(local.outcome, "accepted");
  assert.deepEqual(Object.values(local.routes), [["postmaster@localhost"]]);
  assert.match(Object.keys(local.routes)[0], /^maildir:.*\/var\/maildir$/);
  // outbound-relay.yaml: signs what it accepts with the From domain's key.
  const signed = await runPolicy(join(root, "policies/outbound-relay.yaml"), {
    ip: "10.0.10.5",
    helo: "laptop.example.test",
    from: "alice@example.test",
    to: ["bob@example.net"],
    message: "From: alice@example.test\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n",
  });
  assert.equal(signed.outcome, "accepted");
  assert.ok(
    signed.addedHeaders.some((header) => /^DKIM-Signature: .*d=example\.test;.*s=ed2025;/s.test(header)),
    signed.addedHeaders.join("\n"),
  );
});
