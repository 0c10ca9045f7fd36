/**
 * The dependency rules of the house (docs/architecture.md), read from the import graph:
 * - core/ never imports plugins/ or app/ (the application hands the plugin catalogue in);
 * - a built-in plugin imports only the public entry (core/index.ts), files of its own folder and
 *   the shared plugin code in plugins/shared/, so an outside author can do what it does;
 * - plugins/shared/ imports only the public entry and itself.
 * plugins/index.ts (the catalogue) names the plugin folders; app/ may import anything.
 * The same checker runs over a fixture tree of deliberate violations, to show it finds them.
 */
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import ts from "typescript";

/** Every relative import (static, re-export, dynamic, type-only) of every source file under `root`. */
async function importGraph(root: string): Promise<Array<{ from: string; to: string }>> {
  const edges: Array<{ from: string; to: string }> = [];
  for (const dir of ["core", "plugins", "app"]) {
    const entries = await readdir(join(root, dir), { recursive: true, withFileTypes: true }).catch(() => []);
    for (const entry of entries) {
      if (!entry.isFile() || !/\.[cm]?[jt]s$/.test(entry.name) || entry.name.endsWith(".d.ts")) continue;
      const file = join(entry.parentPath, entry.name);
      const info = ts.preProcessFile(await readFile(file, "utf8"), true, true);
      for (const { fileName } of info.importedFiles) {
        if (!fileName.startsWith(".")) continue;
        const target = resolve(dirname(file), fileName).replace(/\.js$/, ".ts");
        edges.push({ from: relative(root, file), to: relative(root, target) });
      }
    }
  }
  return edges;
}

/** The folder a plugin file belongs to (`plugins/dnsbl`), or null for plugins/index.ts. */
function pluginFolder(path: string): string | null {
  const parts = path.split("/");
  return parts.length > 2 ? parts.slice(0, 2).join("/") : null;
}

/** Why an import breaks a rule; null when it is allowed. */
function violation({ from, to }: { from: string; to: string }): string | null {
  if (from.startsWith("core/")) {
    return to.startsWith("plugins/") || to.startsWith("app/") ? "the core imports outside the core" : null;
  }
  if (from.startsWith("plugins/")) {
    const own = pluginFolder(from);
    if (own === null) return null; // the catalogue names every plugin folder
    if (to === "core/index.ts" || to.startsWith("plugins/shared/") || to.startsWith(`${own}/`)) return null;
    return "a plugin imports something other than the public entry, its own folder or plugins/shared";
  }
  return null;
}

async function violations(root: string): Promise<string[]> {
  return (await importGraph(root)).flatMap((edge) => {
    const why = violation(edge);
    return why ? [`${edge.from} -> ${edge.to}: ${why}`] : [];
  });
}

test("the core, the plugins and the shared plugin code keep to their imports", async () => {
  const root = new URL("..", import.meta.url).pathname;
  const graph = await importGraph(root);
  assert.ok(graph.length > 200, `the import graph was read (${graph.length} imports)`);
  assert.deepEqual(await violations(root), []);
});

test("a tree of deliberate violations is caught, import by import", async () => {
  const root = new URL("./fixtures/architecture/", import.meta.url).pathname;
  assert.deepEqual((await violations(root)).sort(), [
    "core/engine/reaches-out.ts -> app/cli.ts: the core imports outside the core",
    "core/engine/reaches-out.ts -> plugins/leaky/index.ts: the core imports outside the core",
    "plugins/leaky/index.ts -> core/contract/api.ts: a plugin imports something other than the public entry, its own folder or plugins/shared",
    "plugins/leaky/index.ts -> core/engine/reaches-out.ts: a plugin imports something other than the public entry, its own folder or plugins/shared",
    "plugins/leaky/index.ts -> plugins/other/index.ts: a plugin imports something other than the public entry, its own folder or plugins/shared",
  ]);
});
