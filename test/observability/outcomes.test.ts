/**
 * Acceptance, over real sockets: every decision leaves a summary line, a transaction-log record and
 * a count. A client refused for what it is (a DNSBL listing at MAIL, no reverse DNS at MAIL, a rule
 * that disconnects at connect) starts no transaction and gets a connection line; a transaction whose
 * every recipient was refused is `rejected` by the last refusal, not `aborted`. Replay under a
 * policy without the DNSBL (or without FCrDNS) reports the connections that check refused as changed.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { policyRuntime } from "../../app/testkit.js";
import { gatewayEndpoints, type OpsServer, startOpsServer } from "../../core/observability/http.js";
import { candidateOf, replayLines } from "../../core/observability/replay.js";
import type { TransactionRecord } from "../../core/observability/transaction-log.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { connectAs } from "../fixtures/smtp-client.js";
import { scrape } from "../ops/scrape.js";
import { closedConnections, tryMail } from "../plugins/connection-checks.js";
import { readRecords, send } from "./helpers.js";

/** Named (PTR and A agree), not listed. */
const CLEAN = "192.0.2.10";
/** Named, but listed in bl.test. */
const LISTED = "192.0.2.66";
/** No PTR at all: fcrdns finds `none`, which its default action defers (450 4.7.25). */
const NAMELESS = "192.0.2.77";
/** Named, and cut off by a connect-phase rule before the greeting (the rules run once no hook decided). */
const CUT = "192.0.2.99";

/** Every key of a connection line, logger fields included; `reason` is there because a decision refused. */
const CONNECTION_FIELDS = [
  "level",
  "time",
  "service",
  "msg",
  "cid",
  "event",
  "client",
  "helo",
  "tls",
  "outcome",
  "phase",
  "reply",
  "decidedBy",
  "reason",
  "from",
  "refusedMails",
  "findings",
  "score",
  "trace",
  "ms",
];

const pipeline = {
  fcrdns: "  - plugin: fcrdns\n",
  dnsbl: "  - plugin: dnsbl\n    zones: [{ zone: bl.test }]\n",
};

const CUT_OFF = `  - { name: cut-off, when: { client.ip: ${CUT} }, action: { disconnect: "421 4.7.0 Go away" } }\n`;

