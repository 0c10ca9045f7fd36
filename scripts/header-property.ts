/**
 * The long run of the header-injection property test:
 * `npx tsx scripts/header-property.ts [--transactions 5000] [--seed N]`.
 * The same test as test/hardening/utf8-header-injection.test.ts (every client field filled with
 * seeded hostile text, through queue, proxy and maildir delivery), only more of it; the seed is
 * printed, and the same seed replays the same transactions. Exits with the test run's status.
 */
import { spawnSync } from "node:child_process";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    transactions: { type: "string", default: "5000" },
    seed: { type: "string", default: String(Date.now() % 2 ** 31) },
  },
});
process.stdout.write(`seed ${values.seed}, ${values.transactions} transactions per delivery mode\n`);
const test = new URL("../test/hardening/utf8-header-injection.test.ts", import.meta.url).pathname;
const run = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-timeout=0", test], {
  stdio: "inherit",
  env: { ...process.env, PORTCULLIS_SEED: values.seed, PORTCULLIS_PROPERTY_TRANSACTIONS: values.transactions },
});
process.exit(run.status ?? 1);
