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
import { z } from "../../core/index.js";
import { PolicyError } from "../../core/policy/load.js";
import {
  type CheckFinding,
  catalogueOf,
  formatFindings,
  looksBeyondPipeline,
  staticChecks,
} from "../../core/policy/static-checks.js";
import sample from "./rules/fixtures/sample.js";

const fixtures = fileURLToPath(new URL("./rules/fixtures/", import.meta.url));

/** A plugin outside the pipeline whose findings the checks know about (as the built-ins would be). */
const known = catalogueOf([
  {
    name: "dkim",
    definition: { ...sample, name: "dkim", findings: { dkim: z.object({ result: z.enum(["pass", "fail"]) }) } },
  },
]);

async function check(lines: string[]): Promise<CheckFinding[]> {
  const policy = await parsePolicy(["version: 1", ...lines].join("\n"), `${fixtures}policy.yaml`);
  const runtime = await policyRuntime(policy);
  const findings = staticChecks(runtime, known);
  // `check` leaves out the other plugins' findings unless a rule looks beyond the pipeline: every
  // policy of this file shows that they would have changed nothing.
  if (!looksBeyondPipeline(runtime)) assert.deepEqual(staticChecks(runtime, new Map()), findings);
  return findings;
}

test("only a rule testing what the pipeline's plugins do not declare needs the other plugins' findings", async () => {
  const beyond = async (lines: string[]) =>
    looksBeyondPipeline(
      await policyRuntime(await parsePolicy(["version: 1", ...lines].join("\n"), `${fixtures}p.yaml`)),
    );
  const pipeline = "pipeline: [{ plugin: ./sample.ts }]";
  assert.equal(
    await beyond([pipeline, "rules: [{ name: a, when: { sample.result: fail, score: 1 }, action: log }]"]),
    false,
  );
  assert.equal(await beyond([pipeline, "rules: [{ name: a, when: { sample: fail }, action: log }]"]), false);
  assert.equal(await beyond([pipeline]), false);
  for (const when of ["dkim.result: fail", "sampleResult: fail", "smaple: x", "client.port: 25"]) {
    assert.equal(await beyond([pipeline, `rules: [{ name: a, when: { ${when} }, action: log }]`]), true, when);
  }
});

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
    'warning rules.0.when.dkim.result: rule dkim-fail: dkim.result is a finding of plugin dkim, which is not in the pipeline, so the rule never sees it; add "- plugin: dkim"',
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
    /^error rules\.0\.when\.smaple: rule a: unknown finding "smaple" \(did you mean "sample"\?\); known findings: dkim, sample; the core provides client\.ip, /,
  );
  assert.equal(
    lines[1],
    'error rules.1.when.sample.levle: rule b: plugin ./sample.ts records no "sample.levle" (did you mean "sample.level"?); its findings: sample, sample.result, sample.level, sample.zones, sample.zones.name, sample.zones.ip',
  );
  assert.match(
    lines[2],
    /^error rules\.2\.when\.client\.port: rule c: client\.port is not something rules can test; the core provides client\.ip, /,
  );
  assert.equal(
    lines[3],
    "warning rules.3.action: rule d skips spf, which is not in the pipeline (skip names entries as written in plugin:)",
  );
});

test("a value the finding's schema rules out is an error, with the value it probably means", async () => {
  const findings = await check([
    "pipeline: [{ plugin: ./sample.ts }]",
    "rules:",
    "  - { name: a, when: { any: [{ sample.result: passs }, { sample: [fail, FAIL] }] }, action: reject }",
    "  - { name: b, when: { not: { sample.result: { ne: pass, in: [fail, maybe] } } }, action: reject }",
    "  - { name: c, when: { sample.result: { gte: 1 }, sample.level: { gte: 1, eq: high } }, action: reject }",
    "  - { name: d, when: { sample.zones.name: x, dkim: failed, sampleResult: pas }, action: reject }",
  ]);
  assert.deepEqual(summary(findings), [
    'error rules.0.when.any.0.sample.result: rule a: sample.result is pass | fail, never "passs" (did you mean "pass"?): the rule never matches on it',
    'error rules.1.when.not.sample.result: rule b: sample.result is pass | fail, never "maybe": the rule never matches on it',
    "error rules.2.when.sample.result: rule c: sample.result is pass | fail, not a number, so gt, gte, lt and lte never hold: the rule never matches on it",
    'error rules.2.when.sample.level: rule c: sample.level is a number, never "high": the rule never matches on it',
    'warning rules.3.when.dkim: rule d: dkim is a finding of plugin dkim, which is not in the pipeline, so the rule never sees it; add "- plugin: dkim"',
    'error rules.3.when.dkim: rule d: dkim.result is pass | fail, never "failed" (did you mean "fail"?): the rule never matches on it',
    'error rules.3.when.sampleResult: rule d: sample.result is pass | fail, never "pas" (did you mean "pass"?): the rule never matches on it',
  ]);
});

