/**
 * `portcullis check`'s static checks, one test per finding: unreachable rules, an open relay (an
 * error), findings of a plugin not in the pipeline, duplicate plugin entries, unknown finding names.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parsePolicy } from "../../app/catalogue.js";
import { checkPolicy } from "../../app/check.js";
import { policyRuntime } from "../../app/testkit.js";
import { PolicyError } from "../../core/policy/load.js";
import { type CheckFinding, catalogueOf, formatFindings, staticChecks } from "../../core/policy/static-checks.js";
import sample from "./rules/fixtures/sample.js";

const fixtures = fileURLToPath(new URL("./rules/fixtures/", import.meta.url));

/** A plugin outside the pipeline whose findings the checks know about (as the built-ins would be). */
const known = catalogueOf([
  { name: "dkim", definition: { ...sample, name: "dkim", findings: ["dkim", "dkim.result"] } },
]);

async function check(lines: string[]): Promise<CheckFinding[]> {
  const policy = await parsePolicy(["version: 1", ...lines].join("\n"), `${fixtures}policy.yaml`);
  return staticChecks(await policyRuntime(policy), known);
}

const summary = (findings: CheckFinding[]) => findings.map((f) => `${f.severity} ${f.path.join(".")}: ${f.message}`);

test("a clean policy has no findings", async () => {
  const findings = await check([
    "pipeline: [{ plugin: ./sample.ts, phase: mail }]",
    "rules:",
    "  - { name: a, when: { sample.result: fail }, action: reject }",
    "  - { name: b, when: { score: { gte: 5 } }, action: defer }",
  ]);
  assert.deepEqual(summary(findings), []);
});

test("rules after an unconditional deciding rule can never match (from the phase it decides on)", async () => {
  const findings = await check([
    "rules:",
    "  - { name: early, when: { client.ip: { network: 192.0.2.0/24 } }, action: reject }",
    "  - { name: everyone, when: { sender: { exists: true } }, action: { score: 1 } }",
    "  - { name: stop, action: { quarantine: 'maildir:./q' } }",
    "  - { name: at-helo, when: { helo: x.test }, action: reject }",
    "  - { name: too-late, when: { sender.domain: x.test }, action: reject }",
    "  - { name: observed, when: { tags: x }, action: reject, mode: observe }",
  ]);
  assert.deepEqual(summary(findings), [
    "warning rules.4: rule too-late can never match: rule stop before it has no condition and decides from the mail phase on",
    "warning rules.5: rule observed can never match: rule stop before it has no condition and decides from the mail phase on",
  ]);
  // A rule that names the recipient and a finding known only later can never run either.
  const never = await check([
    "pipeline: [{ plugin: ./sample.ts, phase: data }]",
    "rules: [{ name: r, when: { recipient.domain: example.test, sample: fail }, action: reject }]",
  ]);
  assert.match(summary(never)[0], /^warning rules\.0: rule r can never match: it names recipient/);
});

test("0.0.0.0/0 or ::/0 in relay.networks is an open relay: an error", async () => {
  const findings = await check(["relay: { networks: [127.0.0.0/8, 0.0.0.0/0, '::/0'] }"]);
  assert.deepEqual(
    findings.map((f) => [f.severity, f.path.join(".")]),
    [
      ["error", "relay.networks.1"],
      ["error", "relay.networks.2"],
    ],
  );
  assert.match(findings[0].message, /open relay/);
});

test("a catch-all route without relay.postmaster is reported: <postmaster> would be refused", async () => {
  const findings = await check([
    "routes:",
    "  - { match: { recipientDomain: example.test }, to: 'smtp://127.0.0.1:2600' }",
    "  - { to: 'smtp://192.0.2.25:25' }",
  ]);
  assert.deepEqual(
    summary(findings).map((line) => line.slice(0, 61)),
    ["error routes.1: this route takes every recipient, and relay.p"],
  );
  assert.deepEqual(
    await check(["relay: { postmaster: 'maildir:./postmaster' }", "routes: [{ to: 'smtp://192.0.2.25:25' }]"]),
    [],
  );
  // Without routes the default is a catch-all MX route, which can never deliver a domainless address.
  assert.deepEqual(await check([]), []);
});

test("a rule using findings of a plugin that is not in the pipeline is reported", async () => {
  const findings = await check(["rules: [{ name: dkim-fail, when: { dkim.result: fail }, action: reject }]"]);
  assert.deepEqual(summary(findings), [
    'warning rules.0.when: rule dkim-fail: dkim.result is a finding of plugin dkim, which is not in the pipeline, so the rule never sees it; add "- plugin: dkim"',
  ]);
});

