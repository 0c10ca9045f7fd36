/**
 * Writes the generated findings table of every built-in plugin's README (see app/findings-docs.ts).
 * Run after changing a plugin's finding schema: `npx tsx scripts/findings-docs.ts`.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { findingsReadmes } from "../app/findings-docs.js";
import { builtinPlugins } from "../plugins/index.js";

const root = fileURLToPath(new URL("../plugins/", import.meta.url));
for (const readme of await findingsReadmes(builtinPlugins, (path) => readFile(join(root, path), "utf8"))) {
  if (readme.current === readme.expected) continue;
  await writeFile(join(root, readme.path), readme.expected);
  console.log(`plugins/${readme.path}: findings table written`);
}
