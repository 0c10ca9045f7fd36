/**
 * Acceptance: a known mix of traffic through the wire — accepted and delivered,
 * rejected by a rule, rejected by a DNSBL listing, deferred by a rule — then /metrics scraped over
 * HTTP: every counter matches the mix exactly. Then the gauges read at scrape time: the bytes the
 * spool holds for a deferred message, and a DNS query held unanswered.
 */
import assert from "node:assert/strict";
import { readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { loadPolicy } from "../../app/catalogue.js";
import { gatewayEndpoints, type OpsServer, startOpsServer } from "../../core/observability/http.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { sendAs } from "../fixtures/sender-auth.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { closedConnections } from "../plugins/connection-checks.js";
import { message, send as sendMessage, until } from "../queue/helpers.js";
import { scrape } from "./scrape.js";

const CLEAN = "192.0.2.10";
const LISTED = "192.0.2.66";

const policy = (nextHopPort: number) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test] }
pipeline:
  - plugin: dnsbl
    zones: [{ zone: bl.test }]
rules:
  - { name: deny-spam, when: { sender.domain: spam.test, recipients: { exists: true } }, action: reject }
  - { name: later, when: { sender.domain: slow.test, recipients: { exists: true } }, action: defer }
routes: [{ to: "smtp://127.0.0.1:${nextHopPort}" }]
delivery: { mode: queue, spool: ./spool }
`;

function send(port: number, ip: string, from: string) {
  return sendAs(port, ip, {
    helo: "client.sender.test",
    from,
    to: ["user@example.test"],
    data: `Subject: metrics test\r\nMessage-ID: <${Math.random()}@sender.test>\r\n\r\nHello\r\n`,
  });
}

describe("metrics after a known mix of traffic", () => {
  let relay: DnsRelay;
  let hop: NextHop;
  let gw: TestGateway;
  let ops: OpsServer;
  let base: string;

  before(async () => {
    relay = await startDnsRelay(
      { "66.2.0.192.bl.test": { A: ["127.0.0.2"], TXT: ["listed for the metrics test"] } },
      (hop) => policy(hop.port),
    );
    ({ hop, gw } = relay);
    ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
    base = `http://127.0.0.1:${ops.address.port}`;
  });
  after(async () => {
    await ops.close();
    await relay.stop();
  });

  test("counters match the traffic exactly", async () => {
    const replies: number[] = [];
    for (let i = 0; i < 3; i++) replies.push((await send(gw.port, CLEAN, "a@sender.test")).data?.code ?? 0);
    for (let i = 0; i < 2; i++) replies.push((await send(gw.port, CLEAN, "b@spam.test")).data?.code ?? 0);
    for (let i = 0; i < 2; i++) replies.push((await send(gw.port, LISTED, "c@sender.test")).mail.code);
    replies.push((await send(gw.port, CLEAN, "d@slow.test")).data?.code ?? 0);
    assert.deepEqual(replies, [250, 250, 250, 550, 550, 554, 554, 451]);
    await closedConnections(gw, 8);
    await hop.waitForMessages(3);
    await eventually(
      async () => (await scrape(base)).value("portcullis_deliveries_total", deliveredLabels(hop)) === 3,
      "three deliveries counted",
    );

    const m = await scrape(base);
    const listener = { role: "mx", port: String(gw.port) };
    assert.equal(m.value("portcullis_connections_total", listener), 8);
    assert.equal(m.value("portcullis_connections_active", listener), 0);

    assert.equal(m.value("portcullis_transactions_total", { outcome: "accepted" }), 3);
    assert.equal(m.value("portcullis_transactions_total", { outcome: "rejected" }), 2);
    assert.equal(m.value("portcullis_transactions_total", { outcome: "deferred" }), 1);
    // A listed client is refused at MAIL for what it is: no transaction starts.
    assert.equal(m.value("portcullis_transactions_total", { outcome: "refused" }), 0);

    const decision = (decided_by: string, kind: string, code: string) =>
      m.value("portcullis_decisions_total", { decided_by, kind, code });
    assert.equal(decision("rule:deny-spam", "reject", "550"), 2);
    assert.equal(decision("plugin:dnsbl", "reject", "554"), 2);
    assert.equal(decision("rule:later", "defer", "451"), 1);
    assert.equal(
      [...m.text.matchAll(/^portcullis_decisions_total\{.*\} (\d+)$/gm)].reduce((n, [, v]) => n + Number(v), 0),
      5,
      "no other refusal was counted",
    );

    assert.equal(m.value("portcullis_dnsbl_listings_total", { zone: "bl.test" }), 2);
    assert.equal(m.value("portcullis_hook_verdicts_total", { plugin: "dnsbl", verdict: "listed" }), 2);
    assert.equal(m.value("portcullis_rule_matches_total", { rule: "deny-spam", phase: "data" }), 2);
    assert.equal(m.value("portcullis_rule_matches_total", { rule: "later", phase: "data" }), 1);
    // The dnsbl hook ran once per connection, each run observed by the latency histogram.
    assert.equal(m.value("portcullis_hook_duration_seconds_count", { plugin: "dnsbl", phase: "connect" }), 8);
    assert.equal(m.value("portcullis_hook_errors_total", { plugin: "dnsbl", phase: "connect", error: "timeout" }), 0);

    assert.equal(m.value("portcullis_deliveries_total", deliveredLabels(hop)), 3);
    assert.equal(m.value("portcullis_queue_messages"), 0);
    assert.equal(m.value("portcullis_queue_oldest_seconds"), 0);

    // The resolver's own counters, exposed as they are (which lookups the dnsbl plugin makes is its business).
    const dns = gw.gateway.runtime.services.dns.stats();
    assert.ok(dns.misses >= 2, "one upstream query at least per client");
    assert.equal(m.value("portcullis_dns_queries_total"), dns.queries);
    assert.equal(m.value("portcullis_dns_cache_hits_total"), dns.hits);
    assert.equal(m.value("portcullis_dns_cache_misses_total"), dns.misses);
    assert.equal(m.value("portcullis_dns_errors_total", { code: "ENOTFOUND" }), dns.errors.ENOTFOUND);

    assert.ok(m.value("process_resident_memory_bytes") > 0, "process metrics are exported");
  });

  test("a reload is counted, and DNS totals survive the new resolver", async () => {
    const before = await scrape(base);
    await gw.gateway.reload(await loadPolicy(`${gw.dir}/policy.yaml`));
    await send(gw.port, CLEAN, "a@sender.test");
    await closedConnections(gw, 9);
    const after = await scrape(base);
    assert.equal(after.value("portcullis_policy_reloads_total", { result: "ok" }), 1);
    assert.equal(after.value("portcullis_policy_reloads_total", { result: "failed" }), 0);
    // The reload built a new resolver; the old one's counts stay in the totals.
    const fresh = gw.gateway.runtime.services.dns.stats();
    assert.ok(fresh.misses > 0, "the new resolver starts with an empty cache");
    for (const [name, field] of [
      ["portcullis_dns_queries_total", "queries"],
      ["portcullis_dns_cache_hits_total", "hits"],
      ["portcullis_dns_cache_misses_total", "misses"],
    ] as const) {
      assert.equal(after.value(name), before.value(name) + fresh[field], name);
    }
  });

  test("/healthz answers, unknown paths are 404", async () => {
    const health = await fetch(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(await health.text(), "ok\n");
    assert.equal((await fetch(`${base}/nope`)).status, 404);
    assert.equal((await fetch(`${base}/metrics`, { method: "POST" })).status, 405);
  });
});

