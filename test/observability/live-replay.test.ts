/**
 * One engine: a transaction sent to a real gateway over a socket, with the transaction log on, and
 * the same transaction played back from its record under the same policy, end in the same trace —
 * the hooks that ran and their decisions, the rules that matched and what they did, and the outcome
 * of every recipient. The transaction gathers what rules depend on: points from a hook's finding, a
 * rule on those points, a tag, a per-recipient refusal and an observe-mode rule.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { policyRuntime } from "../../app/testkit.js";
import type { TraceEntry } from "../../core/contract/api.js";
import type { TransactionSummary } from "../../core/observability/observe.js";
import { candidateOf, playRecord } from "../../core/observability/replay.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { closedConnections } from "../plugins/connection-checks.js";
import { readRecords, send } from "./helpers.js";

const LISTED = "192.0.2.66";

const policy = `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test] }
pipeline:
  - plugin: dnsbl
    zones: [{ zone: bl.test, score: 5 }]
    on: { listed: ignore }
rules:
  - { name: listed-points, when: { dnsbl.listed: true }, action: { score: 3 } }
  - { name: odd-helo, when: { helo: odd.test }, action: reject, mode: observe }
  - { name: no-such-user, when: { recipient.local: nobody }, action: { reject: "550 5.1.1 No such user" } }
  - { name: high-score-tag, when: { score: { gte: 8 } }, action: { tag: suspicious } }
  - { name: suspicious-header, when: { tags: suspicious, recipients: { exists: true } }, action: { addHeader: "X-Suspicious: yes" } }
routes: [{ to: discard }]
delivery: { mode: queue, spool: ./spool }
observability: { transactionLog: { path: ./log/tx.jsonl } }
`;

/** A trace as compared: hook entries by name, phase and decision; rule entries also with what they did. */
function compared(trace: readonly TraceEntry[]) {
  return trace.map((entry) =>
    entry.source === "rule"
      ? { rule: entry.plugin, phase: entry.phase, verdict: entry.verdict, decision: entry.decision }
      : // A hook's verdict name is not in the record: the record keeps its entry's decision.
        { hook: entry.plugin, phase: entry.phase, decision: entry.decision },
  );
}

let dns: TestDnsServer;
let gw: TestGateway;

before(async () => {
  dns = await startDnsServer({ "66.2.0.192.bl.test": { A: ["127.0.0.2"] } });
  gw = await startGateway(policy, { dnsServers: [dns.address] });
});
after(async () => {
  await gw.stop();
  await dns.close();
});

test("a transaction through the gateway and its replay under the same policy have the same trace", async () => {
  const replies = await send(gw.port, LISTED, {
    helo: "odd.test",
    from: "a@sender.test",
    to: ["user@example.test", "nobody@example.test", "other@example.test"],
  });
  assert.deepEqual(
    replies.rcpts.map((r) => r.code),
    [250, 550, 250],
  );
  await closedConnections(gw, 1);
  const [record] = await readRecords(join(gw.dir, "log/tx.jsonl"));
  const [live] = gw.transactions() as unknown as TransactionSummary[];

  const asked = dns.queries.length;
  const { result, summary } = await playRecord(record, candidateOf(await policyRuntime(join(gw.dir, "policy.yaml"))));
  assert.ok(summary, `replay wrote no summary: ${JSON.stringify(result)}`);

  // What the live transaction must have exercised, for the comparison to mean something.
  assert.equal(live.score, 8);
  assert.ok(live.trace.some((entry) => entry.plugin === "dnsbl" && entry.source === undefined));
  assert.ok(live.trace.some((entry) => entry.plugin === "suspicious-header"));

  assert.deepEqual(compared(summary.trace), compared(live.trace));
  assert.equal(summary.decidedBy, live.decidedBy);
  assert.deepEqual(summary.to, live.to);
  assert.deepEqual(summary.rejectedRecipients, live.rejectedRecipients);
  assert.equal(summary.score, live.score);
  assert.equal(summary.outcome, live.outcome);
  assert.equal(summary.helo, live.helo);
  assert.deepEqual(result.rejected, { "nobody@example.test": "rule:no-such-user" });
  assert.equal(result.outcome, "accepted");
  assert.equal(dns.queries.length, asked); // findings were replayed, not looked up again
});
