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
import { copyFile, mkdtemp, rm } from "node:fs/promises";
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

const loads = (modules: Set<string>, prefix: string) => [...modules].some((path) => path.startsWith(prefix));

/** Loaded only by traffic that needs them. */
const ON_FIRST_USE = [
  "mailauth/",
  "mailparser/",
  "nodemailer/lib/smtp-connection/",
  "nodemailer/dist/esm/smtp-connection/",
  "tldts/", // greylist's public suffix list, for the first client with a verified name
  "ioredis/", // the Redis client, only for a policy whose state store is Redis (this one keeps state in memory)
  "prom-client/", // the metrics, only when something reads them (observability.metrics, the dashboard)
];

test("check loads the policy's plugins but not mailauth, mailparser or nodemailer's client", () => {
  const result = spawnSync(process.execPath, ["--import", register, join(root, "bin/portcullis.js"), "check", policy], {
    encoding: "utf8",
  });
  assert.equal(result.status, 0, result.stderr);
  const modules = loadedModules(result.stdout);
  // Both ways of loading are seen: yaml is required (CommonJS), zod imported (an ES module).
  assert.ok(loads(modules, "yaml/") && loads(modules, "zod/"), [...modules].join("\n"));
  for (const prefix of ON_FIRST_USE) assert.ok(!loads(modules, prefix), `check loaded ${prefix}`);
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