describe("gauges read from the spool and the resolver when scraped", () => {
  let relay: DnsRelay;
  let ops: OpsServer;
  let base: string;

  before(async () => {
    relay = await startDnsRelay(
      { "held.test": { A: "timeout" } },
      (hop) => `
version: 1
server: { hostname: gw.test }
dns: { timeout: 2s }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
delivery: { mode: queue, spool: ./spool, retry: { schedule: [1h], maxAge: 1d } }
`,
      { hop: { rejectMail: "451 4.3.0 Try again later" } },
    );
    ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(relay.gw.gateway));
    base = `http://127.0.0.1:${ops.address.port}`;
  });
  after(async () => {
    await ops.close();
    await relay.stop();
  });

  test("portcullis_queue_bytes is what the spool holds on disk while a deferred message waits", async () => {
    const { gw } = relay;
    assert.equal((await scrape(base)).value("portcullis_queue_bytes"), 0, "nothing stored yet");
    const data = message("held", `${"x".repeat(78)}\r\n`.repeat(64));
    assert.equal((await sendMessage(gw.port, { to: ["b@example.test"], data })).code, 250);
    await until(() => gw.logs.some((line) => line.event === "deferred"), "the next hop's deferral");
    const spool = gw.gateway.queue.spool!;
    const onDisk = await bytesIn(spool.queueDir, (name) => name.endsWith(".seg"));
    const large = await bytesIn(spool.largeDir, () => true);
    const held = (await scrape(base)).value("portcullis_queue_bytes");
    assert.equal(held, onDisk + large);
    // The one record holds the whole message, plus its Received header and the envelope.
    assert.ok(held > data.length, `${held} bytes held for a ${data.length}-byte message`);
    assert.equal((await scrape(base)).value("portcullis_queue_messages"), 1);
  });

  test("portcullis_dns_inflight counts a query the server holds unanswered, and drops when it ends", async () => {
    const { gw, dns } = relay;
    assert.equal((await scrape(base)).value("portcullis_dns_inflight"), 0);
    const lookup = gw.gateway.runtime.services.dns.resolve4("held.test").then(
      () => assert.fail("the DNS server answers nothing for held.test"),
      (error: { code?: string }) => error.code,
    );
    await until(() => dns.count("held.test", "A") === 1, "the query to reach the DNS server");
    assert.equal((await scrape(base)).value("portcullis_dns_inflight"), 1);
    assert.equal(await lookup, "ETIMEOUT");
    assert.equal((await scrape(base)).value("portcullis_dns_inflight"), 0);
  });
});

