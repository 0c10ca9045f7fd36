/**
 * Writes the generated findings table of every built-in plugin's README (see app/findings-docs.ts).
 * Run after changing a plugin's finding schema: `npx tsx scripts/findings-docs.ts`.
 */
import { execFileSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { findingsReadmes, tablesUnpadded } from "../app/findings-docs.js";
import { builtinPlugins } from "../plugins/index.js";

const root = fileURLToPath(new URL("../plugins/", import.meta.url));
const written: string[] = [];
for (const readme of await findingsReadmes(builtinPlugins, (path) => readFile(join(root, path), "utf8"))) {
  if (tablesUnpadded(readme.current) === tablesUnpadded(readme.expected)) continue;
  await writeFile(join(root, readme.path), readme.expected);
  written.push(join(root, readme.path));
  console.log(`plugins/${readme.path}: findings table written`);
}
// The project's formatter pads the tables, as `npm test` (biome check) expects them.
if (written.length > 0) execFileSync("npx", ["biome", "format", "--write", ...written], { stdio: "inherit" });
