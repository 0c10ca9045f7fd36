/**
 * Backscatter through the wire. A spammer on a blocklist forges a victim's address as sender and
 * writes to users that do not exist: such mail must be refused at RCPT (from `relay.recipients`,
 * or by asking the next hop: `verify: rcpt`), and when a bounce happens anyway it must not go to a
 * sender we have reason to believe forged. `<postmaster>` without a domain is our own postmaster
 * and is delivered here, never relayed.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import { closedPort } from "../fixtures/next-hop.js";
import { message, sendAs } from "../fixtures/sender-auth.js";
import { parseDsn, until } from "../queue/helpers.js";

const cleanups = cleanupAfterAll();

/** On bl.test; sends as the victim, whose domain does not exist (SPF none). */
const LISTED = "192.0.2.66";
const CLEAN = "192.0.2.10";
const VICTIM = "victim@nxdomain-victim.test";

let dns: TestDnsServer;
before(async () => {
  dns = await startDnsServer({
    [`${LISTED.split(".").reverse().join(".")}.bl.test`]: { A: ["127.0.0.2"], TXT: ["spam source"] },
    "good.test": { TXT: [`v=spf1 ip4:${CLEAN} -all`] },
    "forged.test": { TXT: ["v=spf1 ip4:198.51.100.1 -all"] },
  });
});
after(() => dns.close());

/**
 * A relay for example.test: its own route (extra keys such as `verify`), and a catch-all smarthost
 * where anything else — bounces included — would leave. The blocklist and SPF only record: the
 * spammer's mail is accepted, as in the finding this reproduces.
 */
function policy(input: { internal: number; smarthost: number; route?: string; relay?: string; delivery?: string }) {
  return `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
dns: { timeout: 500ms }
relay:
  domains: [example.test]
${input.relay ?? ""}
pipeline:
  - plugin: dnsbl
    zones: [{ zone: bl.test }]
    on: { listed: ignore }
  - plugin: spf
    on: { fail: ignore, softfail: ignore }
routes:
  - match: { recipientDomain: example.test }
    to: "smtp://127.0.0.1:${input.internal}"
${input.route ?? ""}
  - to: "smtp://127.0.0.1:${input.smarthost}"
delivery:
  mode: queue
  retry: { schedule: [100ms], maxAge: 1h }
${input.delivery ?? ""}
`;
}

async function gateway(text: string, files: Record<string, string> = {}) {
  return cleanups.gateway(text, { dnsServers: [dns.address], files });
}

/** The spammer's transaction: one RCPT per recipient, the RCPT replies as "code enhanced text". */
async function spam(port: number, to: string[], ip = LISTED, from = VICTIM) {
  const replies = await sendAs(port, ip, { from, to, data: message({ from: `<${from}>`, body: "BUY NOW\r\n" }) });
  return { rcpts: replies.rcpts.map((r) => r.raw), data: replies.data?.raw ?? null };
}

describe("recipient validation from relay.recipients", () => {
  it("refuses an unknown recipient of a relay domain at RCPT (550 5.1.1), list entries inline and from a file", async () => {
    const internal = await cleanups.hop({ knownRecipients: ["alice@example.test", "bob@example.test"] });
    const smarthost = await cleanups.hop();
    const gw = await gateway(
      policy({
        internal: internal.port,
        smarthost: smarthost.port,
        relay: '  recipients: ["alice@example.test", { file: lists/recipients.txt }]',
      }),
      { "lists/recipients.txt": "# the directory export\nbob@example.test\n" },
    );
    const { rcpts, data } = await spam(gw.port, ["nobody@example.test", "alice@example.test", "Bob@example.test"]);
    assert.match(rcpts[0], /^550 5\.1\.1 <nobody@example\.test>: Recipient address rejected: User unknown$/);
    assert.match(rcpts[1], /^250 /);
    assert.match(rcpts[2], /^250 /);
    assert.match(data ?? "", /^250 /);
    await internal.waitForMessages(1);
    assert.ok(!internal.recipientsAsked.includes("nobody@example.test"), "the unknown user never left");
    assert.equal(smarthost.messages.length, 0);
  });

  it("postmaster@ a relay domain is always a recipient; other domains still meet the relay check first", async () => {
    const internal = await cleanups.hop();
    const smarthost = await cleanups.hop();
    const gw = await gateway(
      policy({ internal: internal.port, smarthost: smarthost.port, relay: '  recipients: ["alice@example.test"]' }),
    );
    const { rcpts } = await spam(gw.port, ["PostMaster@example.test", "someone@elsewhere.test"]);
    assert.match(rcpts[0], /^250 /);
    assert.match(rcpts[1], /^550 5\.7\.1 Relaying denied/);
  });
});

