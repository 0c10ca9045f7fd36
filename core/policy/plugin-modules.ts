/**
 * Imports the plugins a policy names from outside the gateway: files by path and npm packages.
 * Nothing is registered until the first such plugin, so a policy of built-in plugins costs neither
 * a module-hooks thread nor a TypeScript loader.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { register } from "node:module";
import { extname } from "node:path";
import { pathToFileURL } from "node:url";
import { PACKAGE_SCHEME, type ResolveData } from "./plugin-resolve.js";

/** ".ts" when the gateway runs from its sources (through tsx), ".js" when it runs compiled. */
const ownExtension = extname(new URL(import.meta.url).pathname);

/** The URL of a file of this package, as it runs (sources or dist), relative to this file. */
const own = (path: string) => new URL(`${path}${ownExtension}`, import.meta.url).href;

let resolveHooks = false;
let typescript: Promise<unknown> | undefined;

function registerResolveHooks(): void {
  if (resolveHooks) return;
  resolveHooks = true;
  const entries = { portcullis: own("../index"), "portcullis/testkit": own("../../app/testkit") };
  register<ResolveData>(own("./plugin-resolve"), { data: { entries } });
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
 * Imports a plugin file. The URL carries a hash of the file's content, so a reload after the file
 * changed imports the new code (Node caches a module per URL for the life of the process) while an
 * unchanged file stays the module already loaded. Only the named file is re-imported: modules it
 * imports itself stay as first loaded.
 */
export async function importPluginFile(path: string): Promise<PluginModule> {
  const content = await readFile(path);
  registerResolveHooks();
  if (/\.[mc]?tsx?$/.test(path)) await registerTypeScript();
  const version = createHash("sha256").update(content).digest("hex").slice(0, 16);
  const url = `${pathToFileURL(path).href}?v=${version}`;
  return { exports: await import(url), url };
}

/** Imports the npm package `name` as an import written in the policy's folder `dir` would find it. */
export async function importPluginPackage(name: string, dir: string): Promise<PluginModule> {
  registerResolveHooks();
  const from = pathToFileURL(`${dir}/`).href;
  const url = `${PACKAGE_SCHEME}${encodeURIComponent(name)}?from=${encodeURIComponent(from)}`;
  return { exports: await import(url), url };
}
