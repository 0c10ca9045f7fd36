/**
 * The rspamd plugin through the gateway against a real Rspamd (test/fixtures/rspamd.ts), one
 * instance for the file. Two gateways share it: one with the plugin's defaults, one whose policy
 * tags instead of rejecting and skips messages over 4 KB. The GTUBE test strings stand for spam
 * (XJS…: reject, ZJS…: rewrite subject), an ordinary note for ham.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { TransactionRecord } from "../../core/observability/transaction-log.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { startRspamd, type TestRspamd } from "../fixtures/rspamd.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { readRecords } from "../observability/helpers.js";

const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const GTUBE_REWRITE_SUBJECT = `Z${GTUBE.slice(1)}`;

/**
 * A routine of Rspamd's milter_headers that plays a rule echoing what a client wrote, line break
 * included, and a module naming a field badly; only for messages that carry X-Test-Echo.
 */
const ECHO_ROUTINE = `return function(task)
  if not task:get_header('X-Test-Echo') then return nil, {}, {}, {} end
  return nil, { ['X-Echo'] = 'what the client wrote\\r\\nBcc: injected@example.test', ['Bad Name'] = 'refused' }, {}, {}
end`;

const CONTROLLER_PASSWORD = "controller-secret";

let dns: TestDnsServer;
let rspamd: TestRspamd;
let hop: NextHop;
let strict: TestGateway;
let tagging: TestGateway;
let trusting: TestGateway;
let viaController: TestGateway;
let wrongPassword: TestGateway;
let impatient: TestGateway;

interface PolicyParts {
  /** More options of the rspamd entry, indented under it. */
  readonly entry?: string;
  /** More top-level sections (rules). */
  readonly more?: string;
  readonly url?: string;
  readonly timeout?: string;
  readonly relay?: string;
}

function policy({
  entry = "",
  more = "",
  url = rspamd.url,
  timeout = "20s",
  relay = "{ domains: [example.test] }",
}: PolicyParts = {}): string {
  return `
version: 1
server: { hostname: mx.gateway.test }
dns: { timeout: 500ms }
relay: ${relay}
pipeline:
  - plugin: rspamd
    url: "${url}"
    timeout: ${timeout}
${entry}
${more}
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
delivery: { mode: proxy }
observability: { transactionLog: { path: ./log/tx.jsonl } }
`;
}

before(async () => {
  dns = await startDnsServer({});
  rspamd = await startRspamd({
    dns: dns.address,
    customRoutines: { "echo-test": ECHO_ROUTINE },
    controllerPassword: CONTROLLER_PASSWORD,
  });
  hop = await startNextHop();
  strict = await startGateway(policy(), { dnsServers: [dns.address] });
  tagging = await startGateway(
    policy({
      entry: `    maxSize: 4KB
    on: { reject: ignore }`,
    }),
    { dnsServers: [dns.address] },
  );
  // As policies/edge-mx-content.yaml does it: our own networks are trusted and not scanned.
  trusting = await startGateway(
    policy({
      relay: "{ domains: [example.test], networks: [127.0.0.0/8] }",
      more: `rules:
  - name: trusted-not-scanned
    when: { trusted: true }
    action:
      skip: [rspamd]`,
    }),
    { dnsServers: [dns.address] },
  );
  // The controller scans too, for clients that give its password.
  viaController = await startGateway(
    policy({ entry: `    password: ${CONTROLLER_PASSWORD}`, url: rspamd.controllerUrl! }),
    { dnsServers: [dns.address] },
  );
  impatient = await startGateway(policy({ timeout: "1s" }), { dnsServers: [dns.address] });
  wrongPassword = await startGateway(policy({ entry: "    password: not-the-password", url: rspamd.controllerUrl! }), {
    dnsServers: [dns.address],
  });
});
after(async () => {
  await impatient?.stop();
  await wrongPassword?.stop();
  await viaController?.stop();
  await trusting?.stop();
  await tagging?.stop();
  await strict?.stop();
  await hop?.close();
  await rspamd?.close();
  await dns?.close();
});

let sequence = 0;

function message(body: string, headers = "Subject: a note\r\n"): { id: string; data: string } {
  const id = `rspamd-test-${++sequence}@sender.test`;
  return {
    id,
    data:
      `From: Ann <ann@sender.test>\r\nTo: bob@example.test\r\nMessage-ID: <${id}>\r\n` +
      `Date: Sun, 06 Dec 2026 08:00:00 +0000\r\n${headers}\r\n${body}\r\n`,
  };
}

