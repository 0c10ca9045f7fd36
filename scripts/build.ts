/**
 * `npm run build`: the published package's dist/. tsc writes the declarations (for plugin authors'
 * type checks); esbuild writes the JavaScript, one file per entry point and shared chunks for the rest.
 *
 * Why a bundle and not tsc's file-per-module output: on Node 20, whose ES module loader has no
 * compile cache, `portcullis check` spent most of its time finding, reading and compiling modules —
 * ~80 of ours, 99 of zod's, 73 of yaml's. Chunks cut that to about forty.
 *
 * The entry points are the files something outside the bundle names by path: the CLI (`bin`), the
 * library and the test kit (package.json `exports`, and what a plugin's `import "portcullis"` is
 * resolved to), and the module hooks that resolve it (registered by URL). Everything they share
 * is in shared chunks, so the gateway and the plugins it loads see one instance of every module.
 * Dynamic imports stay chunks of their own and load when first used, as before.
 *
 * zod and yaml are bundled: every `check` and `start` loads both. The other dependencies stay
 * packages of their own: they load on first use, or find files of their own at run time (mailauth's
 * internals, pino's transports).
 */
import { execFileSync } from "node:child_process";
import { readdir, readFile, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const BUNDLED = new Set(["zod", "yaml"]);

const manifest = JSON.parse(await readFile(`${root}package.json`, "utf8")) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const external = Object.keys({ ...manifest.dependencies, ...manifest.devDependencies })
  .filter((name) => !BUNDLED.has(name))
  .flatMap((name) => [name, `${name}/*`]);

// The JavaScript of an earlier build goes (a module since removed must not ship); tsc's declarations
// stay, for its incremental rebuild.
const earlier = await readdir(`${root}dist`, { recursive: true }).catch(() => []);
await Promise.all(earlier.filter((file) => /\.js(\.map)?$/.test(file)).map((file) => rm(`${root}dist/${file}`)));
await rm(`${root}dist/chunks`, { recursive: true, force: true });
execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, "-p", `${root}tsconfig.build.json`], {
  stdio: "inherit",
});
await build({
  absWorkingDir: root,
  entryPoints: ["app/cli.ts", "core/index.ts", "app/testkit.ts", "core/policy/plugin-resolve.ts"],
  outdir: "dist",
  outbase: ".",
  chunkNames: "chunks/[name]-[hash]",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  external,
  // Not keepNames: it names every function where it is made, closures made per message included,
  // which cost (c) 14–27 % more CPU per message in the benchmark. Our error classes set their
  // `name` themselves; a function renamed for a clash between modules keeps its source name in
  // source-mapped stack traces.
  sourcemap: true,
  sourcesContent: false,
  // yaml is CommonJS: its require() of Node's built-ins needs a require in an ES module's scope.
  banner: {
    js: 'import { createRequire as createRequireForCommonJs } from "node:module";\nconst require = createRequireForCommonJs(import.meta.url);',
  },
  logLevel: "warning",
});