test("a plugin without a finding declaration may write anything: an unknown name is only a warning", async () => {
  const findings = await check([
    "pipeline: [{ plugin: ./undeclared.ts }]",
    "rules: [{ name: a, when: { undeclared.anything: 1, other: x }, action: reject }]",
  ]);
  assert.deepEqual(summary(findings), [
    'warning rules.0.when.other: rule a: no plugin declares a finding "other", though ./undeclared.ts declares no findings and may write it; known findings: dkim, undeclared; the core provides client.ip, client.name, trusted, role, score, helo, tls, auth.user, sender, sender.local, sender.domain, tags, recipient, recipient.local, recipient.domain, recipients',
  ]);
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
      new RegExp(`^${file}:7:27 rules\\.0\\.when\\.nothing\\.here: error: rule x: unknown finding "nothing"`),
    );
    assert.equal(result.lines[2], `${file}: 2 errors, 0 warnings`);

    await writeFile(
      file,
      ["version: 1", "rules:", "  - { name: x, when: { spf.result: pass }, action: log }"].join("\n"),
    );
    assert.equal((await checkPolicy(file)).code, 0);
    assert.equal((await checkPolicy(file, { strict: true })).code, 1);
    const [line] = await formatFindings(file, [
      { severity: "warning", path: ["rules", 0, "when", "spf.result"], message: "m" },
    ]);
    assert.equal(line, `${file}:3:36 rules.0.when.spf.result: warning: m`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("check holds rules to the built-in plugins' finding schemas: a typo of a path or value is a located error", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-check-"));
  try {
    const file = join(dir, "policy.yaml");
    await writeFile(
      file,
      [
        "version: 1",
        "pipeline: [{ plugin: fcrdns }, { plugin: spf }, { plugin: dmarc }, { plugin: helo }]",
        "rules:",
        "  - { name: a, when: { fcrdns.result: passs }, action: reject }",
        "  - { name: b, when: { spf.result: softfial }, action: reject }",
        "  - { name: c, when: { spf.reslt: pass }, action: reject }",
        "  - { name: d, when: { dmarcPolicy: rejct }, action: reject }",
        "  - { name: e, when: { helo.findings: dynamc, fcrdns.names: { domain: [example.test] } }, action: reject }",
        "  - { name: ok, when: { fcrdns: pass, spf.result: [pass, SoftFail], dmarcPolicy: reject, helo: { exists: true } }, action: accept }",
      ].join("\n"),
    );
    const result = await checkPolicy(file);
    assert.equal(result.code, 1);
    assert.deepEqual(result.lines, [
      `${file}:4:39 rules.0.when.fcrdns.result: error: rule a: fcrdns.result is pass | fail | none | temperror, never "passs" (did you mean "pass"?): the rule never matches on it`,
      `${file}:5:36 rules.1.when.spf.result: error: rule b: spf.result is pass | fail | softfail | neutral | none | temperror | permerror, never "softfial" (did you mean "softfail"?): the rule never matches on it`,
      `${file}:6:35 rules.2.when.spf.reslt: error: rule c: plugin spf records no "spf.reslt" (did you mean "spf.result"?); its findings: spf, spf.result, spf.identity, spf.sender, spf.domain, spf.explanation, spf.record, spf.skipped`,
      `${file}:7:37 rules.3.when.dmarcPolicy: error: rule d: dmarc.policy is none | quarantine | reject or null, never "rejct" (did you mean "reject"?): the rule never matches on it`,
      `${file}:8:39 rules.4.when.helo.findings: error: rule e: helo.findings is list of our-address | our-name | invalid | bare-ip | literal-mismatch | unqualified | dynamic | no-address | temperror, never "dynamc" (did you mean "dynamic"?): the rule never matches on it`,
      `${file}: 5 errors, 0 warnings`,
    ]);
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