async function send(gw: TestGateway, data: string) {
  const client = await SmtpTestClient.connect(gw.port);
  const replies = await client.transaction({
    helo: "mail.sender.test",
    from: "ann@sender.test",
    to: ["bob@example.test"],
    data,
  });
  await client.quit();
  return replies;
}

/** The message the next hop received with this Message-ID, as text. */
async function delivered(id: string): Promise<string> {
  const find = () => hop.messages.find((received) => received.raw.toString("utf8").includes(`<${id}>`));
  await eventually(() => find() !== undefined, `message ${id} at the next hop`);
  return find()!.raw.toString("utf8");
}

function headerSection(raw: string): string {
  return raw.slice(0, raw.indexOf("\r\n\r\n") + 2);
}

/** The data step of the gateway's `count`th transaction log record, once it is written. */
async function recordedDataStep(gw: TestGateway, count: number) {
  const file = join(gw.dir, "log", "tx.jsonl");
  let records: TransactionRecord[] = [];
  await eventually(async () => {
    records = await readRecords(file).catch(() => []);
    return records.length >= count;
  }, `${count} records in the transaction log`);
  const data = records[count - 1].steps.find((step) => step.phase === "data");
  assert.ok(data, "the record has a data step");
  return data;
}

/** The rspamd finding of the gateway's `count`th transaction log record. */
async function recordedFinding(gw: TestGateway, count: number) {
  const data = await recordedDataStep(gw, count);
  return data.findings.rspamd as Record<string, unknown> & { symbols: Array<{ name: string; score: number }> };
}

test("GTUBE is rejected with 554 5.7.1 by default", async () => {
  const replies = await send(strict, message(GTUBE).data);
  assert.equal(replies.data?.code, 554, replies.data?.raw);
  assert.match(replies.data.raw, /^554 5\.7\.1 /);
  const finding = await recordedFinding(strict, 1);
  assert.equal(finding.action, "reject");
  assert.ok(
    finding.symbols.some((symbol) => symbol.name === "GTUBE"),
    JSON.stringify(finding.symbols),
  );
});

test("with reject mapped to ignore, GTUBE is delivered tagged as spam", async () => {
  const { id, data } = message(GTUBE);
  const replies = await send(tagging, data);
  assert.equal(replies.data?.code, 250, replies.data?.raw);
  const head = headerSection(await delivered(id));
  assert.match(head, /^X-Spam: Yes\r$/m);
});

