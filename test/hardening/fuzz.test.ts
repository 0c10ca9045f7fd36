/**
 * Bounded, fixed-seed fuzzing in `npm test` (scripts/fuzz.ts runs the same for longer): random and
 * mutated SMTP sessions against live gateways never crash the process, every reply is well formed,
 * every session ends, and no session, per-IP slot or spool file is left behind. The policy loader
 * answers random YAML with a policy or a PolicyError, never anything else.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { fuzzGateways, fuzzPolicyLoader } from "./fuzzer.js";

const SEED = 20261128;

test(`fuzzed SMTP sessions (seed ${SEED}): well-formed replies, every session ends, nothing leaks`, async () => {
  const report = await fuzzGateways({ seed: SEED, sessions: 150, parallel: 8 });
  assert.deepEqual(report.malformed, []);
  assert.deepEqual(report.leakedSessions, []);
  assert.deepEqual(report.leakedSpoolFiles, []);
  assert.equal(report.stillServing, true);
  // The run really talked SMTP, rather than being refused at the door every time.
  assert.ok(report.replies > report.sessions * 2, `${report.replies} replies to ${report.sessions} sessions`);
});

test(`fuzzed policies (seed ${SEED}): a policy or a PolicyError, nothing else`, async () => {
  assert.deepEqual(await fuzzPolicyLoader(SEED, 300), []);
});
