/**
 * The long fuzz run: `npx tsx scripts/fuzz.ts [--sessions 5000] [--seed N] [--parallel 16] [--policies 5000]`.
 * The same generator as test/hardening/fuzz.test.ts, only more of it; a failing seed printed here
 * replays exactly. Exits 1 when anything leaked, crashed or answered out of shape.
 */
import { parseArgs } from "node:util";
import { fuzzGateways, fuzzPolicyLoader } from "../test/hardening/fuzzer.js";

const { values } = parseArgs({
  options: {
    sessions: { type: "string", default: "5000" },
    seed: { type: "string", default: String(Date.now() % 2 ** 31) },
    parallel: { type: "string", default: "16" },
    policies: { type: "string", default: "5000" },
  },
});
const seed = Number(values.seed);
const started = Date.now();
const report = await fuzzGateways({ seed, sessions: Number(values.sessions), parallel: Number(values.parallel) });
const faults = await fuzzPolicyLoader(seed, Number(values.policies));
const problems = [
  ...report.malformed.map((line) => `malformed reply: ${JSON.stringify(line)}`),
  ...report.leakedSessions.map((leak) => `leaked sessions: ${leak}`),
  ...report.leakedSpoolFiles.map((file) => `leaked spool file: ${file}`),
  ...(report.stillServing ? [] : ["the gateway no longer serves a well-behaved client"]),
  ...faults.map((fault) => `policy loader: ${fault}`),
];
process.stdout.write(
  `seed ${seed}: ${report.sessions} sessions, ${report.replies} replies, ${values.policies} policies ` +
    `in ${((Date.now() - started) / 1000).toFixed(1)} s; ${problems.length} problems\n`,
);
for (const problem of problems) process.stdout.write(`  ${problem}\n`);
process.exit(problems.length === 0 ? 0 : 1);