describe("recipient verification (verify: rcpt)", () => {
  it("asks the next hop at RCPT: unknown there is 550 5.1.1 here, and answers are cached", async () => {
    const internal = await cleanups.hop({ knownRecipients: ["alice@example.test"] });
    const smarthost = await cleanups.hop();
    const gw = await gateway(policy({ internal: internal.port, smarthost: smarthost.port, route: "    verify: rcpt" }));
    const asked = (address: string) => internal.recipientsAsked.filter((a) => a === address).length;

    const first = await spam(gw.port, ["nobody@example.test"]);
    assert.match(first.rcpts[0], /^550 5\.1\.1 <nobody@example\.test>: Recipient address rejected: .*user unknown/);
    assert.equal(first.data, null);
    assert.equal(asked("nobody@example.test"), 1);

    const again = await spam(gw.port, ["nobody@example.test", "alice@example.test"]);
    assert.match(again.rcpts[0], /^550 5\.1\.1 /);
    assert.match(again.rcpts[1], /^250 /);
    assert.equal(asked("nobody@example.test"), 1, "the refusal came from the cache");

    const third = await spam(gw.port, ["alice@example.test"], CLEAN, "someone@good.test");
    assert.match(third.rcpts[0], /^250 /);
    assert.match(third.data ?? "", /^250 /);
    // Probe once, then the two deliveries: the probe left the pooled session clean (RSET) for them.
    const received = await internal.waitForMessages(2);
    assert.deepEqual(
      received.map((m) => m.to),
      [["alice@example.test"], ["alice@example.test"]],
    );
    assert.equal(asked("alice@example.test"), 3, "one probe, then one RCPT per delivery");
    assert.equal(gw.gateway.queue.verifier.probes, 2);
    assert.equal(smarthost.messages.length, 0);
  });

  it("next hop down: 450 4.1.1 at RCPT, not cached; once it is up the recipient is accepted", async () => {
    const port = await closedPort();
    const smarthost = await cleanups.hop();
    const gw = await gateway(policy({ internal: port, smarthost: smarthost.port, route: "    verify: rcpt" }));
    const down = await spam(gw.port, ["alice@example.test"], CLEAN, "someone@good.test");
    assert.match(down.rcpts[0], /^450 4\.1\.1 <alice@example\.test>: Recipient address rejected: unverified address/);
    assert.ok(gw.logs.some((l) => l.event === "verify" && String(l.reason).includes("Cannot connect")));

    const internal = await cleanups.hop({ port, knownRecipients: ["alice@example.test"] });
    const up = await spam(gw.port, ["alice@example.test"], CLEAN, "someone@good.test");
    assert.match(up.rcpts[0], /^250 /);
    await internal.waitForMessages(1);
  });

  it("a next hop answering 4xx is no answer: 450, never accepted unverified", async () => {
    const internal = await cleanups.hop({ rejectRecipients: { "alice@example.test": "451 4.3.0 directory busy" } });
    const smarthost = await cleanups.hop();
    const gw = await gateway(policy({ internal: internal.port, smarthost: smarthost.port, route: "    verify: rcpt" }));
    const { rcpts } = await spam(gw.port, ["alice@example.test"], CLEAN, "someone@good.test");
    assert.match(rcpts[0], /^450 4\.1\.1 /);
  });
});

