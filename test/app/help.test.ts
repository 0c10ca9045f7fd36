/**
 * `--help` and `-h` on every command of bin/portcullis.js: that command's usage on stdout, nothing
 * on stderr, exit 0, and nothing else done (no policy read, no password read from stdin).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

const bin = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));

function run(args: string[]) {
  // stdin is an empty pipe: `passwd` reading it instead of printing usage would fail, not pass.
  return spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 20_000 });
}

const COMMANDS: Array<[string[], RegExp]> = [
  [["start"], /portcullis start --policy FILE/],
  [["check"], /portcullis check FILE/],
  [["init"], /portcullis init \[--domain DOMAIN\]/],
  [["plugin", "new"], /portcullis plugin new NAME/],
  [["try"], /portcullis try --policy FILE --ip IP/],
  [["test"], /portcullis test FILE\.test\.yaml/],
  [["replay"], /portcullis replay --policy CANDIDATE --log/],
  [["limits", "show"], /portcullis limits show\|reset KEY/],
  [["queue", "list"], /portcullis queue list\|show ID/],
  [["passwd"], /portcullis passwd \[NAME\]/],
  [["schema"], /portcullis schema/],
  [["doctor"], /portcullis doctor --policy FILE/],
];

describe("--help and -h", () => {
  for (const flag of ["--help", "-h"]) {
    for (const [args, usage] of COMMANDS) {
      test(`portcullis ${args.join(" ")} ${flag}`, () => {
        const result = run([...args, flag]);
        assert.equal(result.status, 0, result.stderr);
        assert.equal(result.stderr, "");
        assert.match(result.stdout, /^usage:\n/);
        assert.match(result.stdout, usage);
        assert.ok(!result.stdout.includes('"$schema"'), "schema --help printed the schema");
      });
    }

    test(`portcullis ${flag} alone: every command's usage`, () => {
      const result = run([flag]);
      assert.equal(result.status, 0, result.stderr);
      for (const [, usage] of COMMANDS) assert.match(result.stdout, usage);
    });
  }

  test("the flag wins over missing arguments (no 'needs --policy' error)", () => {
    const result = run(["start", "-h"]);
    assert.equal(result.status, 0);
    assert.doesNotMatch(result.stdout + result.stderr, /needs --policy/);
  });

  test("without --help a usage error still exits 2 on stderr", () => {
    const result = run(["start"]);
    assert.equal(result.status, 2);
    assert.equal(result.stdout, "");
    assert.match(result.stderr, /start needs --policy FILE/);
  });
});
