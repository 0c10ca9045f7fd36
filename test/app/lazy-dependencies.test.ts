/**
 * What `portcullis check` and an idle `portcullis start` load, under the edge policy (SPF, DKIM,
 * ARC, DMARC, greylisting and more): not the dependencies that only some traffic needs — mailauth,
 * mailparser, nodemailer's SMTP client, the public suffix list — which load on first use. Each
 * costs megabytes of idle memory and tenths of a second of CPU per `check` (figures in the change
 * that made them lazy; no time is asserted here). The Redis client loads only with a Redis store,
 * the metrics only for a reader (this policy has none). A message through the gateway then loads
 * mailauth, so the watch below is seen to work. Modules are named by the process itself
 * (test/fixtures/loaded-packages/register.mjs).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { startDnsServer } from "../../core/testing/dns-server.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { startChild } from "../ops/child.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const register = join(root, "test/fixtures/loaded-packages/register.mjs");
const dir = await mkdtemp(join(tmpdir(), "portcullis-lazy-"));
// Answers every lookup of the policy's checks with "no such name".
const dns = await startDnsServer({});
after(async () => {
  await dns.close();
  await rm(dir, { recursive: true, force: true });
});
// A copy, so that its spool (relative to the policy file) is made in the scratch folder.
const policy = join(dir, "edge-mx.yaml");
await copyFile(join(root, "policies/edge-mx.yaml"), policy);

/** The module paths under node_modules named in `output`, e.g. "mailauth/lib/tools.js". */
function loadedModules(output: string): Set<string> {
  const modules = new Set<string>();
  for (const [, url] of output.matchAll(/^loaded-module (\S+)$/gm)) {
    modules.add(url.slice(url.lastIndexOf("/node_modules/") + "/node_modules/".length));
  }
  return modules;
}

/** Portcullis's own modules named in `output`, from the checkout's root, e.g. "core/engine/session.ts". */
function loadedSources(output: string): Set<string> {
  const sources = new Set<string>();
  for (const [, url] of output.matchAll(/^loaded-source (\S+)$/gm)) {
    if (url.startsWith(`file://${root}`)) sources.add(url.slice(`file://${root}`.length));
  }
  return sources;
}

const loads = (modules: Set<string>, prefix: string) => [...modules].some((path) => path.startsWith(prefix));

/** Loaded only by traffic that needs them. */
const ON_FIRST_USE = [
  "dns-packet/", // our own DNS query, only for a name c-ares refuses to send (core/dns/resolver.ts)
  "mailauth/",
  "mailparser/",
  "nodemailer/lib/smtp-connection/",
  "nodemailer/dist/esm/smtp-connection/",
  "tldts/", // greylist's public suffix list, for the first client with a verified name
  "ioredis/", // the Redis client, only for a policy whose state store is Redis (this one keeps state in memory)
  "prom-client/", // the metrics, only when something reads them (observability.metrics, the dashboard)
];

/** What `portcullis ARGS` loads, the process run as `check` and `start` are. */
function cli(...args: string[]) {
  const result = spawnSync(process.execPath, ["--import", register, join(root, "bin/portcullis.js"), ...args], {
    encoding: "utf8",
  });
  return { ...result, modules: loadedModules(result.stdout), sources: loadedSources(result.stdout) };
}

/** The built-in plugins the edge policy does not name in its pipeline. */
const UNNAMED_PLUGINS = ["clamav", "concurrency", "dkim-sign", "rspamd", "spamassassin"];

test("check loads the policy's plugins but not mailauth, mailparser or nodemailer's client", () => {
  const { status, stderr, modules, sources } = cli("check", policy);
  assert.equal(status, 0, stderr);
  // Both ways of loading are seen: yaml is required (CommonJS), zod imported (an ES module).
  assert.ok(loads(modules, "yaml/") && loads(modules, "zod/"), [...modules].join("\n"));
  for (const prefix of ON_FIRST_USE) assert.ok(!loads(modules, prefix), `check loaded ${prefix}`);
  // Nor what only a running gateway needs: the logger, the listener, the session engine, delivery.
  for (const prefix of ["pino/", "smtp-server/"]) assert.ok(!loads(modules, prefix), `check loaded ${prefix}`);
  assert.ok(loads(sources, "plugins/dmarc/") && loads(sources, "core/engine/runtime."), [...sources].join("\n"));
  for (const prefix of ["core/engine/session.", "core/delivery/forward.", "core/smtp/", "core/observability/log."]) {
    assert.ok(!loads(sources, prefix), `check loaded ${prefix}`);
  }
  // The rules test findings of the pipeline's own plugins only, so the others are never imported.
  for (const name of UNNAMED_PLUGINS) assert.ok(!loads(sources, `plugins/${name}/`), `check loaded plugin ${name}`);
});

test("check imports the other built-in plugins when a rule names a finding none of the pipeline declares", async () => {
  const file = join(dir, "beyond.yaml");
  await writeFile(
    file,
    ["version: 1", "rules:", "  - { name: x, when: { spf.result: pass }, action: log }"].join("\n"),
  );
  const { status, stdout, sources } = cli("check", file);
  assert.equal(status, 0, stdout);
  assert.match(stdout, /spf\.result is a finding of plugin spf, which is not in the pipeline/);
  for (const name of UNNAMED_PLUGINS) assert.ok(loads(sources, `plugins/${name}/`), `plugin ${name} not loaded`);
});

test("--version loads neither the policy loader nor its dependencies", () => {
  const { status, stdout, modules, sources } = cli("--version");
  assert.equal(status, 0);
  assert.match(stdout, /^\d+\.\d+\.\d+/m);
  for (const prefix of ["zod/", "yaml/"]) assert.ok(!loads(modules, prefix), `--version loaded ${prefix}`);
  assert.deepEqual(
    [...sources].filter((source) => !source.startsWith("bin/")),
    ["app/cli.ts"],
  );
});

test("an idle gateway has not loaded them; the first message checked loads mailauth", async () => {
  const idle = await startChild(policy, {
    args: ["--dns", dns.address],
    env: { NODE_OPTIONS: `--import=${register}` },
  });
  idle.child.kill("SIGTERM");
  await idle.exited;
  const idleModules = loadedModules(idle.stdout());
  assert.ok(loads(idleModules, "smtp-server/"), [...idleModules].join("\n"));
  for (const prefix of ON_FIRST_USE) assert.ok(!loads(idleModules, prefix), `the idle gateway loaded ${prefix}`);

  const busy = await startChild(policy, {
    args: ["--dns", dns.address],
    env: { NODE_OPTIONS: `--import=${register}` },
  });
  try {
    // The greeting comes after the policy's early-talker wait; SPF runs at MAIL FROM.
    const client = await SmtpTestClient.connect(busy.port);
    await client.transaction({ helo: "client.test", from: "a@sender.test", to: ["u@example.test"], data: "x\r\n" });
    await client.quit();
  } finally {
    busy.child.kill("SIGTERM");
    await busy.exited;
  }
  assert.ok(loads(loadedModules(busy.stdout()), "mailauth/"), "SPF ran without loading mailauth");
});