describe("<postmaster> without a domain", () => {
  it("from an outsider: delivered to relay.postmaster (a maildir), never to the catch-all smarthost", async () => {
    const internal = await cleanups.hop();
    const smarthost = await cleanups.hop();
    const gw = await gateway(
      policy({ internal: internal.port, smarthost: smarthost.port, relay: '  postmaster: "maildir:./postmaster"' }),
    );
    const { rcpts, data } = await spam(gw.port, ["PostMaster"]);
    assert.match(rcpts[0], /^250 /);
    assert.match(data ?? "", /^250 /);
    const folder = join(gw.dir, "postmaster", "new");
    await until(async () => (await readdir(folder).catch(() => [])).length === 1, "the postmaster's maildir");
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
    assert.equal(smarthost.messages.length, 0);
    assert.equal(internal.messages.length, 0);
  });

  it("relay.postmaster as an address: the mail goes to that address by its own route", async () => {
    const internal = await cleanups.hop();
    const smarthost = await cleanups.hop();
    const gw = await gateway(
      policy({ internal: internal.port, smarthost: smarthost.port, relay: '  postmaster: "hostmaster@example.test"' }),
    );
    const { data } = await spam(gw.port, ["postmaster"]);
    assert.match(data ?? "", /^250 /);
    const [received] = await internal.waitForMessages(1);
    assert.deepEqual(received.to, ["hostmaster@example.test"]);
    assert.equal(smarthost.messages.length, 0);
  });

  it("without relay.postmaster, a catch-all route never takes it: 550 5.1.1 at RCPT", async () => {
    const internal = await cleanups.hop();
    const smarthost = await cleanups.hop();
    const gw = await gateway(policy({ internal: internal.port, smarthost: smarthost.port }));
    const { rcpts } = await spam(gw.port, ["postmaster"]);
    assert.match(rcpts[0], /^550 5\.1\.1 <postmaster>: Recipient address rejected: no postmaster mailbox here/);
    assert.equal(smarthost.recipientsAsked.length, 0);
  });
});

describe("bounces without recipient validation", () => {
  // The internal server knows only alice: every other recipient fails there after we took the mail.
  let internal: Awaited<ReturnType<typeof cleanups.hop>>;
  let smarthost: Awaited<ReturnType<typeof cleanups.hop>>;
  let gw: Awaited<ReturnType<typeof gateway>>;
  before(async () => {
    internal = await cleanups.hop({ knownRecipients: ["alice@example.test"] });
    smarthost = await cleanups.hop();
    gw = await gateway(policy({ internal: internal.port, smarthost: smarthost.port }));
  });

  /** Sends, waits until the message is done (bounced or not), and returns the log lines about it. */
  async function undeliverable(ip: string, from: string) {
    const done = gw.logs.filter((l) => l.event === "done").length;
    const { data } = await spam(gw.port, ["nobody@example.test"], ip, from);
    assert.match(data ?? "", /^250 /);
    await until(() => gw.logs.filter((l) => l.event === "done").length > done, "the message to be done");
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
    return gw.logs.filter((l) => l.event === "bounce-suppressed" && l.to === from);
  }

  const suppressedMetric = async (reason: string) =>
    new RegExp(`portcullis_bounces_suppressed_total\\{reason="${reason}"\\} 1\\b`).test(
      (await gw.gateway.metrics?.registry.metrics()) ?? "",
    );

  it("no DSN for a DNSBL-listed client's message: logged and counted as suppressed", async () => {
    const suppressed = await undeliverable(LISTED, VICTIM);
    assert.equal(suppressed.length, 1);
    assert.equal(suppressed[0].reason, "dnsbl-listed");
    assert.ok(await suppressedMetric("dnsbl-listed"));
    assert.equal(smarthost.messages.length, 0, "nothing went to the forged sender");
  });

  it("no DSN for a sender that failed SPF", async () => {
    const suppressed = await undeliverable(CLEAN, "someone@forged.test");
    assert.equal(suppressed[0]?.reason, "spf-fail");
    assert.ok(await suppressedMetric("spf-fail"));
    assert.equal(smarthost.messages.length, 0);
  });

  it("a sender that passed SPF gets its DSN, with the whole message", async () => {
    assert.deepEqual(await undeliverable(CLEAN, "someone@good.test"), []);
    const [bounce] = await smarthost.waitForMessages(1);
    assert.deepEqual([bounce.from, bounce.to], ["", ["someone@good.test"]]);
    const dsn = parseDsn(bounce.raw);
    assert.equal(dsn.returnedType, "message/rfc822");
    assert.match(dsn.returned, /BUY NOW/);
  });

  it("a sender nothing authenticates (SPF none) gets its DSN with the header section only", async () => {
    assert.deepEqual(await undeliverable(CLEAN, "someone@unknown-domain.test"), []);
    const [, bounce] = await smarthost.waitForMessages(2);
    assert.deepEqual(bounce.to, ["someone@unknown-domain.test"]);
    const dsn = parseDsn(bounce.raw);
    assert.equal(dsn.returnedType, "text/rfc822-headers");
    assert.doesNotMatch(dsn.returned, /BUY NOW/);
  });
});
