/**
 * Module resolution hooks, run in Node's hooks thread once a policy names a plugin outside the
 * gateway (core/policy/plugin-modules.ts registers them):
 *
 * - `portcullis` and `portcullis/testkit` resolve to the running gateway's own entry files, so a
 *   plugin gets the same `definePlugin` and toolkit instances as the gateway that loads it, wherever
 *   it lives and whether or not a copy of the package sits in a node_modules near it.
 * - `portcullis-plugin-package:NAME?from=FOLDER_URL` resolves the npm package NAME the way an import
 *   written in FOLDER would, with the import conditions (a plain `import()` would resolve from the
 *   gateway's own folder instead).
 * - A TypeScript file outside node_modules is an ES module. Plugins are written with import and
 *   export; in a folder without a package.json saying `"type": "module"` (an operator's policy
 *   folder) Node would take the file for CommonJS, and its `import … from "portcullis"` would then
 *   go through require, which neither finds the running package nor loads it as the same module.
 */
import type { InitializeHook, ResolveHook } from "node:module";

export const PACKAGE_SCHEME = "portcullis-plugin-package:";

export interface ResolveData {
  /** Bare specifier → file URL of the running package's entry. */
  readonly entries: Readonly<Record<string, string>>;
}

let entries: Readonly<Record<string, string>> = {};

export const initialize: InitializeHook<ResolveData> = (data) => {
  entries = data.entries;
};

export const resolve: ResolveHook = async (specifier, context, nextResolve) => {
  // Passed on rather than answered here, so a TypeScript loader further down still sees the entry file.
  if (Object.hasOwn(entries, specifier)) return nextResolve(entries[specifier], context);
  if (specifier.startsWith(PACKAGE_SCHEME)) {
    const request = new URL(specifier);
    const from = request.searchParams.get("from") ?? "";
    return nextResolve(decodeURIComponent(request.pathname), { ...context, parentURL: from });
  }
  const resolved = await nextResolve(specifier, context);
  return isLocalTypeScript(resolved.url) ? { ...resolved, format: "module" } : resolved;
};

function isLocalTypeScript(url: string): boolean {
  if (!url.startsWith("file:")) return false;
  const { pathname } = new URL(url);
  return /\.m?tsx?$/.test(pathname) && !pathname.includes("/node_modules/");
}
