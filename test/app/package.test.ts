/**
 * Portcullis as an npm package, the way an operator and a plugin author meet it outside this
 * checkout: packed once (`npm pack`) and installed into a fresh folder, where
 * - `--version`, and a TypeScript plugin beside a policy in a folder with no package.json (it imports
 *   "portcullis" and gets the running gateway's own module; editing it and sending SIGHUP changes
 *   the replies, and the reload log line names it) — also from the checkout;
 * - `check` loads its code from a few bundled files (zod and yaml inside);
 * - `init` writes a policy that passes `check --strict` and, started, takes mail into `./mail`;
 * - `plugin new` writes a package whose `npm install` takes portcullis from that install (not the
 *   registry), whose `npm test` type-checks against the installed declarations and passes through
 *   the installed test kit, and whose `npm run build` makes JS; a gateway loads it by path (source
 *   and build) and by package name, and its typed finding works in a policy rule.
 * Slow by nature (two `npm install`s from npm's cache, one build, several gateways): about a minute.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { startDnsServer } from "../../core/testing/dns-server.js";
import { eventually } from "../fixtures/eventually.js";
import { writeStampFolder } from "../fixtures/outside-plugin.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { type ChildGateway, startChild } from "../ops/child.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const scratch = await mkdtemp(join(tmpdir(), "portcullis-package-"));
after(() => rm(scratch, { recursive: true, force: true }));

// node:test tells child processes through NODE_TEST_CONTEXT to report to it; a plugin's own
// `npm test` must print its results as it would for its author.
const { NODE_TEST_CONTEXT: _, ...authorEnv } = process.env;

/** Runs a command to completion; its status and output. */
function attempt(command: string, args: string[], cwd: string) {
  const result = spawnSync(command, args, { cwd, encoding: "utf8", env: authorEnv });
  return { status: result.status, output: `${command} ${args.join(" ")}:\n${result.stdout}\n${result.stderr}` };
}

