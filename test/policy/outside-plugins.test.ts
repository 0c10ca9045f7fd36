/**
 * Plugins from outside the gateway, loaded in process from the sources: a TypeScript file beside a
 * policy in a folder with no package.json, an npm package in the policy folder's node_modules, a
 * changed file imported anew on reload, and every way loading one fails, located at `plugin:`.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { loadPolicy } from "../../app/catalogue.js";
import { runPolicy } from "../../app/testkit.js";
import * as core from "../../core/index.js";
import { PolicyError } from "../../core/policy/load.js";
import { policyFiles, reloadedPlugins } from "../../core/policy/reload.js";
import { stampPolicy, writeStampFolder } from "../fixtures/outside-plugin.js";

const scratch = await mkdtemp(join(tmpdir(), "portcullis-outside-"));
after(() => rm(scratch, { recursive: true, force: true }));

async function folder(name: string): Promise<string> {
  const dir = join(scratch, name);
  await mkdir(dir, { recursive: true });
  return dir;
}

const stamped = { ip: "192.0.2.1", from: "x@stamped.test", to: ["u@example.test"] };

test("a .ts plugin beside the policy, in a folder with no package.json, gets the gateway's own portcullis", async () => {
  const file = await writeStampFolder(await folder("beside"), "v1");
  const policy = await loadPolicy(file);
  const [entry] = policy.pipeline;
  assert.ok(entry.module, "the entry records the module it was imported from");
  const plugin = (await import(entry.module)) as { api: typeof core };
  assert.equal(plugin.api.definePlugin, core.definePlugin, "one module instance, not a copy");
  const result = await runPolicy(file, stamped);
  assert.deepEqual(result.reply, { code: 550, enhanced: "5.7.1", text: "stamped v1" });
});

test("a changed plugin file is imported anew, is watched, and the reload names it", async () => {
  const dir = await folder("reload");
  const file = await writeStampFolder(dir, "old");
  const before = await loadPolicy(file);
  assert.ok(policyFiles(before).includes(join(dir, "stamp.ts")));
  const same = await loadPolicy(file);
  assert.deepEqual(reloadedPlugins(before, same), [], "an unchanged file is not reloaded");
  await writeStampFolder(dir, "new");
  const after = await loadPolicy(file);
  assert.deepEqual(reloadedPlugins(before, after), ["./stamp.ts"]);
  assert.equal((await runPolicy(after, stamped)).reply?.text, "stamped new");
});

test("a plugin named by package is imported from the policy folder's node_modules", async () => {
  const dir = await folder("package");
  // ESM only, exported for import alone: found the way an import written in the policy's folder finds it.
  const pkg = join(dir, "node_modules/@acme/portcullis-stamp");
  await mkdir(pkg, { recursive: true });
  await writeFile(
    join(pkg, "package.json"),
    JSON.stringify({ name: "@acme/portcullis-stamp", type: "module", exports: { ".": { import: "./index.js" } } }),
  );
  await writeFile(
    join(pkg, "index.js"),
    [
      'import { definePlugin, z } from "portcullis";',
      "export default definePlugin({",
      '  name: "acme-stamp",',
      "  options: z.strictObject({}),",
      '  setup: () => ({ async mail(ctx) { ctx.facts.stamp = { label: "from a package" }; } }),',
      "});",
    ].join("\n"),
  );
  await writeFile(join(dir, "policy.yaml"), stampPolicy("'@acme/portcullis-stamp'"));
  const result = await runPolicy(join(dir, "policy.yaml"), stamped);
  assert.equal(result.reply?.text, "stamped from a package");
});

/** The one problem loading `policy.yaml` in `dir` reports; it must be at the `plugin:` value. */
async function pluginProblem(dir: string, plugin: string): Promise<string> {
  await writeFile(join(dir, "policy.yaml"), stampPolicy(plugin));
  const error = await loadPolicy(join(dir, "policy.yaml")).then(
    () => assert.fail("the policy loaded"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof PolicyError, String(error));
  assert.equal(error.problems.length, 1, error.message);
  const [problem] = error.problems;
  assert.deepEqual([problem.line, problem.col, problem.path], [5, 13, "pipeline.0.plugin"], error.message);
  return problem.message;
}

test("every way a plugin fails to load is one problem at its plugin: key, saying what is wrong", async () => {
  const dir = await folder("broken");
  await writeFile(join(dir, "syntax.ts"), 'export default {\n  name: "x",\n  options: ,\n};\n');
  await writeFile(join(dir, "no-default.ts"), "export const plugin = 1;\n");
  await writeFile(join(dir, "not-defined.ts"), 'export default { name: "x" };\n');
  assert.match(await pluginProblem(dir, "./missing.ts"), /plugin file .*missing\.ts does not exist/);
  assert.match(
    await pluginProblem(dir, "./syntax.ts"),
    /cannot load plugin .*syntax\.ts: Transform failed with 1 error: .*syntax\.ts:3:11: ERROR: Unexpected ","/,
  );
  assert.match(
    await pluginProblem(dir, "./no-default.ts"),
    /no-default\.ts is not a plugin: its default export is missing/,
  );
  assert.match(await pluginProblem(dir, "./not-defined.ts"), /not-defined\.ts is not a plugin: .*no zod schema/);
  assert.match(
    await pluginProblem(dir, "fcrdsn"),
    /unknown plugin "fcrdsn" \(did you mean "fcrdns"\?\): neither a built-in plugin nor an npm package/,
  );
  assert.match(await pluginProblem(dir, "'@acme/absent'"), /unknown plugin "@acme\/absent"/);
});
