/**
 * `portcullis init`: the starter policy it writes passes `portcullis check --strict` in both its
 * forms (next hop and maildir), and an existing file is only replaced with --force.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { checkPolicy } from "../../app/check.js";
import { InitUsageError, initCommand } from "../../app/init.js";

const bin = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));
const dir = await mkdtemp(join(tmpdir(), "portcullis-init-"));
after(() => rm(dir, { recursive: true, force: true }));

/** Runs init with `args`, capturing what it writes. */
async function init(args: string[]) {
  const stdout = new PassThrough({ encoding: "utf8" });
  const stderr = new PassThrough({ encoding: "utf8" });
  const code = await initCommand(args, stdout, stderr);
  return { code, stdout: stdout.read() ?? "", stderr: stderr.read() ?? "" };
}

for (const [form, option, route] of [
  ["a next hop", ["--next-hop", "smtp://10.1.2.3:2525"], 'to: "smtp://10.1.2.3:2525"'],
  ["a maildir", ["--maildir", join(dir, "mail")], 'to: "maildir:./mail"'],
  ["no route given", [], 'to: "smtp://127.0.0.1:2526" # PLACEHOLDER'],
] as const) {
  test(`the starter policy for ${form} passes check --strict`, async () => {
    const out = join(dir, `${form.replace(" ", "-")}.yaml`);
    const result = await init(["--domain", "mail.example.org", ...option, "--out", out]);
    assert.equal(result.code, 0, result.stderr);
    const text = await readFile(out, "utf8");
    assert.ok(text.includes(route), text);
    assert.match(text, /domains: \[mail\.example\.org\]/);
    assert.match(text, /postmaster: postmaster@mail\.example\.org/);
    assert.match(text, /mode: queue/);
    for (const plugin of ["fcrdns", "dnsbl", "spf", "dkim", "dmarc", "rate-limit", "auth-results"]) {
      assert.match(text, new RegExp(`- plugin: ${plugin}\\b`));
    }
    const check = await checkPolicy(out, { strict: true });
    assert.deepEqual(check.lines, [`${out}: ok`]);
    assert.equal(check.code, 0);
  });
}

test("an existing file is kept unless --force is given", async () => {
  const out = join(dir, "mine.yaml");
  await writeFile(out, "# my own policy\n");
  const refused = await init(["--out", out]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /already exists; pass --force to replace it/);
  assert.equal(await readFile(out, "utf8"), "# my own policy\n");
  const forced = await init(["--out", out, "--force"]);
  assert.equal(forced.code, 0, forced.stderr);
  assert.match(await readFile(out, "utf8"), /portcullis init/);
});

test("a malformed option is a usage error and writes nothing", async () => {
  const out = join(dir, "bad.yaml");
  for (const [args, message] of [
    [["--next-hop", "mx.example.org"], /is not an SMTP next hop/],
    [["--next-hop", "smtp://a.example:25", "--maildir", "x"], /--next-hop or --maildir, not both/],
    [["--domain", "not a domain"], /is not a domain/],
  ] as const) {
    await assert.rejects(init([...args, "--out", out]), (error: Error) => {
      assert.ok(error instanceof InitUsageError);
      assert.match(error.message, message);
      return true;
    });
  }
  await assert.rejects(readFile(out), { code: "ENOENT" });
  // The command line shows a usage error with the usage, exit 2.
  const result = spawnSync(process.execPath, [bin, "init", "--next-hop", "mx.example.org", "--out", out], {
    encoding: "utf8",
  });
  assert.equal(result.status, 2, result.stderr);
  assert.match(result.stderr, /^portcullis: --next-hop "mx\.example\.org" is not an SMTP next hop/);
  assert.match(result.stderr, /portcullis init \[--domain DOMAIN\]/);
});