/** Runs a command that must succeed; its stdout. */
function run(command: string, args: string[], cwd: string) {
  const result = spawnSync(command, args, { cwd, encoding: "utf8", env: authorEnv });
  assert.equal(result.status, 0, `${command} ${args.join(" ")}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** npm as an author runs it, taking packages from npm's cache where it can. */
const npm = (args: string[], cwd: string) => run("npm", [...args, "--prefer-offline", "--no-audit", "--no-fund"], cwd);

/** The reply to MAIL FROM:<x@domain>, and for other senders the DATA reply. */
async function send(port: number, from: string) {
  const client = await SmtpTestClient.connect(port);
  const result = await client.transaction({
    helo: "client.test",
    from,
    to: ["u@example.test"],
    data: "Subject: package\r\n\r\nhello\r\n",
  });
  await client.quit();
  return result;
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await sleep(20);
}

/** Mail is taken into the maildir; the plugin's reply follows its file through an edit and SIGHUP. */
async function exercise(gateway: ChildGateway, dir: string): Promise<void> {
  try {
    const accepted = await send(gateway.port, "a@ham.test");
    assert.equal(accepted.data?.code, 250, JSON.stringify(accepted));
    assert.equal((await readdir(join(dir, "maildir/new"))).length, 1);
    assert.equal((await send(gateway.port, "x@stamped.test")).mail?.raw, "550 5.7.1 stamped v1");

    await writeStampFolder(dir, "v2");
    gateway.child.kill("SIGHUP");
    const reloaded = () => gateway.logs().filter((line) => line.event === "reload" && line.reason === "SIGHUP");
    await until(() => reloaded().length > 0);
    assert.deepEqual(reloaded()[0].reloadedPlugins, ["./stamp.ts"], JSON.stringify(reloaded()[0]));
    assert.equal(reloaded()[0].msg, "policy reload applied; new plugin code: ./stamp.ts");
    assert.equal((await send(gateway.port, "x@stamped.test")).mail?.raw, "550 5.7.1 stamped v2");
  } finally {
    gateway.child.kill("SIGTERM");
    await gateway.exited;
  }
}

test("from the checkout, a .ts plugin beside a policy outside it loads, and SIGHUP loads its new code", async () => {
  const dir = join(scratch, "checkout");
  await mkdir(dir);
  const policy = await writeStampFolder(dir, "v1");
  await exercise(await startChild(policy), dir);
});

// Packed and installed once for the tests below: `npm pack` runs `prepare`, which builds dist/
// (incrementally) as an install from git would; the dependencies come from npm's cache.
const home = join(scratch, "home");
let tarball: string;
let bin: string;

before(async () => {
  const packed = join(scratch, "packed");
  await mkdir(packed);
  run("npm", ["pack", "--pack-destination", packed, "--silent"], root);
  tarball = join(packed, (await readdir(packed))[0]);
  await mkdir(home);
  npm(["install", tarball], home);
  bin = join(home, "node_modules/.bin/portcullis");
});

test("the installed package runs: --version, and a .ts plugin beside a policy outside any package", async () => {
  assert.equal(run(bin, ["--version"], home).trim(), "0.1.0");
  // Outside `home`: no package.json above the plugin, so "portcullis" can only be the gateway's own.
  const dir = join(scratch, "ops");
  await mkdir(dir);
  const policy = await writeStampFolder(dir, "v1");
  assert.equal(run(bin, ["check", policy], home), `${policy}: ok\n`);
  await exercise(await startChild(policy, { bin, cwd: home }), dir);
});

test("the installed check loads its code from a few bundled files, zod and yaml inside them", () => {
  // Node 20's module loader has no compile cache: most of what `check` costs is finding, reading and
  // compiling module files. Unbundled it loaded ~80 of ours and ~170 of zod's and yaml's; bundled, ~40.
  const installed = join(home, "node_modules/portcullis");
  const register = join(root, "test/fixtures/loaded-packages/register.mjs");
  const result = spawnSync(
    process.execPath,
    ["--import", register, join(installed, "dist/app/cli.js"), "check", join(installed, "policies/edge-mx.yaml")],
    { cwd: home, encoding: "utf8" },
  );
  assert.equal(result.status, 0, result.stderr);
  // One line per import of a file: the files are the distinct paths.
  const files = [
    ...new Set(
      [...result.stdout.matchAll(/^loaded-module file:\/\/\S+\/node_modules\/(\S+)$/gm)].map(([, path]) => path),
    ),
  ];
  assert.deepEqual(
    files.filter((path) => path.startsWith("zod/") || path.startsWith("yaml/")),
    [],
    "zod and yaml are loaded from the bundle, not as packages",
  );
  const own = files.filter((path) => path.startsWith("portcullis/"));
  assert.ok(own.length > 0 && own.length <= 50, `check loaded ${own.length} files of portcullis:\n${own.join("\n")}`);
});

test("init writes a policy that passes check --strict and, started, takes mail into ./mail", async () => {
  run("npx", ["portcullis", "init", "--domain", "example.test", "--maildir", "./mail"], home);
  assert.equal(run("npx", ["portcullis", "check", "--strict", "policy.yaml"], home), "policy.yaml: ok\n");
  // Every name the policy's checks look up is unknown to this DNS server: no PTR, no listing, no SPF.
  const dns = await startDnsServer({});
  const gateway = await startChild(join(home, "policy.yaml"), { bin, cwd: home, args: ["--dns", dns.address] });
  try {
    const accepted = await send(gateway.port, "a@sender.test");
    assert.equal(accepted.data?.code, 250, JSON.stringify(accepted));
    const delivered = join(home, "mail/new");
    await eventually(async () => (await readdir(delivered).catch(() => [])).length === 1, "the message in ./mail/new");
    const [file] = await readdir(delivered);
    assert.match(await readFile(join(delivered, file), "utf8"), /^Subject: package\r?$/m);
    assert.ok(dns.count("1.0.0.127.in-addr.arpa", "PTR") > 0, "the policy's checks asked the test DNS server");
  } finally {
    gateway.child.kill("SIGTERM");
    await gateway.exited;
    await dns.close();
  }
});

/** A policy beside `home`'s node_modules loading `plugin` and refusing senders it finds watched. */
function scaffoldPolicy(plugin: string, listed: string): string {
  return `version: 1
server: { hostname: gw.test }
relay: { domains: [example.test], postmaster: "maildir:./plugin-mail" }
pipeline:
  - plugin: ${plugin}
    block: [spam.example]
    watch: [odd.example]
rules:
  - name: watched
    when: { subject-filter.listed: ${listed} }
    action: { reject: "550 5.7.1 watched {subject-filter.domain}" }
routes: [{ to: "maildir:./plugin-mail" }]
`;
}

test("plugin new: npm install and npm test against the installed package, build, load by path and by name", async () => {
  run("npx", ["portcullis", "plugin", "new", "subject-filter"], home);
  const plugin = join(home, "subject-filter");
  // portcullis is the scaffold's peer: the tarball satisfies it, so npm never asks the registry
  // for it; its own dependencies (typescript, tsx, @types/node) come from npm's cache or registry.
  npm(["install", "--no-save", tarball], plugin);
  const installed = JSON.parse(await readFile(join(plugin, "node_modules/.package-lock.json"), "utf8"));
  const source: string = installed.packages["node_modules/portcullis"].resolved;
  assert.equal(resolve(plugin, source.replace(/^file:/, "")), tarball, source);
  // tsc --noEmit against the installed .d.ts (typing ctx.facts["subject-filter"] by declaration
  // merging), then the plugin's three tests through the installed portcullis/testkit.
  const tested = attempt("npm", ["test"], plugin);
  assert.equal(tested.status, 0, tested.output);
  assert.match(tested.output, /# pass 3\n# fail 0/);
  run("npm", ["run", "build"], plugin);
  assert.match(await readFile(join(plugin, "dist/index.js"), "utf8"), /definePlugin/);
  // Installed beside the gateway, as an operator adds a plugin from npm.
  npm(["install", "./subject-filter"], home);

  const forms = {
    source: "./subject-filter/src/index.ts",
    build: "./subject-filter/dist/index.js",
    package: "subject-filter",
  };
  for (const [form, reference] of Object.entries(forms)) {
    const policy = join(home, `plugin-${form}.yaml`);
    await writeFile(policy, scaffoldPolicy(reference, "watch"));
    // The rule on the plugin's finding is held to the finding's declared schema.
    assert.equal(run(bin, ["check", "--strict", policy], home), `${policy}: ok\n`, form);
  }
  // One gateway per form, side by side.
  await Promise.all(
    Object.keys(forms).map(async (form) => {
      const gateway = await startChild(join(home, `plugin-${form}.yaml`), { bin, cwd: home });
      try {
        const blocked = await send(gateway.port, "x@spam.example");
        assert.equal(blocked.mail?.raw, "550 5.7.1 Mail from spam.example is not accepted here", form);
        const watched = await send(gateway.port, "x@odd.example");
        assert.equal(watched.mail?.raw, "550 5.7.1 watched odd.example", form);
        const accepted = await send(gateway.port, "x@ham.example");
        assert.equal(accepted.data?.code, 250, `${form}: ${JSON.stringify(accepted)}`);
      } finally {
        gateway.child.kill("SIGTERM");
        await gateway.exited;
      }
    }),
  );

  // A value the finding cannot take is an error at the rule's line, not a rule that never matches.
  const misspelt = join(home, "plugin-misspelt.yaml");
  await writeFile(misspelt, scaffoldPolicy("subject-filter", "watching"));
  const refused = attempt(bin, ["check", "--strict", misspelt], home);
  assert.equal(refused.status, 1, refused.output);
  assert.match(
    refused.output,
    /plugin-misspelt\.yaml:10:36 rules\.0\.when\.subject-filter\.listed: error: .* is block \| watch or null, never "watching"/,
  );
});
