/**
 * Keeps the benchmark from rotting: the whole machinery with a tiny load. Only correctness is
 * asserted (every message reaches the sink, the result has its shape); never a speed, which
 * depends on the machine and on whatever else runs on it.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type BenchOptions, type ConfigName, formatBench, runBench } from "./bench.js";
import { runIdle } from "./idle.js";
import { postfixAvailable } from "./postfix.js";
import { startSink } from "./sink.js";

/** The Postfix peer has a smoke test of its own (it needs Postfix and root). */
const GATEWAY_CONFIGS: ConfigName[] = ["direct", "relay", "edge"];

const tiny: BenchOptions = {
  sessions: 2,
  messages: 20,
  size: 2048,
  perConnection: 1,
  warmup: 0,
  load: "node",
  sink: "lean",
  configs: GATEWAY_CONFIGS,
  logLevel: "warn",
  workers: 1,
};

test("one run measures (a), (b) and (c), and every message reaches the sink", async () => {
  const result = JSON.parse(JSON.stringify(await runBench(tiny)));
  assert.deepEqual(Object.keys(result.runs), ["direct", "relay", "edge"]);
  for (const config of GATEWAY_CONFIGS) {
    const run = result.runs[config];
    assert.equal(run.delivered, 20, `${config}: ${run.errors.join("; ")}`);
    assert.equal(run.failed, 0);
    assert.equal(typeof run.msgPerSec, "number");
    assert.equal(typeof run.latencyMs.p50, "number");
    assert.equal(typeof run.latencyMs.p99, "number");
    assert.equal(run.gateway === null, config === "direct");
  }
  assert.equal(result.runs.direct.samples.length, 3, "(a) before (b), before (c) and after");
  assert.ok(result.runs.direct.samples.includes(result.runs.direct.msgPerSec), "the median is one of them");
  assert.equal(typeof result.runs.relay.gateway.peakRssMb, "number");
  assert.equal(typeof result.ratios.relay, "number");
  assert.equal(typeof result.ratios.edge, "number");
  assert.equal(typeof result.addedLatencyMs.relay.p99, "number");
  assert.equal(result.options.messageBytes, 2048);
  const parts = result.runs.edge.edgePolicy.map((part: { part: string }) => part.part);
  assert.deepEqual(parts, ["fcrdns", "dnsbl", "spf", "dkim", "dmarc", "rate-limit", "queue mode (fsynced spool)"]);
  assert.match(formatBench(result), /ratios: b\/a /);
});

test("many messages per connection, the smtp-server sink and a CPU profile of the gateway", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-bench-test-"));
  try {
    const result = await runBench({
      ...tiny,
      perConnection: 5,
      sink: "smtp-server",
      configs: ["relay"],
      profileDir: dir,
    });
    const run = result.runs.relay!;
    assert.equal(run.delivered, 20, run.errors.join("; "));
    assert.equal(result.ratios.relay, null, "no ratio without (a)");
    assert.ok(run.profile && run.profile.functions.length > 0 && run.profile.groups.length > 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("(d) scans every message with a private Rspamd and reports its cost beside (c)", async () => {
  const result = await runBench({ ...tiny, configs: ["edge", "rspamd"] });
  for (const config of ["edge", "rspamd"] as const) {
    const run = result.runs[config]!;
    assert.equal(run.delivered, 20, `${config}: ${run.errors.join("; ")}`);
    assert.equal(run.failed, 0);
  }
  const parts = result.runs.rspamd!.edgePolicy!.map((part) => part.part);
  assert.equal(parts.at(-2), "rspamd", parts.join(", "));
  assert.ok(result.runs.rspamd!.scanner!.cpuMsPerMessage > 0, "Rspamd worked on the messages");
  assert.equal(typeof result.rspamdCost?.gatewayCpuMs, "number");
  assert.equal(typeof result.rspamdCost?.throughput, "number");
  assert.match(formatBench(result), /rspamd per message, \(d\) beside \(c\): /);
});

test("the lean sink finds the end of DATA across reads and counts empty messages", async () => {
  const sink = await startSink("lean");
  const socket = connect({ host: "127.0.0.1", port: sink.port });
  socket.setNoDelay(true);
  let replies = "";
  socket.setEncoding("latin1").on("data", (text: string) => {
    replies += text;
  });
  try {
    await once(socket, "connect");
    // The pauses make each piece its own read on the sink's side.
    for (const piece of [
      "EHLO t\r\nMAIL FROM:<a@t>\r\nRCPT TO:<b@t>\r\nDATA\r\n",
      "..not the end\r\nhello\r",
      "\n.",
      "\r\n",
    ]) {
      socket.write(piece);
      await sleep(30);
    }
    socket.write("MAIL FROM:<a@t>\r\nRCPT TO:<b@t>\r\nDATA\r\n");
    await sleep(30);
    socket.write(".\r\nQUIT\r\n");
    await once(socket, "close");
    assert.equal(sink.count(), 2, replies);
    assert.equal(replies.match(/^250 2\.0\.0 Ok: queued/gm)?.length, 2, replies);
    assert.match(replies, /221 2\.0\.0 Bye\r\n$/);
  } finally {
    socket.destroy();
    await sink.close();
  }
});

test("idle connections: held open and measured", async () => {
  const result = await runIdle(20);
  assert.equal(result.connections, 20);
  assert.equal(typeof result.kbPerConnection, "number");
  assert.ok(result.baselineRssMb > 0);
});

test("the Postfix peer: a private instance relays every message to the sink, its DNSBL lookups reach the bench's DNS", async () => {
  const missing = postfixAvailable();
  assert.equal(missing, null, `the Postfix leg cannot run here: ${missing}`);
  const result = await runBench({ ...tiny, configs: ["direct", "postfix"] });
  const run = result.runs.postfix!;
  assert.equal(run.delivered, 20, run.errors.join("; "));
  assert.equal(run.failed, 0);
  assert.match(
    run.peer ?? "",
    /^Postfix [\d.]+: postscreen \(pregreet test\), DNSBL bl\.bench\.test, bl2\.bench\.test \(([1-9]\d*) DNS queries relayed\)/,
  );
  assert.equal(typeof result.ratios.postfix, "number");
  assert.match(formatBench(result), /Postfix peer: Postfix /);
});
