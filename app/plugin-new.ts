/**
 * `portcullis plugin new NAME`: scaffolds a plugin package in `./NAME/` that type-checks, tests
 * with `portcullis/testkit`, builds to `dist/` and loads from a policy by path or by package name,
 * so an outside author starts from something that runs and changes it step by step.
 */
import { existsSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const PLUGIN_NEW_USAGE = "portcullis plugin new NAME";

/** A mistake in the command line; the CLI shows it with the usage and exits 2. */
export class PluginUsageError extends Error {}

/** What a scaffold depends on: the running Portcullis and the tools this repository pins. */
export interface ScaffoldVersions {
  readonly portcullis: string;
  readonly typescript: string;
  readonly tsx: string;
  readonly nodeTypes: string;
}

/**
 * npm's rules for a new package name (lower case, URL-safe, at most 214 characters, optional
 * @scope/), narrowed after the scope to letters, digits and '-': that part names the plugin and its
 * findings, and reply templates read findings by dotted path (`{my-check.domain}`).
 */
const PACKAGE_NAME = /^(?:@[a-z0-9][a-z0-9._~-]*\/)?[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;

/** Why `name` cannot be a new npm package name, or undefined when it can. */
export function packageNameProblem(name: string): string | undefined {
  if (name.length > 214) return "is longer than 214 characters";
  if (!PACKAGE_NAME.test(name)) {
    return "is not a plugin package name: lower-case words of letters and digits joined by '-', optionally after @scope/";
  }
  return undefined;
}

/** The plugin's name (and its findings' key): the package name without its scope. */
export function pluginNameOf(packageName: string): string {
  return packageName.slice(packageName.indexOf("/") + 1);
}

/**
 * The versions a scaffold pins, read from the package.json of the Portcullis that runs this command
 * (found by walking up from this module, so it works from the sources and from a compiled build).
 */
export function scaffoldVersions(): ScaffoldVersions {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const file = join(dir, "package.json");
    if (existsSync(file)) {
      const manifest = JSON.parse(readFileSync(file, "utf8"));
      if (manifest.name === "portcullis") {
        const pinned = { ...manifest.dependencies, ...manifest.devDependencies };
        return {
          portcullis: manifest.version,
          typescript: pinned.typescript,
          tsx: pinned.tsx,
          nodeTypes: pinned["@types/node"],
        };
      }
    }
    if (dirname(dir) === dir) throw new Error("cannot find the package.json of portcullis");
  }
}

/** The files of a new plugin package, path → text. */
export function pluginFiles(packageName: string, versions: ScaffoldVersions): Record<string, string> {
  const name = pluginNameOf(packageName);
  const facts = `${name.replace(/(?:^|-)([a-z0-9])/g, (_, letter: string) => letter.toUpperCase())}Facts`;
  const manifest = {
    name: packageName,
    version: "0.1.0",
    description: `A Portcullis plugin: ${name}`,
    type: "module",
    keywords: ["portcullis", "portcullis-plugin", "smtp"],
    exports: { ".": { types: "./dist/index.d.ts", import: "./dist/index.js" } },
    files: ["dist"],
    scripts: {
      build: "tsc -p tsconfig.build.json",
      test: "tsc --noEmit && node --import tsx --test test/*.test.ts",
      prepublishOnly: "npm test && npm run build",
    },
    peerDependencies: { portcullis: `^${versions.portcullis}` },
    devDependencies: {
      "@types/node": versions.nodeTypes,
      tsx: versions.tsx,
      typescript: versions.typescript,
    },
  };
  return {
    "package.json": `${JSON.stringify(manifest, null, 2)}\n`,
    "tsconfig.json": `${JSON.stringify(
      {
        compilerOptions: {
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          verbatimModuleSyntax: true,
          types: ["node"],
          lib: ["ES2023"],
        },
        include: ["src", "test"],
      },
      null,
      2,
    )}\n`,
    "tsconfig.build.json": `${JSON.stringify(
      {
        extends: "./tsconfig.json",
        compilerOptions: { noEmit: false, declaration: true, outDir: "dist", rootDir: "src" },
        include: ["src"],
      },
      null,
      2,
    )}\n`,
    ".gitignore": "node_modules/\ndist/\n",
    "src/index.ts": `/**
 * ${name}: refuses mail from the sender domains in \`block\`, and adds points for those in \`watch\`
 * so the policy's score rules can weigh them with everything else. Replace it with your own check.
 */
import { definePlugin, verdict, z } from "portcullis";

/**
 * What this plugin finds, under ctx.facts["${name}"]: rules, reply templates and logs read it, and
 * \`portcullis check\` holds a policy's rules to this schema (a misspelt path or value is an error).
 */
const Findings = z.object({
  domain: z.string().describe("the sender domain looked at"),
  listed: z.enum(["block", "watch"]).nullable().describe("the list that names the domain, or null"),
});
export type ${facts} = z.output<typeof Findings>;

declare module "portcullis" {
  interface Facts {
    "${name}": ${facts};
  }
}

export default definePlugin({
  name: "${name}",
  // z.strictObject: a misspelt key in a policy is an error, reported at its line.
  options: z.strictObject({
    block: z.array(z.string().toLowerCase()).min(1).describe("sender domains to refuse"),
    watch: z.array(z.string().toLowerCase()).default([]).describe("sender domains that add points"),
    points: z.number().default(5).describe("points a watched domain adds to the score"),
  }),
  // Declared so that \`portcullis check\` knows the rule paths and values this plugin answers.
  findings: { "${name}": Findings },
  // The names a hook may return, each with the action and reply it leads to unless the policy's
  // \`on:\` says otherwise.
  verdicts: {
    blocked: { action: "reject", reply: "550 5.7.1 Mail from {${name}.domain} is not accepted here" },
    watched: { action: "ignore" }, // logged and scored; the policy may make it "reject" with a reply
  },
  // Runs once per policy load: compile the options here, not per message.
  setup(options) {
    const block = new Set(options.block);
    const watch = new Set(options.watch);
    return {
      async mail(ctx) {
        const domain = ctx.transaction.sender.domain;
        const listed = block.has(domain) ? "block" : watch.has(domain) ? "watch" : null;
        ctx.facts["${name}"] = { domain, listed };
        if (listed === "block") return verdict("blocked");
        if (listed === "watch") {
          ctx.addScore(options.points, \`\${domain} is watched\`);
          return verdict("watched");
        }
        return undefined; // continue with the next check
      },
    };
  },
});
`,
    "test/index.test.ts": `/** ${name} run through the Portcullis test kit: the same engine as the SMTP listener, no sockets. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { runPlugin } from "portcullis/testkit";
import plugin from "../src/index.js";

const options = { block: ["spam.example"], watch: ["odd.example"] };

test("refuses a blocked sender domain at MAIL FROM and records the finding", async () => {
  const result = await runPlugin(plugin, options, {
    ip: "192.0.2.1",
    from: "someone@SPAM.example",
    to: ["user@example.test"],
  });
  assert.equal(result.outcome, "rejected");
  assert.equal(result.phase, "mail");
  assert.equal(result.reply?.code, 550);
  assert.equal(result.reply?.text, "Mail from spam.example is not accepted here");
  assert.deepEqual(result.facts["${name}"], { domain: "spam.example", listed: "block" });
});

test("a watched sender domain only adds points", async () => {
  const result = await runPlugin(plugin, options, { ip: "192.0.2.1", from: "a@odd.example", to: ["u@example.test"] });
  assert.equal(result.outcome, "accepted");
  assert.equal(result.score, 5);
  assert.deepEqual(result.facts["${name}"], { domain: "odd.example", listed: "watch" });
});

test("the policy's on: map can soften a verdict", async () => {
  const result = await runPlugin(
    plugin,
    options,
    { ip: "192.0.2.1", from: "a@spam.example", to: ["u@example.test"] },
    { on: { blocked: "defer" } },
  );
  assert.equal(result.outcome, "deferred");
  assert.equal(result.reply?.code, 450);
});
`,
    "README.md": `# ${packageName}

A [Portcullis](https://www.npmjs.com/package/portcullis) plugin. It refuses mail from the sender
domains in \`block\` and adds points for those in \`watch\`; its finding is \`{${name}.domain}\` and
\`{${name}.listed}\`.

## Test

\`\`\`sh
npm install
npm test        # tsc --noEmit, then test/*.test.ts through portcullis/testkit (no sockets, no network)
\`\`\`

## Build

\`\`\`sh
npm run build   # src/ → dist/index.js and dist/index.d.ts
\`\`\`

## Load it in a policy

By path, from the policy file's folder — the TypeScript source (Portcullis runs it through tsx) or
the build:

\`\`\`yaml
pipeline:
  - plugin: ./${name}/src/index.ts # or ./${name}/dist/index.js
    block: [spam.example]
    watch: [odd.example]
    on:
      blocked: defer # optional: override a verdict's default action
\`\`\`

By package name, once it is installed beside Portcullis (\`npm install ${packageName}\`):

\`\`\`yaml
pipeline:
  - plugin: "${packageName}"
    block: [spam.example]
\`\`\`

\`portcullis check --strict policy.yaml\` validates the options; \`portcullis try --policy policy.yaml
--ip 192.0.2.1 --from a@spam.example --to u@example.test\` shows the reply. A running gateway
re-imports changed plugin code on SIGHUP.

## Publish

\`\`\`sh
npm publish     # prepublishOnly tests and builds; portcullis stays a peer dependency
\`\`\`
`,
  };
}

/** `portcullis plugin new NAME`: writes the scaffold into `./NAME/`, which must not exist yet. */
export async function pluginCommand(args: string[], stdout: NodeJS.WritableStream): Promise<number> {
  const [sub, packageName, ...rest] = args;
  if (sub !== "new") throw new PluginUsageError(sub ? `unknown plugin command "${sub}"` : "plugin needs new NAME");
  if (packageName === undefined || rest.length > 0) throw new PluginUsageError("plugin new needs exactly one NAME");
  const problem = packageNameProblem(packageName);
  if (problem) throw new PluginUsageError(`plugin new: "${packageName}" ${problem}`);
  const dir = resolve(packageName);
  // mkdir without `recursive` fails on an existing folder, so nothing of someone's is overwritten.
  await mkdir(dirname(dir), { recursive: true });
  await mkdir(dir).catch((error: NodeJS.ErrnoException) => {
    throw error.code === "EEXIST" ? new Error(`plugin new: ${packageName} already exists; choose another NAME`) : error;
  });
  for (const [file, text] of Object.entries(pluginFiles(packageName, scaffoldVersions()))) {
    await mkdir(dirname(join(dir, file)), { recursive: true });
    await writeFile(join(dir, file), text);
  }
  stdout.write(`wrote ${packageName}/; next: cd ${packageName} && npm install && npm test\n`);
  return 0;
}
