/**
 * Acceptance, through the wire: a live policy with a shadow candidate and a transaction
 * log. Live answers follow the live policy only; the candidate's differences are logged and counted
 * exactly; an observe-mode rule acts nowhere and is counted. Then the recorded log is replayed
 * (asking the DNS server nothing): under the live policy every outcome is reproduced, under the candidate
 * exactly the transactions the shadow reported change — in-process and through `portcullis replay`.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { policyRuntime } from "../../app/testkit.js";
import { gatewayEndpoints, type OpsServer, startOpsServer } from "../../core/observability/http.js";
import {
  candidateOf,
  differences,
  type ReplayReport,
  replayLines,
  replayRecord,
} from "../../core/observability/replay.js";
import type { TransactionRecord } from "../../core/observability/transaction-log.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { scrape } from "../ops/scrape.js";
import { closedConnections } from "../plugins/connection-checks.js";
import { finalCode, readRecords, send } from "./helpers.js";

const CLEAN = "192.0.2.10";
const LISTED = "192.0.2.66";

const pipeline = `
pipeline:
  - plugin: dnsbl
    zones: [{ zone: bl.test, score: 5 }]
    on: { listed: ignore }
`;

const live = `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test] }
${pipeline}
rules:
  - { name: deny-spam, when: { sender.domain: spam.test, recipients: { exists: true } }, action: reject }
  - { name: watch-listed, when: { dnsbl.listed: true }, action: { reject: "554 5.7.1 listed" }, mode: observe }
routes: [{ to: discard }]
delivery: { mode: queue, spool: ./spool }
observability: { transactionLog: { path: ./log/transactions.jsonl } }
shadow: ./candidate.yaml
`;

// deny-spam is gone, listed clients are refused, and one recipient is deferred.
const candidate = `
version: 1
server: { hostname: mx.gateway.test }
relay: { domains: [example.test] }
${pipeline}
rules:
  - { name: block-listed, when: { dnsbl.listed: true }, action: { reject: "554 5.7.1 listed" } }
  - { name: vip-later, when: { recipient: vip@example.test }, action: defer }
routes: [{ to: discard }]
`;

describe("a shadow candidate beside the live policy", () => {
  let dns: TestDnsServer;
  let gw: TestGateway;
  let ops: OpsServer;
  let base: string;
  let records: TransactionRecord[];
  const codes: number[] = [];

  before(async () => {
    dns = await startDnsServer({ "66.2.0.192.bl.test": { A: ["127.0.0.2"], TXT: ["listed for the shadow test"] } });
    gw = await startGateway(live, { dnsServers: [dns.address], files: { "candidate.yaml": candidate } });
    ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
    base = `http://127.0.0.1:${ops.address.port}`;
    const mix: Array<[string, string, string[]]> = [
      [CLEAN, "a@sender.test", ["user@example.test"]],
      [CLEAN, "a@sender.test", ["user@example.test"]],
      [CLEAN, "a@sender.test", ["user@example.test"]],
      [CLEAN, "b@spam.test", ["user@example.test"]],
      [CLEAN, "b@spam.test", ["user@example.test"]],
      [LISTED, "c@sender.test", ["user@example.test"]],
      [LISTED, "c@sender.test", ["user@example.test"]],
      [CLEAN, "d@sender.test", ["user@example.test", "vip@example.test"]],
    ];
    for (const [ip, from, to] of mix) codes.push(finalCode(await send(gw.port, ip, { from, to })));
    await closedConnections(gw, mix.length);
    records = await readRecords(join(gw.dir, "log/transactions.jsonl"));
  });
  after(async () => {
    await ops.close();
    await gw.stop();
    await dns.close();
  });

  test("live answers follow the live policy only", () => {
    assert.deepEqual(codes, [250, 250, 250, 550, 550, 250, 250, 250]);
    const outcomes = gw.transactions().map((line) => [line.outcome, line.decidedBy]);
    assert.deepEqual(outcomes, [
      ["accepted", null],
      ["accepted", null],
      ["accepted", null],
      ["rejected", "rule:deny-spam"],
      ["rejected", "rule:deny-spam"],
      ["accepted", null],
      ["accepted", null],
      ["accepted", null],
    ]);
  });

  test("the differences are logged and counted exactly", async () => {
    const lines = gw.logs.filter((line) => line.event === "shadow");
    assert.equal(lines.length, 5);
    const found = lines.map((line) => line.differences);
    assert.deepEqual(found, [
      [{ live: "rejected", candidate: "accepted", rule: "deny-spam" }],
      [{ live: "rejected", candidate: "accepted", rule: "deny-spam" }],
      [{ live: "accepted", candidate: "refused", rule: "block-listed" }],
      [{ live: "accepted", candidate: "refused", rule: "block-listed" }],
      [
        {
          live: "recipient-accepted",
          candidate: "recipient-rejected",
          rule: "vip-later",
          recipient: "vip@example.test",
        },
      ],
    ]);
    const metrics = await scrape(base);
    const diff = (labels: Record<string, string>) => metrics.value("portcullis_shadow_differences_total", labels);
    assert.equal(diff({ live: "rejected", candidate: "accepted", rule: "deny-spam" }), 2);
    assert.equal(diff({ live: "accepted", candidate: "refused", rule: "block-listed" }), 2);
    assert.equal(diff({ live: "recipient-accepted", candidate: "recipient-rejected", rule: "vip-later" }), 1);
    assert.equal(
      metrics.text.split("\n").filter((line) => line.startsWith("portcullis_shadow_differences_total{")).length,
      3,
    );
    assert.equal(metrics.value("portcullis_shadow_transactions_total", { outcome: "accepted" }), 6);
    assert.equal(metrics.value("portcullis_shadow_transactions_total", { outcome: "refused" }), 2);
    assert.equal(metrics.value("portcullis_transactions_total", { outcome: "accepted" }), 6);
    assert.equal(metrics.value("portcullis_transactions_total", { outcome: "rejected" }), 2);
  });

  test("an observe-mode rule acts nowhere but is counted", async () => {
    // Both listed clients were accepted (above) although watch-listed matched each connection.
    const observed = gw.logs.filter((line) => line.mode === "observe" && line.rule === "watch-listed");
    assert.equal(observed.length, 2);
    assert.equal(gw.logs.filter((line) => line.msg === "rule matched").length, 2); // deny-spam only
    const metrics = await scrape(base);
    assert.equal(metrics.value("portcullis_rule_observed_total", { rule: "watch-listed", phase: "connect" }), 2);
    assert.equal(
      metrics.value("portcullis_decisions_total", { decided_by: "rule:watch-listed", kind: "reject", code: "554" }),
      0,
    );
  });

  test("the transaction log holds one record per transaction, with the DNS-derived findings", () => {
    assert.equal(records.length, 8);
    assert.deepEqual(
      records.map((r) => r.tx),
      gw.transactions().map((line) => line.tx),
    );
    const listed = records[5];
    assert.equal(listed.client.ip, LISTED);
    const connect = listed.steps.find((step) => step.phase === "connect");
    assert.ok(connect);
    assert.equal((connect.findings.dnsbl as { listed: boolean }).listed, true);
    assert.equal(connect.score, 5);
    assert.deepEqual(connect.rules, [
      { rule: "watch-listed", verdict: 'observe: reject "554 5.7.1 listed"', decision: "continue" },
    ]);
    assert.deepEqual(
      listed.steps.map((step) => step.phase),
      ["connect", "helo", "mail", "rcpt", "data", "queue"],
    );
  });

  test("replay under the live policy reproduces every recorded outcome, without DNS", async () => {
    dns.resetQueries();
    const runtime = await policyRuntime(join(gw.dir, "policy.yaml"));
    const report = await replayLines(
      records.map((r) => JSON.stringify(r)),
      candidateOf(runtime),
    );
    assert.equal(report.transactions, 8);
    assert.equal(report.changed, 0);
    assert.deepEqual(report.recorded, { accepted: 6, rejected: 2 });
    assert.deepEqual(report.candidate, report.recorded);
    assert.equal(dns.queries.length, 0); // findings were replayed, not looked up again
  });

  test("replay under the candidate reports exactly what the shadow reported", async () => {
    const runtime = await policyRuntime(join(gw.dir, "candidate.yaml"));
    const shadow = candidateOf(runtime);
    const report = await replayLines(
      records.map((r) => JSON.stringify(r)),
      shadow,
    );
    assert.equal(report.changed, 5);
    assert.deepEqual(report.candidate, { accepted: 6, refused: 2 });
    assert.deepEqual(
      report.byRule.map((group) => [group.rule, group.transactions, group.changes]),
      [
        ["block-listed", 2, { "accepted → refused": 2 }],
        ["deny-spam", 2, { "rejected → accepted": 2 }],
        ["vip-later", 1, { "recipient-accepted → recipient-rejected": 1 }],
      ],
    );
    const shadowed = gw.logs.filter((line) => line.event === "shadow").map((line) => line.tx);
    assert.deepEqual(
      report.changes.map((change) => change.tx),
      shadowed,
    );
    // The same pure evaluation the shadow ran live.
    for (const record of records) {
      const replayed = await replayRecord(record, shadow);
      assert.ok(replayed.outcome !== "unknown", `${record.tx}: ${replayed.unknown}`);
    }
    assert.equal(differences(report.changes[0].live, report.changes[0].candidate).length, 1);
  });

  test("portcullis replay --json and --show", async () => {
    const run = promisify(execFile);
    const bin = join(import.meta.dirname, "../../bin/portcullis.js");
    const args = [
      "replay",
      "--policy",
      join(gw.dir, "candidate.yaml"),
      "--log",
      join(gw.dir, "log/transactions.jsonl"),
    ];
    const json = JSON.parse((await run(process.execPath, [bin, ...args, "--json"])).stdout) as ReplayReport;
    assert.equal(json.transactions, 8);
    assert.equal(json.changed, 5);
    assert.deepEqual(json.changes, []);
    const text = (await run(process.execPath, [bin, ...args, "--show"])).stdout;
    assert.match(text, /^replayed 8 transactions from /);
    assert.match(text, /5 of 8 transactions change/);
    assert.match(text, /rule block-listed: 2 \(accepted → refused ×2\)/);
    assert.match(text, /vip@example\.test recipient-accepted → recipient-rejected \(rule vip-later\)/);
    assert.equal(text.split("\n").filter((line) => line.includes("<b@spam.test>: rejected → accepted")).length, 2);
  });
});
