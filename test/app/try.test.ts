/**
 * `portcullis try` on known transactions, against the in-process DNS server: the printed trace
 * (each hook's findings, decision and time, then the outcome, reply and route), as text and --json.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { TryUsageError, tryCommand } from "../../app/try.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";

const listing = fileURLToPath(new URL("../policy/rules/fixtures/listing.ts", import.meta.url));

let dir: string;
let dns: TestDnsServer;
let policy: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-try-"));
  dns = await startDnsServer({
    "2.2.0.192.bl.test": { A: ["127.0.0.2"], TXT: ["listed for spam"] },
  });
  policy = join(dir, "policy.yaml");
  await writeFile(
    policy,
    [
      "version: 1",
      "server: { hostname: gw.test }",
      "relay: { domains: [example.test] }",
      "pipeline:",
      `  - { plugin: ${listing}, zone: bl.test }`,
      "rules:",
      "  - name: blocklisted",
      "    when: { listing.listed: true }",
      '    action: { reject: "554 5.7.1 [{client.ip}] blocked: {listing.txt}" }',
      "  - name: tag-partner",
      "    when: { sender.domain: partner.test }",
      "    action: [{ tag: partner }, { route: 'smtp://127.0.0.1:2600' }]",
      "routes: [{ to: 'maildir:./mail' }]",
    ].join("\n"),
  );
});

after(async () => {
  await dns.close();
  await rm(dir, { recursive: true, force: true });
});

const args = (ip: string, from: string, ...extra: string[]) => [
  "--policy",
  policy,
  "--ip",
  ip,
  "--helo",
  "mail.client.test",
  "--from",
  from,
  "--to",
  "bob@example.test",
  "--dns",
  dns.address,
  ...extra,
];

/** Times vary; everything else is asserted exactly. */
const timeless = (text: string) => text.replace(/ +\d+\.\d\d ms/g, " <t> ms");

test("try prints a listed client's trace: the hook's findings, the rule that rejected, the reply", async () => {
  const output = await tryCommand(args("192.0.2.2", "alice@sender.test"));
  const hook = listing.padEnd(listing.length);
  assert.equal(
    timeless(output),
    [
      `policy    ${policy}`,
      "client    192.0.2.2 helo mail.client.test",
      "envelope  alice@sender.test -> bob@example.test",
      "",
      `connect   ${hook}  continue <t> ms`,
      '            listing: {"listed":true,"zone":"bl.test","txt":"listed for spam"}',
      `connect   ${"rule blocklisted".padEnd(listing.length)}  reject <t> ms (reject "554 5.7.1 [{client.ip}] blocked: {listing.txt}")`,
      "",
      "outcome   rejected at connect by rule blocklisted",
      "reply     554 5.7.1 [192.0.2.2] blocked: listed for spam",
      "route     -",
      "score     0",
      "tags      -",
      "",
    ].join("\n"),
  );
});

test("try on an accepted transaction shows the route and tags it would get; nothing is delivered", async () => {
  const output = await tryCommand(args("192.0.2.3", "carol@partner.test"));
  const lines = timeless(output).split("\n");
  assert.deepEqual(lines.slice(4, 7), [
    `connect   ${listing}  continue <t> ms`,
    '            listing: {"listed":false,"zone":"bl.test","txt":null}',
    `mail      ${"rule tag-partner".padEnd(listing.length)}  continue <t> ms (tag partner, route smtp://127.0.0.1:2600)`,
  ]);
  assert.deepEqual(lines.slice(8, 13), [
    "outcome   accepted at queue",
    "reply     250 (accepted; nothing is delivered)",
    "route     smtp://127.0.0.1:2600 <- bob@example.test",
    "score     0",
    "tags      partner",
  ]);
});

test("try --json gives the same report as data", async () => {
  const message = join(dir, "message.eml");
  await writeFile(message, "Subject: hi\r\n\r\nhello\r\n");
  const report = JSON.parse(await tryCommand([...args("192.0.2.2", "alice@sender.test", "--json"), message]));
  assert.equal(report.policy, policy);
  assert.deepEqual(report.input, {
    ip: "192.0.2.2",
    helo: "mail.client.test",
    from: "alice@sender.test",
    to: ["bob@example.test"],
    role: "mx",
  });
  assert.deepEqual(
    report.steps.map((s: { ms: number }) => ({ ...s, ms: typeof s.ms })),
    [
      {
        phase: "connect",
        kind: "hook",
        name: listing,
        verdict: null,
        decision: "continue",
        ms: "number",
        findings: { listing: { listed: true, zone: "bl.test", txt: "listed for spam" } },
      },
      {
        phase: "connect",
        kind: "rule",
        name: "blocklisted",
        verdict: 'reject "554 5.7.1 [{client.ip}] blocked: {listing.txt}"',
        decision: "reject",
        ms: "number",
      },
    ],
  );
  assert.equal(report.outcome, "rejected");
  assert.equal(report.phase, "connect");
  assert.equal(report.reply, "554 5.7.1 [192.0.2.2] blocked: listed for spam");
  assert.equal(report.decidedBy, "rule blocklisted");
  assert.deepEqual(report.routes, {});
  assert.deepEqual(report.otherFindings, {});
});

test("try refuses incomplete arguments with a usage error", async () => {
  await assert.rejects(tryCommand(["--policy", policy, "--ip", "192.0.2.1", "--from", "a@b.test"]), TryUsageError);
  await assert.rejects(tryCommand(["--ip", "192.0.2.1"]), /try needs --policy FILE/);
});
