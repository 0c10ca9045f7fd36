/**
 * The policies the repository ships must work on a fresh clone: `portcullis check` passes on every
 * policies/*.yaml and `portcullis test` on every policies/examples/*.test.yaml, through the real CLI.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../..", import.meta.url));
const cli = join(root, "bin", "portcullis.js");

function run(args: string[]): { status: number | null; output: string } {
  const result = spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: "utf8", timeout: 120_000 });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

const listed = async (dir: string, suffix: string) =>
  (await readdir(join(root, dir))).filter((name) => name.endsWith(suffix)).map((name) => join(dir, name));

test("portcullis check passes on every shipped policy", async () => {
  const policies = (await listed("policies", ".yaml")).sort();
  assert.ok(policies.length >= 3, `policies found: ${policies.join(", ")}`);
  for (const policy of policies) {
    const { status, output } = run(["check", policy]);
    assert.equal(status, 0, `check ${policy}:\n${output}`);
  }
});

test("portcullis test passes on every shipped policy test file", async () => {
  const files = (await listed(join("policies", "examples"), ".test.yaml")).sort();
  assert.ok(files.length >= 2, `test files found: ${files.join(", ")}`);
  for (const file of files) {
    const { status, output } = run(["test", file]);
    assert.equal(status, 0, `test ${file}:\n${output}`);
    assert.match(output, / 0 failed\n$/);
  }
});
