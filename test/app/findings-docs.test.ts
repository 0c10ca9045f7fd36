/**
 * The findings tables of the plugin READMEs are what the plugins' finding schemas say: a schema
 * changed without `npx tsx scripts/findings-docs.ts` fails here.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { findingsBlock, findingsReadmes, tablesUnpadded, withFindingsBlock } from "../../app/findings-docs.js";
import { builtinPlugins } from "../../plugins/index.js";

const root = fileURLToPath(new URL("../../plugins/", import.meta.url));

test("every built-in plugin's README has its current findings table", async () => {
  const readmes = await findingsReadmes(builtinPlugins, (path) => readFile(join(root, path), "utf8"));
  assert.equal(readmes.length, Object.keys(builtinPlugins).length);
  for (const readme of readmes) {
    assert.equal(
      tablesUnpadded(readme.current),
      tablesUnpadded(readme.expected),
      `plugins/${readme.path} is out of date: run \`npx tsx scripts/findings-docs.ts\``,
    );
  }
});

test("the table lists every path with its values and shorthand, and replaces only itself", async () => {
  const block = await findingsBlock(builtinPlugins.dmarc);
  assert.match(block, /\| `dmarc\.policy` \| none \\\| quarantine \\\| reject or null \| `dmarcPolicy` \| /);
  assert.match(block, /\| `dmarc\.alignment\.spf` \| string or null \| {2}\| /);
  const readme = withFindingsBlock("# dmarc\n\nprose\n", block);
  assert.equal(withFindingsBlock(readme.replace("dmarcPolicy", "stale"), block), readme);
  assert.ok(readme.startsWith("# dmarc\n\nprose\n\n## Findings\n\n"));
});
