/**
 * Imports the plugins a policy names from outside the gateway: files by path and npm packages.
 * Nothing is registered until the first such plugin, so a policy of built-in plugins costs neither
 * a module-hooks thread nor a TypeScript loader.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createRequire, register } from "node:module";
import { dirname, extname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { PACKAGE_SCHEME, type ResolveData } from "./plugin-resolve.js";

/** ".ts" when the gateway runs from its sources (through tsx), ".js" when it runs compiled. */
const ownExtension = extname(new URL(import.meta.url).pathname);

/** This package's folder, found by name: compiled, this module is in a shared chunk of dist/, not at its source's place. */
const packageRoot = dirname(createRequire(import.meta.url).resolve("portcullis/package.json"));

/** The URL of an entry point of this package (a path from its root, no extension), as it runs: source or dist/. */
const own = (path: string) =>
  pathToFileURL(ownExtension === ".ts" ? join(packageRoot, `${path}.ts`) : join(packageRoot, "dist", `${path}.js`))
    .href;

let resolveHooks = false;
/** Plugin file → hash of the content first imported from it (under its plain URL). */
const firstVersions = new Map<string, string>();
let typescript: Promise<unknown> | undefined;

function registerResolveHooks(): void {
  if (resolveHooks) return;
  resolveHooks = true;
  const entries = { portcullis: own("core/index"), "portcullis/testkit": own("app/testkit") };
  register<ResolveData>(own("core/policy/plugin-resolve"), { data: { entries } });
}

/** tsx, for plugins written in TypeScript; from the sources the gateway already runs under it. */
function registerTypeScript(): Promise<unknown> {
  typescript ??= ownExtension === ".ts" ? Promise.resolve() : import("tsx/esm/api").then((tsx) => tsx.register());
  return typescript;
}

export interface PluginModule {
  readonly exports: { readonly default?: unknown };
  /** The URL it was imported from; a changed file gets a new one. */
  readonly url: string;
}

/**
 * Imports a plugin file. Node caches a module per URL for the life of the process, so a file whose
 * content differs from what was first imported from it gets a URL carrying a hash of the content: a
 * reload after an edit imports the new code, and an unchanged file stays the module already loaded.
 * The first version keeps the plain file URL, so it is the same module as an `import` of that file
 * elsewhere in the process (a test reading a fixture plugin's state). Only the named file is
 * re-imported: modules it imports itself stay as first loaded.
 */
export async function importPluginFile(path: string): Promise<PluginModule> {
  const content = await readFile(path);
  registerResolveHooks();
  if (/\.[mc]?tsx?$/.test(path)) await registerTypeScript();
  const version = createHash("sha256").update(content).digest("hex").slice(0, 16);
  const first = firstVersions.get(path) ?? version;
  firstVersions.set(path, first);
  const url = version === first ? pathToFileURL(path).href : `${pathToFileURL(path).href}?v=${version}`;
  return { exports: await import(url), url };
}

/** Imports the npm package `name` as an import written in the policy's folder `dir` would find it. */
export async function importPluginPackage(name: string, dir: string): Promise<PluginModule> {
  registerResolveHooks();
  const from = pathToFileURL(`${dir}/`).href;
  const url = `${PACKAGE_SCHEME}${encodeURIComponent(name)}?from=${encodeURIComponent(from)}`;
  return { exports: await import(url), url };
}
