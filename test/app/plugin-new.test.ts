/**
 * `portcullis plugin new`: the package it writes passes its own test against this checkout (linked
 * in as node_modules/portcullis, as npm would install it), and a gateway loads the plugin by path
 * from a policy beside it and answers with its verdict's reply over SMTP. Its type-check against the
 * installed declarations, its build and loading it by package name are in test/app/package.test.ts,
 * which installs the packed package as an author would.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPolicy } from "../../app/catalogue.js";
import { PluginUsageError, packageNameProblem, pluginCommand, scaffoldVersions } from "../../app/plugin-new.js";
import { createLogger } from "../../core/observability/log.js";
import { Gateway } from "../../core/smtp/gateway.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const repo = fileURLToPath(new URL("../..", import.meta.url));
const work = await mkdtemp(join(tmpdir(), "portcullis-plugin-new-"));
const pkg = join(work, "my-check");
after(() => rm(work, { recursive: true, force: true }));

/** `plugin new` run in the work folder (the command writes into the current folder). */
async function pluginNew(args: string[]) {
  const cwd = process.cwd();
  process.chdir(work);
  try {
    return await pluginCommand(["new", ...args], new PassThrough());
  } finally {
    process.chdir(cwd);
  }
}

/** The exit status and output of a command run in the scaffold. */
interface Run {
  readonly status: number | null;
  readonly output: string;
}

/** Runs a command in the scaffold as its author would (not as a child of this test run: node:test
 * tells its children through NODE_TEST_CONTEXT to report to it instead of printing results). */
function run(args: string[]): Promise<Run> {
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const child = spawn(process.execPath, args, { cwd: pkg, env });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk));
  child.stderr.on("data", (chunk: Buffer) => (output += chunk));
  return once(child, "close").then(([status]) => ({ status: status as number | null, output }));
}

// The scaffold's own test, started once it is in place.
let ownTest: Promise<Run>;

before(async () => {
  assert.equal(await pluginNew(["my-check"]), 0);
  // What `npm install` would put there: this checkout as portcullis, and the tools it pins.
  await mkdir(join(pkg, "node_modules"), { recursive: true });
  await symlink(repo, join(pkg, "node_modules", "portcullis"));
  for (const name of ["tsx", "zod"]) await symlink(join(repo, "node_modules", name), join(pkg, "node_modules", name));
  // The portcullis-source condition (as in test/run.mjs) runs this checkout's sources, not a dist/ that may be stale.
  ownTest = run(["--conditions=portcullis-source", "--import", "tsx", "--test", "test/index.test.ts"]);
});

test("package.json: a module with portcullis as a peer and the tools this repository pins", async () => {
  const manifest = JSON.parse(await readFile(join(pkg, "package.json"), "utf8"));
  const versions = scaffoldVersions();
  const own = JSON.parse(await readFile(join(repo, "package.json"), "utf8"));
  assert.equal(versions.portcullis, own.version);
  assert.equal(manifest.name, "my-check");
  assert.equal(manifest.type, "module");
  assert.deepEqual(manifest.peerDependencies, { portcullis: `^${own.version}` });
  assert.deepEqual(manifest.devDependencies, {
    "@types/node": own.devDependencies["@types/node"],
    tsx: own.dependencies.tsx,
    typescript: own.devDependencies.typescript,
  });
  assert.equal(manifest.scripts.test, "tsc --noEmit && node --import tsx --test test/*.test.ts");
});

test("the scaffold's own test passes through portcullis/testkit", async () => {
  const result = await ownTest;
  assert.equal(result.status, 0, result.output);
  assert.match(result.output, /# pass 3\n# fail 0/);
});

test("a gateway loads the plugin by path from a policy beside it and answers with its verdict", async () => {
  const policy = join(work, "policy.yaml");
  await writeFile(
    policy,
    `version: 1
server: { hostname: gateway.example.test }
relay: { domains: [example.test] }
pipeline:
  - plugin: ./my-check/src/index.ts
    block: [spam.example]
routes:
  - to: discard
`,
  );
  const gateway = await Gateway.create(await loadPolicy(policy), {
    log: createLogger("silent", new PassThrough()),
    listen: "127.0.0.1:0",
  });
  const [address] = await gateway.listen();
  try {
    const client = await SmtpTestClient.connect(address.port);
    const refused = await client.transaction({
      from: "x@spam.example",
      to: ["u@example.test"],
      data: "Subject: hi\r\n\r\nhi\r\n",
    });
    assert.equal(refused.mail.raw, "550 5.7.1 Mail from spam.example is not accepted here");
    await client.command("RSET");
    const accepted = await client.transaction({
      from: "x@ham.example",
      to: ["u@example.test"],
      data: "Subject: hi\r\n\r\nhi\r\n",
    });
    assert.equal(accepted.data?.code, 250);
    await client.quit();
  } finally {
    await gateway.stop(200);
  }
});

test("an existing folder or a name npm would refuse is not scaffolded", async () => {
  await assert.rejects(pluginNew(["my-check"]), /my-check already exists; choose another NAME/);
  for (const name of ["My-Check", "my check", "my.check", "-x", "@scope/", "a".repeat(215)]) {
    assert.ok(packageNameProblem(name), name);
    await assert.rejects(pluginNew([name]), PluginUsageError);
  }
  assert.equal(packageNameProblem("@acme/portcullis-x"), undefined);
});