test("a clean message passes with the fields Rspamd's milter block adds, forged ones removed", async () => {
  const { id, data } = message(
    "Hello Bob, lunch on Tuesday is fine with me.\r\nAnn",
    "Subject: lunch\r\nX-Spam-Status: No, forged by the sender\r\n",
  );
  const replies = await send(strict, data);
  assert.equal(replies.data?.code, 250, replies.data?.raw);
  const head = headerSection(await delivered(id));
  assert.match(head, /^X-Spamd-Result: default: False \[/m);
  assert.match(head, /^X-Spam-Status: No, score=/m);
  assert.doesNotMatch(head, /forged by the sender/);
  assert.doesNotMatch(head, /^X-Spam: /m);
  const queueId = /^X-Rspamd-Queue-Id: (.+)\r$/m.exec(head)?.[1];
  const finding = await recordedFinding(strict, 2);
  assert.equal(finding.action, "no action");
  assert.equal(finding.messageId, id);
  assert.equal(typeof finding.score, "number");
  assert.ok(finding.symbols.length > 0, "Rspamd's symbols are in the transaction log");
  // The Queue-Id we sent is the transaction id, which Rspamd echoes in its field.
  const record = (await readRecords(join(strict.dir, "log", "tx.jsonl")))[1];
  assert.equal(queueId, record.tx);
});

test("rewrite subject replaces the Subject; what Rspamd echoes of the client's subject stays one line", async () => {
  const encoded = Buffer.from("cheap pills\r\nBcc: everyone@example.test").toString("base64");
  const { id, data } = message(GTUBE_REWRITE_SUBJECT, `Subject: =?UTF-8?B?${encoded}?=\r\n`);
  const replies = await send(strict, data);
  assert.equal(replies.data?.code, 250, replies.data?.raw);
  const head = headerSection(await delivered(id));
  const subjects = head.match(/^Subject:.*$/gm) ?? [];
  assert.equal(subjects.length, 1, head);
  assert.match(subjects[0], /^Subject: \*\*\* SPAM \*\*\* /);
  assert.doesNotMatch(head, /^Bcc:/m);
  assert.match(head, /^X-Spam: Yes\r$/m);
});

test("a field Rspamd adds cannot smuggle in a header line, and a field with an invalid name is left out", async () => {
  const { id, data } = message("Hello Bob", "Subject: echo\r\nX-Test-Echo: 1\r\n");
  const replies = await send(strict, data);
  assert.equal(replies.data?.code, 250, replies.data?.raw);
  const head = headerSection(await delivered(id));
  assert.match(head, /^X-Echo: what the client wrote +Bcc: injected@example\.test\r$/m);
  assert.doesNotMatch(head, /^Bcc:/m);
  assert.doesNotMatch(head, /Bad Name/);
  const warning = strict.logs.find((line) => line.msg === "rspamd: header fields with invalid names left out");
  assert.deepEqual(warning?.fields, ["Bad Name"]);
});

test("a message over maxSize is delivered unscanned, and the finding says so", async () => {
  const { id, data } = message(`${GTUBE}\r\n${"padding line of an attachment\r\n".repeat(200)}`);
  const replies = await send(tagging, data);
  assert.equal(replies.data?.code, 250, replies.data?.raw);
  const head = headerSection(await delivered(id));
  assert.doesNotMatch(head, /^X-Spam/m);
  const finding = await recordedFinding(tagging, 2);
  assert.equal(finding.skipped, "too-large");
  assert.equal(finding.action, null);
});

test("a trusted client's message is not scanned when a rule skips rspamd for trusted clients", async () => {
  const { id, data } = message(GTUBE);
  const replies = await send(trusting, data);
  assert.equal(replies.data?.code, 250, replies.data?.raw);
  assert.doesNotMatch(headerSection(await delivered(id)), /^X-Spam/m);
  const dataStep = await recordedDataStep(trusting, 1);
  assert.deepEqual(dataStep.skipped, ["rspamd"]);
  assert.equal(dataStep.findings.rspamd, undefined);
});

test("through the controller with its password, GTUBE is rejected; with a wrong one, 451 naming rspamd", async () => {
  const scanned = await send(viaController, message(GTUBE).data);
  assert.equal(scanned.data?.code, 554, scanned.data?.raw);

  const refused = await send(wrongPassword, message(GTUBE).data);
  assert.match(refused.data?.raw ?? "", /^451 4\.3\.0 /);
  const failure = wrongPassword.logs.find((line) => line.msg === "hook failed; applying onError");
  assert.equal(failure?.plugin, "rspamd");
  assert.match(String(failure?.err), /^rspamd at [\d.]+:\d+: HTTP 401: Unauthorized$/);
});

/** Client sockets to `host:port` that are still open (ESTABLISHED), from the kernel's table. */
async function openConnectionsTo(host: string, port: number): Promise<number> {
  const hex = (octets: number[]) => octets.map((octet) => octet.toString(16).padStart(2, "0").toUpperCase()).join("");
  const remote = `${hex(host.split(".").map(Number).reverse())}:${hex([port >> 8, port & 255])}`;
  const table = await readFile("/proc/net/tcp", "utf8");
  return table.split("\n").filter((line) => {
    const [, , rem, state] = line.trim().split(/\s+/);
    return rem === remote && state === "01";
  }).length;
}

test("Rspamd that does not answer: the scan is abandoned at the hook's deadline, 451", async () => {
  rspamd.freeze();
  try {
    const replies = await send(impatient, message("Hello while the scanner hangs").data);
    assert.match(replies.data?.raw ?? "", /^451 4\.3\.0 /);
    const failure = impatient.logs.find((line) => line.msg === "hook failed; applying onError");
    assert.deepEqual([failure?.plugin, failure?.err], ["rspamd", "timeout"]);
    // The request was aborted with the deadline, not left hanging on a connection nobody reads.
    await eventually(
      async () => (await openConnectionsTo(rspamd.host, rspamd.port)) === 0,
      "no open connection to rspamd",
    );
  } finally {
    rspamd.thaw();
  }
});

test("Rspamd stopped: 451 and a log line naming rspamd; started again: scanning resumes", async () => {
  await rspamd.stop();
  const down = await send(strict, message("Hello while the scanner is down").data);
  assert.match(down.data?.raw ?? "", /^451 4\.3\.0 /);
  const failure = strict.logs.find((line) => line.msg === "hook failed; applying onError");
  assert.ok(failure, "the failure is logged");
  assert.equal(failure.plugin, "rspamd");
  assert.match(String(failure.err), /^rspamd at /);

  await rspamd.start();
  const again = await send(strict, message(GTUBE).data);
  assert.equal(again.data?.code, 554, again.data?.raw);
});