/** Total size of the files in `dir` whose names pass `include` (none when the folder is absent). */
async function bytesIn(dir: string, include: (name: string) => boolean): Promise<number> {
  const names = await readdir(dir).catch(() => []);
  const sizes = await Promise.all(names.filter(include).map(async (name) => (await stat(join(dir, name))).size));
  return sizes.reduce((sum, size) => sum + size, 0);
}

function deliveredLabels(hop: NextHop): Record<string, string> {
  return { route: `smtp://127.0.0.1:${hop.port}`, status: "delivered" };
}

test("a gateway counts nothing until its policy names a reader; a reload that adds one starts the count", async () => {
  const text = "version: 1\nserver: { hostname: gw.test }\nroutes: [{ to: discard }]\n";
  const gw = await startGateway(text, { countMetrics: false });
  try {
    assert.equal(gw.gateway.metrics, null, "metrics kept with nothing to read them");
    // Open across the reload: its close must not take the gauge of open connections below zero.
    const client = await SmtpTestClient.connect(gw.port);
    await writeFile(join(gw.dir, "policy.yaml"), `${text}observability: { metrics: "127.0.0.1:9464" }\n`);
    await gw.gateway.reload(await loadPolicy(join(gw.dir, "policy.yaml")));
    await client.quit();
    await closedConnections(gw, 1);
    const ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
    try {
      const scraped = await scrape(`http://127.0.0.1:${ops.address.port}`);
      assert.equal(
        scraped.value("portcullis_policy_reloads_total", { result: "ok" }),
        1,
        "the reload itself is counted",
      );
      const listener = { role: "mx", port: String(gw.port) };
      assert.equal(scraped.value("portcullis_connections_total", listener), 1, scraped.text);
      assert.equal(scraped.value("portcullis_connections_active", listener), 0);
    } finally {
      await ops.close();
    }
  } finally {
    await gw.stop();
  }
});