const policy = (entries: string, rules = CUT_OFF) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test] }
pipeline:
${entries}rules:
${rules}routes: [{ to: discard }]
delivery: { mode: queue, spool: ./spool }
observability: { transactionLog: { path: ./log/tx.jsonl } }
`;

describe("every decision visible", () => {
  let dns: TestDnsServer;
  let gw: TestGateway;
  let ops: OpsServer;
  let base: string;

  before(async () => {
    dns = await startDnsServer({
      "10.2.0.192.in-addr.arpa": { PTR: ["clean.sender.test"] },
      "clean.sender.test": { A: [CLEAN] },
      "66.2.0.192.in-addr.arpa": { PTR: ["listed.sender.test"] },
      "listed.sender.test": { A: [LISTED] },
      "66.2.0.192.bl.test": { A: ["127.0.0.2"] },
      "99.2.0.192.in-addr.arpa": { PTR: ["cut.sender.test"] },
      "cut.sender.test": { A: [CUT] },
    });
    gw = await startGateway(policy(pipeline.fcrdns + pipeline.dnsbl), { dnsServers: [dns.address] });
    ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
    base = `http://127.0.0.1:${ops.address.port}`;
  });
  after(async () => {
    await ops.close();
    await gw.stop();
    await dns.close();
  });

  const connectionLines = () => gw.logs.filter((line) => line.event === "connection");

  test("three accepted and two relay-denied transactions count as 3 accepted and 2 rejected", async () => {
    const codes: number[] = [];
    for (let i = 0; i < 3; i++) {
      const replies = await send(gw.port, CLEAN, { from: "a@sender.test", to: ["user@example.test"] });
      codes.push(replies.data?.code ?? 0);
    }
    for (let i = 0; i < 2; i++) {
      const replies = await send(gw.port, CLEAN, {
        from: "b@sender.test",
        to: ["x@elsewhere.test", "y@elsewhere.test"],
      });
      codes.push(...replies.rcpts.map((r) => r.code));
    }
    assert.deepEqual(codes, [250, 250, 250, 550, 550, 550, 550]);
    await closedConnections(gw, 5);

    const denied = gw.transactions().filter((line) => line.from === "b@sender.test");
    assert.equal(denied.length, 2);
    for (const line of denied) {
      assert.equal(line.outcome, "rejected");
      assert.match(String(line.reply), /^550 5\.7\.1 .*Relay/i);
      assert.equal(line.decidedBy, "core:relay-access");
      assert.deepEqual(
        (line.rejectedRecipients as Array<{ to: string }>).map((r) => r.to),
        ["x@elsewhere.test", "y@elsewhere.test"],
      );
    }
    // Connections with a transaction line write no connection line.
    assert.equal(connectionLines().length, 0);

    const m = await scrape(base);
    assert.equal(m.value("portcullis_transactions_total", { outcome: "accepted" }), 3);
    assert.equal(m.value("portcullis_transactions_total", { outcome: "rejected" }), 2);
    assert.equal(m.value("portcullis_transactions_total", { outcome: "aborted" }), 0);
  });

  test("clients refused for a DNSBL listing, for no reverse DNS, and cut at connect each leave a line, a record and a count", async () => {
    const listed = await tryMail(gw.port, LISTED, { helo: "listed.sender.test", from: "l@sender.test" });
    assert.equal(listed.mail.code, 554);
    const nameless = await tryMail(gw.port, NAMELESS, { helo: "nameless.sender.test", from: "n@sender.test" });
    assert.equal(nameless.mail.code, 450);
    const cut = await connectAs(gw.port, CUT);
    assert.equal(cut.greeting?.code, 421);
    await cut.waitClosed();
    await closedConnections(gw, 8);

    const lines = connectionLines();
    const line = (ip: string) => {
      const found = lines.filter((l) => (l.client as { ip: string }).ip === ip);
      assert.equal(found.length, 1, `one connection line for ${ip}`);
      return found[0];
    };
    assert.deepEqual(pick(line(LISTED), ["outcome", "phase", "decidedBy", "helo", "from", "refusedMails"]), {
      outcome: "refused",
      phase: "connect",
      decidedBy: "plugin:dnsbl",
      helo: "listed.sender.test",
      from: "l@sender.test",
      refusedMails: 1,
    });
    // The field set is a contract with log pipelines (docs/operations.md): add fields, never rename or drop.
    assert.deepEqual(Object.keys(line(LISTED)).sort(), [...CONNECTION_FIELDS].sort());
    assert.match(String(line(LISTED).reply), /^554 /);
    assert.deepEqual(line(LISTED).client, { ip: LISTED, name: "listed.sender.test" });
    assert.equal((line(LISTED).findings as { dnsbl: { listed: boolean } }).dnsbl.listed, true);
    assert.equal(typeof line(LISTED).ms, "number");

    assert.deepEqual(pick(line(NAMELESS), ["outcome", "phase", "decidedBy"]), {
      outcome: "refused",
      phase: "connect",
      decidedBy: "plugin:fcrdns",
    });
    assert.match(String(line(NAMELESS).reply), /^450 4\.7\.25 /);
    assert.deepEqual(line(NAMELESS).client, { ip: NAMELESS, name: null });
    assert.equal((line(NAMELESS).findings as { fcrdns: { result: string } }).fcrdns.result, "none");

    assert.deepEqual(pick(line(CUT), ["outcome", "phase", "decidedBy", "reply", "from", "refusedMails"]), {
      outcome: "refused",
      phase: "connect",
      decidedBy: "rule:cut-off",
      reply: "421 4.7.0 Go away",
      from: null,
      refusedMails: 0,
    });

    const records = await connectionRecords();
    assert.deepEqual(
      records.map((r) => [r.client.ip, r.outcome, r.decidedBy, r.steps.map((s) => s.phase)]),
      [
        [LISTED, "refused", "plugin:dnsbl", ["connect"]],
        [NAMELESS, "refused", "plugin:fcrdns", ["connect"]],
        [CUT, "refused", "rule:cut-off", ["connect"]],
      ],
    );
    assert.equal((records[0].steps[0].findings.dnsbl as { listed: boolean }).listed, true);

    const m = await scrape(base);
    const outcomes = (decided_by: string) =>
      m.value("portcullis_connection_outcomes_total", { outcome: "refused", decided_by });
    assert.equal(outcomes("plugin:dnsbl"), 1);
    assert.equal(outcomes("plugin:fcrdns"), 1);
    assert.equal(outcomes("rule:cut-off"), 1);
    const decisions = (decided_by: string, kind: string, code: string) =>
      m.value("portcullis_decisions_total", { decided_by, kind, code });
    assert.equal(decisions("plugin:dnsbl", "reject", "554"), 1);
    assert.equal(decisions("plugin:fcrdns", "defer", "450"), 1);
    assert.equal(decisions("rule:cut-off", "disconnect", "421"), 1);
    // Refused clients start no transaction.
    assert.equal(m.value("portcullis_transactions_total", { outcome: "refused" }), 0);
  });

  test("replay without the DNSBL, or without FCrDNS, reports the connections that check refused as changed", async () => {
    const lines = (await readRecords(join(gw.dir, "log/tx.jsonl"))).map((record) => JSON.stringify(record));
    const replay = async (entries: string, rules?: string) =>
      replayLines(lines, candidateOf(await policyRuntime(await policyFile("candidate.yaml", policy(entries, rules)))));

    const same = await replay(pipeline.fcrdns + pipeline.dnsbl);
    assert.equal(same.transactions, 8);
    assert.equal(same.changed, 0, JSON.stringify(same.changes, null, 2));
    assert.deepEqual(same.recorded, { accepted: 3, rejected: 2, refused: 3 });

    // Records keep what a step's hooks found, not what each hook found: a candidate without a hook
    // cannot know the outcome of a step that hook ran in, and says so. The dnsbl hook ran for every
    // client but the nameless one, which fcrdns refused first: under the same fcrdns it is refused alike.
    const refusedConnections = (report: Awaited<ReturnType<typeof replay>>) =>
      report.changes
        .filter((c) => c.live.outcome === "refused")
        .map((c) => [c.client, c.live.decidedBy, c.candidate.outcome, c.candidate.unknown]);
    const noDnsbl = await replay(pipeline.fcrdns);
    assert.equal(noDnsbl.changed, 7);
    assert.deepEqual(refusedConnections(noDnsbl), [
      [LISTED, "plugin:dnsbl", "unknown", "the candidate has no connect hook of dnsbl, which ran"],
      [CUT, "rule:cut-off", "unknown", "the candidate has no connect hook of dnsbl, which ran"],
    ]);
    const noFcrdns = await replay(pipeline.dnsbl);
    assert.equal(noFcrdns.changed, 8);
    assert.deepEqual(
      refusedConnections(noFcrdns).map(([client, decidedBy]) => [client, decidedBy]),
      [
        [LISTED, "plugin:dnsbl"],
        [NAMELESS, "plugin:fcrdns"],
        [CUT, "rule:cut-off"],
      ],
    );

    // Without the rule that cut a client off, only that connection changes: it would have got a greeting.
    const noRule = await replay(pipeline.fcrdns + pipeline.dnsbl, "  []\n");
    assert.deepEqual(
      noRule.changes.map((c) => [c.client, c.live.outcome, c.candidate.outcome, c.candidate.unknown]),
      [[CUT, "refused", "unknown", "passes the connect phase, which was refused live: no later steps were recorded"]],
    );
  });

  async function connectionRecords(): Promise<TransactionRecord[]> {
    return (await readRecords(join(gw.dir, "log/tx.jsonl"))).filter((record) => record.event === "connection");
  }

  async function policyFile(name: string, text: string): Promise<string> {
    const { writeFile } = await import("node:fs/promises");
    const file = join(gw.dir, name);
    await writeFile(file, text);
    return file;
  }
});

function pick(line: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
  return Object.fromEntries(keys.map((key) => [key, line[key]]));
}
