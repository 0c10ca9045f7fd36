/**
 * Portcullis as an npm package, the way an operator meets it outside this checkout: `npm pack`,
 * installed into a fresh folder, then `--version`, `check` and `start` there; a TypeScript plugin
 * beside the operator's policy (a folder with no package.json) imports "portcullis" and gets the
 * running gateway's own module; editing the plugin and sending SIGHUP changes the gateway's replies
 * and the reload log line names the plugin. The same plugin and reload run from the checkout too.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { writeStampFolder } from "../fixtures/outside-plugin.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { type ChildGateway, startChild } from "../ops/child.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const scratch = await mkdtemp(join(tmpdir(), "portcullis-package-"));
after(() => rm(scratch, { recursive: true, force: true }));

function run(command: string, args: string[], cwd: string) {
  const result = spawnSync(command, args, { cwd, encoding: "utf8" });
  assert.equal(result.status, 0, `${command} ${args.join(" ")}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

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

test("the packed tarball installs into a fresh folder and runs there: --version, check, start, plugins", async () => {
  // `npm pack` runs `prepare`, which builds dist/ (incrementally) as an install from git would.
  const packed = join(scratch, "packed");
  await mkdir(packed);
  run("npm", ["pack", "--pack-destination", packed, "--silent"], root);
  const [tarball] = await readdir(packed);
  const home = join(scratch, "home");
  await mkdir(home);
  // The dependencies come from npm's cache, where installing this checkout left them.
  run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", join(packed, tarball)], home);

  const bin = join(home, "node_modules/.bin/portcullis");
  assert.equal(run(bin, ["--version"], home).trim(), "0.1.0");
  const dir = join(home, "ops");
  await mkdir(dir);
  const policy = await writeStampFolder(dir, "v1");
  assert.equal(run(bin, ["check", policy], home), `${policy}: ok\n`);
  await exercise(await startChild(policy, { bin, cwd: home }), dir);
});
