// Runs every *.test.ts under test/ through node:test with tsx. Node 20 neither expands globs in
// --test arguments nor discovers .ts files, so the list is built here; an empty list is an error
// (node would run nothing and still exit 0). The portcullis-source condition makes "portcullis" mean
// the sources here, not a build in dist/ that may be stale.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const filter = process.argv.slice(2);
const files = readdirSync(join(root, "test"), { recursive: true, withFileTypes: true })
  .filter((entry) => entry.isFile() && entry.name.endsWith(".test.ts"))
  .map((entry) => relative(root, join(entry.parentPath, entry.name)))
  .filter((file) => filter.length === 0 || filter.some((f) => file.includes(f)))
  .sort();
if (files.length === 0) {
  console.error("test/run.mjs: no test files found");
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  [
    "--conditions=portcullis-source",
    "--import",
    "tsx",
    "--test",
    "--test-concurrency=2",
    "--test-timeout=300000",
    `--test-reporter=${join(root, "test/reporter.mjs")}`,
    "--test-reporter-destination=stdout",
    ...files,
  ],
  { cwd: root, stdio: "inherit" },
);
process.exit(result.status ?? 1);