test("a plugin listed twice in the pipeline is reported at its second entry", async () => {
  const findings = await check([
    "pipeline:",
    "  - { plugin: ./sample.ts, phase: mail }",
    "  - { plugin: ./sample.ts, phase: data }",
  ]);
  assert.deepEqual(summary(findings), [
    "warning pipeline.1.plugin: plugin ./sample.ts is already in the pipeline (entry 0); its findings overwrite the first one's — merge the two entries",
  ]);
});

test("unknown finding names: an undeclared finding, an undeclared field, a core name misspelt", async () => {
  const findings = await check([
    "pipeline: [{ plugin: ./sample.ts }]",
    "rules:",
    "  - { name: a, when: { smaple: fail }, action: reject }",
    "  - { name: b, when: { sample.levle: { gt: 1 } }, action: reject }",
    "  - { name: c, when: { client.port: 25 }, action: reject }",
    "  - { name: d, action: { 'skip': spf } }",
  ]);
  const lines = summary(findings);
  assert.equal(lines.length, 4);
  assert.match(
    lines[0],
    /^warning rules\.0\.when: rule a: unknown finding "smaple"; known findings: dkim, sample; the core provides client\.ip, /,
  );
  assert.match(
    lines[1],
    /^warning rules\.1\.when: rule b: plugin \.\/sample\.ts declares no field "levle" of finding sample; its fields: result, level, zones$/,
  );
  assert.match(
    lines[2],
    /^warning rules\.2\.when: rule c: client\.port is not something rules can test; the core provides client\.ip, /,
  );
  assert.equal(
    lines[3],
    "warning rules.3.action: rule d skips spf, which is not in the pipeline (skip names entries as written in plugin:)",
  );
});

test("check prints each finding at its line; an error (or a warning with --strict) exits 1", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-check-"));
  try {
    const file = join(dir, "policy.yaml");
    await writeFile(
      file,
      [
        "version: 1",
        "relay:",
        "  networks:",
        "    - 0.0.0.0/0",
        "rules:",
        "  - name: x",
        "    when: { nothing.here: 1 }",
        "    action: log",
      ].join("\n"),
    );
    const result = await checkPolicy(file);
    assert.equal(result.code, 1);
    assert.match(
      result.lines[0],
      new RegExp(`^${file}:4:7 relay\\.networks\\.0: error: 0\\.0\\.0\\.0/0 lets every client`),
    );
    assert.match(
      result.lines[1],
      new RegExp(`^${file}:7:11 rules\\.0\\.when: warning: rule x: unknown finding "nothing"`),
    );
    assert.equal(result.lines[2], `${file}: 1 error, 1 warning`);

    await writeFile(
      file,
      ["version: 1", "rules:", "  - { name: x, when: { nothing.here: 1 }, action: log }"].join("\n"),
    );
    assert.equal((await checkPolicy(file)).code, 0);
    assert.equal((await checkPolicy(file, { strict: true })).code, 1);
    const [line] = await formatFindings(file, [
      { severity: "warning", path: ["rules", 0, "when", "nothing.here"], message: "m" },
    ]);
    assert.equal(line, `${file}:3:38 rules.0.when.nothing.here: warning: m`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a plugin whose setup fails is a located problem for check and start alike", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-setup-"));
  try {
    const file = join(dir, "policy.yaml");
    await writeFile(
      file,
      [
        "version: 1",
        "pipeline:",
        "  - plugin: dkim-sign",
        "    keys: [{ domain: example.test, selector: s1, key: ./missing.pem }]",
      ].join("\n"),
    );
    const expected = new RegExp(
      `^${file}:3:5 pipeline\\.0: plugin dkim-sign: cannot read ${join(dir, "missing.pem")} \\(no such file\\) — create the file`,
    );
    await assert.rejects(checkPolicy(file), (error: Error) => {
      assert.ok(error instanceof PolicyError);
      assert.match(error.message, expected);
      return true;
    });
    // Through the CLI: check and start both refuse the policy with that line and exit 1.
    const cli = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));
    for (const args of [
      ["check", file],
      ["start", "--policy", file, "--listen", "127.0.0.1:0"],
    ]) {
      const result = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout: 20_000 });
      assert.equal(result.status, 1, `${args[0]}: ${result.stderr}`);
      assert.match(result.stderr, new RegExp(expected.source, "m"), args[0]);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
