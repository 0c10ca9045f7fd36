/**
 * Replay fidelity: traffic through a policy that uses every kind of thing rules depend on
 * — a connect-phase accept, points from a finding and from rules, an observe-mode rule, a
 * per-recipient refusal, tags set by one rule and tested by another, a quarantine, a score threshold
 * at DATA — is recorded, and replayed. Under the same policy every outcome comes back; under a
 * changed policy exactly the three transactions the change touches are reported, each under the rule
 * responsible, including one whose outcome replay cannot know (a `skip` of a hook that ran).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { policyRuntime } from "../../app/testkit.js";
import { candidateOf, type ReplayReport, replayLines } from "../../core/observability/replay.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { closedConnections } from "../plugins/connection-checks.js";
import { finalCode, readRecords, send } from "./helpers.js";

const CLEAN = "192.0.2.10";
const LISTED = "192.0.2.66";
const PARTNER = "192.0.2.50";

const policy = (changes: { extraFirst?: string; threshold?: number; noSuchUser?: boolean } = {}) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test] }
pipeline:
  - plugin: dnsbl
    zones: [{ zone: bl.test, score: 5 }]
    on: { listed: ignore }
rules:${changes.extraFirst ?? ""}
  - { name: partner, when: { client.ip: { network: [${PARTNER}/32] } }, action: accept }
  - { name: listed-points, when: { dnsbl.listed: true }, action: { score: 3 } }
  - { name: odd-helo, when: { helo: odd.test }, action: reject, mode: observe }${
    changes.noSuchUser === false
      ? ""
      : `
  - { name: no-such-user, when: { recipient.local: nobody }, action: { reject: "550 5.1.1 No such user" } }`
  }
  - { name: bulk-tag, when: { sender.local: bulk }, action: { tag: bulk } }
  - { name: bulk-later, when: { tags: bulk, recipients: { exists: true } }, action: defer }
  - { name: suspicious, when: { sender.domain: q.test }, action: { quarantine: "maildir:./quarantine" } }
  - { name: high-score, when: { score: { gte: ${changes.threshold ?? 8} }, recipients: { exists: true } }, action: reject }
routes: [{ to: discard }]
delivery: { mode: queue, spool: ./spool }
observability: { transactionLog: { path: ./log/tx.jsonl } }
`;

const candidate = policy({
  extraFirst: `
  - { name: no-dnsbl-for-partner, when: { client.ip: { network: [${PARTNER}/32] } }, action: { 'skip': dnsbl } }`,
  threshold: 9,
  noSuchUser: false,
});

describe("replay of a recorded log", () => {
  let dns: TestDnsServer;
  let gw: TestGateway;
  let lines: string[];
  const codes: number[] = [];

  before(async () => {
    dns = await startDnsServer({ "66.2.0.192.bl.test": { A: ["127.0.0.2"] } });
    gw = await startGateway(policy(), {
      dnsServers: [dns.address],
      files: { "candidate.yaml": candidate },
    });
    const mix: Array<[string, string, string[], string?]> = [
      [CLEAN, "a@sender.test", ["user@example.test"]],
      [CLEAN, "a@sender.test", ["user@example.test", "nobody@example.test"]],
      [CLEAN, "bulk@sender.test", ["user@example.test"]],
      [CLEAN, "x@q.test", ["user@example.test"]],
      [LISTED, "a@sender.test", ["user@example.test"]],
      [PARTNER, "bulk@sender.test", ["user@example.test"]],
      [CLEAN, "a@sender.test", ["user@example.test"], "odd.test"],
      [LISTED, "x@q.test", ["user@example.test"]],
    ];
    for (const [ip, from, to, helo] of mix) codes.push(finalCode(await send(gw.port, ip, { from, to, helo })));
    await closedConnections(gw, mix.length);
    lines = (await readRecords(join(gw.dir, "log/tx.jsonl"))).map((record) => JSON.stringify(record));
  });
  after(async () => {
    await gw.stop();
    await dns.close();
  });

  const replay = async (file: string): Promise<Omit<ReplayReport, "policy" | "logs">> =>
    replayLines(lines, candidateOf(await policyRuntime(join(gw.dir, file))));

  test("the live answers", () => {
    assert.deepEqual(codes, [250, 250, 451, 250, 550, 250, 250, 250]);
    assert.deepEqual(
      gw.transactions().map((line) => [line.outcome, line.decidedBy]),
      [
        ["accepted", null],
        ["accepted", null],
        ["deferred", "rule:bulk-later"],
        ["accepted", null],
        ["rejected", "rule:high-score"],
        ["accepted", null],
        ["accepted", null],
        ["accepted", null],
      ],
    );
  });

  test("under the same policy, 100% of the recorded outcomes", async () => {
    dns.resetQueries();
    const report = await replay("policy.yaml");
    assert.equal(report.transactions, 8);
    assert.equal(report.skipped, 0);
    assert.equal(report.changed, 0, JSON.stringify(report.changes, null, 2));
    assert.deepEqual(report.recorded, { accepted: 4, deferred: 1, quarantined: 2, rejected: 1 });
    assert.deepEqual(report.candidate, report.recorded);
    assert.equal(dns.queries.length, 0);
  });

  test("under a changed policy, exactly the transactions the change affects", async () => {
    const report = await replay("candidate.yaml");
    const txs = gw.transactions().map((line) => line.tx);
    assert.deepEqual(
      report.changes.map((change) => [change.tx, change.differences]),
      [
        [
          txs[1],
          [
            {
              live: "recipient-rejected",
              candidate: "recipient-accepted",
              rule: "no-such-user",
              recipient: "nobody@example.test",
            },
          ],
        ],
        [txs[4], [{ live: "rejected", candidate: "accepted", rule: "high-score" }]],
        [txs[5], [{ live: "accepted", candidate: "unknown", rule: "no-dnsbl-for-partner" }]],
      ],
    );
    assert.equal(report.changes[2].candidate.unknown, "the candidate skips dnsbl, whose helo hook ran");
    assert.deepEqual(report.candidate, { accepted: 4, deferred: 1, quarantined: 2, unknown: 1 });
  });
});
