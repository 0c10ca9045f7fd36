/**
 * Queue mode through the wire: store-then-250, delivery by the worker, retries on the schedule while
 * the next hop is down, DSNs for permanent failures (parsed back), 452 when the spool cannot take
 * the message, resume after a restart, connection reuse.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import { startGateway } from "../fixtures/gateway.js";
import { message, parseDsn, send, until } from "./helpers.js";

const cleanups = cleanupAfterAll();
const { hop, gateway } = cleanups;

function policy(routes: string, delivery = "", extra = ""): string {
  return `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test, other.test] }
routes:
${routes}
delivery:
  mode: queue
  retry: { schedule: [200ms, 400ms], maxAge: 1h }
${delivery}
${extra}
`;
}

describe("queue mode", () => {
  it("answers 250 with the queue id once stored, then delivers and empties the spool", async () => {
    const next = await hop();
    const gw = await gateway(policy(`  - { to: "smtp://127.0.0.1:${next.port}" }`));
    const reply = await send(gw.port, { to: ["b@example.test"], data: message("q1") });
    assert.equal(reply.code, 250);
    assert.match(reply.text, /^2\.0\.0 Ok: queued as [0-9A-Z]+$/);
    const [received] = await next.waitForMessages(1);
    assert.match(received.raw.toString(), /Message-ID: <q1@sender.test>/);
    assert.match(received.raw.toString(), /^Received: from client.test/);
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
  });

  it("retries while the next hop is down, on the schedule, and delivers every message once it is up", async () => {
    const next = await hop({ down: true });
    const gw = await gateway(policy(`  - { to: "smtp://127.0.0.1:${next.port}" }`));
    for (const id of ["d1", "d2", "d3"]) {
      assert.equal((await send(gw.port, { to: ["b@example.test"], data: message(id) })).code, 250);
    }
    const deferrals = () => gw.logs.filter((l) => l.event === "deferred");
    await until(() => deferrals().length >= 6, "two deferrals per message");
    next.up();
    const received = await next.waitForMessages(3, 10_000);
    assert.deepEqual(received.map((m) => /Message-ID: <(\w+)@/.exec(m.raw.toString())![1]).sort(), ["d1", "d2", "d3"]);
    // Every wait is the schedule's (200 ms, then 400 ms) within the ±10 % jitter, and no attempt
    // came before its time.
    for (const line of deferrals()) {
      const attempts = line.attempts as number;
      const wait = (line.nextAt as number) - (line.at as number);
      const planned = attempts === 1 ? 200 : 400;
      assert.ok(wait >= planned * 0.9 - 1 && wait <= planned * 1.1 + 1, `wait ${wait} after attempt ${attempts}`);
    }
    // Every deferral was followed by another attempt (each message was delivered in the end); the
    // spool empties only after the last attempt's line is logged.
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
    const attempts = gw.logs.filter((l) => l.event === "delivery");
    for (const line of deferrals()) {
      const nextAttempt = attempts.find((a) => a.id === line.id && a.attempt === (line.attempts as number) + 1);
      assert.ok(nextAttempt, `an attempt after deferral ${line.attempts} of ${line.id}`);
      assert.ok(Date.parse(String(nextAttempt.time)) >= (line.nextAt as number) - 1);
    }
  });

  it("bounces a 5xx with an RFC 3464 DSN to the sender, honouring NOTIFY, ORCPT, ENVID and RET", async () => {
    const next = await hop({
      rejectRecipients: { "gone@example.test": "550 5.1.1 no such user here", "never@example.test": "550 5.1.1 nope" },
    });
    const senderHop = await hop();
    // Nothing authenticates this sender, whose DSNs would return headers only: the client's RET
    // and its absence are what this test is about (test/delivery/backscatter.test.ts covers that default).
    const gw = await gateway(
      policy(
        `  - { match: { recipientDomain: sender.test }, to: "smtp://127.0.0.1:${senderHop.port}" }
  - { to: "smtp://127.0.0.1:${next.port}" }`,
        "  bounces: { unauthenticated: full }",
      ),
    );
    const reply = await send(gw.port, {
      to: ["gone@example.test", "b@example.test"],
      data: message("bounce1"),
      mailParams: " RET=HDRS ENVID=env+2Bid42",
      rcptParams: " NOTIFY=FAILURE ORCPT=rfc822;original@example.test",
    });
    assert.equal(reply.code, 250);
    const [dsnMessage] = await senderHop.waitForMessages(1);
    assert.equal(dsnMessage.from, "", "a DSN comes from the null sender");
    assert.deepEqual(dsnMessage.to, ["a@sender.test"]);
    const dsn = parseDsn(dsnMessage.raw);
    assert.equal(dsn.headers["auto-submitted"], "auto-replied");
    const [perMessage, ...perRecipient] = dsn.status;
    assert.equal(perMessage["reporting-mta"], "dns; gw.test");
    assert.equal(perMessage["original-envelope-id"], "env+id42");
    assert.equal(perRecipient.length, 1, "only the failed recipient is reported");
    assert.equal(perRecipient[0]["final-recipient"], "rfc822; gone@example.test");
    assert.equal(perRecipient[0]["original-recipient"], "rfc822;original@example.test");
    assert.equal(perRecipient[0].action, "failed");
    assert.equal(perRecipient[0].status, "5.1.1");
    assert.equal(perRecipient[0]["diagnostic-code"], "smtp; 550 5.1.1 no such user here");
    assert.match(perRecipient[0]["remote-mta"], /127\.0\.0\.1/);
    assert.equal(dsn.returnedType, "text/rfc822-headers");
    assert.match(dsn.returned, /Message-ID: <bounce1@sender.test>/);
    assert.doesNotMatch(dsn.returned, /hello/, "RET=HDRS returns no body");
    // The recipient that was accepted got the message.
    assert.deepEqual(
      next.messages.map((m) => m.to),
      [["b@example.test"]],
    );

    // NOTIFY=NEVER and the null sender get no DSN; the default (no RET) returns the whole message.
    assert.equal(
      (await send(gw.port, { to: ["never@example.test"], data: message("quiet"), rcptParams: " NOTIFY=NEVER" })).code,
      250,
    );
    assert.equal((await send(gw.port, { from: "", to: ["gone@example.test"], data: message("null") })).code, 250);
    assert.equal((await send(gw.port, { to: ["gone@example.test"], data: message("full") })).code, 250);
    const [, full] = await senderHop.waitForMessages(2);
    const fullDsn = parseDsn(full.raw);
    assert.equal(fullDsn.returnedType, "message/rfc822");
    assert.match(fullDsn.returned, /Message-ID: <full@sender.test>[\s\S]*hello/);
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
    assert.equal(senderHop.messages.length, 2, "no DSN for NOTIFY=NEVER nor for the null sender");
  });

  it("answers 452 4.3.1 when the spool is full, and when it cannot be written", async () => {
    const next = await hop();
    const full = await gateway(policy(`  - { to: "smtp://127.0.0.1:${next.port}" }`, "  spoolLimit: 100B"));
    const reply = await send(full.port, { to: ["b@example.test"], data: message("big", "x".repeat(200)) });
    assert.equal(reply.code, 452);
    assert.match(reply.text, /^4\.3\.1 /);

    // The spool path runs through a regular file: nothing can be created there.
    const broken = await gateway(policy(`  - { to: "smtp://127.0.0.1:${next.port}" }`, "  spool: ./not-a-dir/spool"), {
      files: { "not-a-dir": "a file" },
    });
    const refused = await send(broken.port, { to: ["b@example.test"], data: message("nowhere") });
    assert.equal(refused.code, 452);
    assert.match(refused.text, /^4\.3\.1 /);
    assert.equal(next.messages.length, 0, "nothing acknowledged, nothing delivered");
  });

  it("resumes the spool after a restart", async () => {
    const next = await hop({ down: true });
    const name = `portcullis-spool-${randomBytes(6).toString("hex")}`;
    const text = policy(`  - { to: "smtp://127.0.0.1:${next.port}" }`, `  spool: ../${name}`);
    // Large enough to be stored as a file of its own, in lines short enough for DATA's line limit.
    const largeBody = `${"y".repeat(998)}\r\n`.repeat(300);
    const first = await startGateway(text);
    const spoolDir = join(first.dir, "..", name);
    cleanups.add(() => rm(spoolDir, { recursive: true, force: true }));
    assert.equal((await send(first.port, { to: ["b@example.test"], data: message("r1") })).code, 250);
    assert.equal((await send(first.port, { to: ["b@example.test"], data: message("r2", largeBody) })).code, 250);
    await first.stop();
    next.up();
    const second = await gateway(text);
    const received = await next.waitForMessages(2, 10_000);
    assert.deepEqual(received.map((m) => /Message-ID: <(\w+)@/.exec(m.raw.toString())![1]).sort(), ["r1", "r2"]);
    assert.ok(
      received.some((m) => m.raw.includes(largeBody)),
      "the large body survived the restart",
    );
    await until(() => second.gateway.queue.spool?.entries().length === 0, "the spool to empty");
  });

  it("reuses next-hop connections across messages, with RSET only after a refusal left an envelope open", async () => {
    const next = await hop({ rejectRecipients: { "gone@example.test": "550 5.1.1 no such user" } });
    const gw = await gateway(policy(`  - { to: "smtp://127.0.0.1:${next.port}", connections: 1 }`));
    for (let i = 0; i < 8; i++) {
      assert.equal((await send(gw.port, { to: ["b@example.test"], data: message(`reuse${i}`) })).code, 250);
    }
    await next.waitForMessages(8);
    assert.equal(next.connections(), 1, "8 messages over one connection");
    assert.equal(next.resets(), 0, "the end of data closed each transaction; no RSET needed");
    // Every recipient refused: MAIL FROM is still open on the next hop, so RSET before the next message.
    assert.equal((await send(gw.port, { to: ["gone@example.test"], data: message("refused") })).code, 250);
    await until(() => next.resets() === 1, "an RSET after the refused transaction");
    assert.equal((await send(gw.port, { to: ["b@example.test"], data: message("after") })).code, 250);
    await next.waitForMessages(9);
    assert.equal(next.connections(), 1);
  });
});

describe("proxy mode takes over what the next hop left", () => {
  it("answers 250 when some recipients were delivered, and bounces the failed ones with a DSN", async () => {
    const next = await hop({ rejectRecipients: { "gone@example.test": "550 5.1.1 no such user" } });
    const senderHop = await hop();
    const gw = await gateway(
      policy(`  - { match: { recipientDomain: sender.test }, to: "smtp://127.0.0.1:${senderHop.port}" }
  - { to: "smtp://127.0.0.1:${next.port}" }`).replace("mode: queue", "mode: proxy"),
    );
    const reply = await send(gw.port, { to: ["gone@example.test", "b@example.test"], data: message("p1") });
    assert.equal(reply.code, 250);
    assert.match(reply.text, /delivered as/);
    const [dsn] = await senderHop.waitForMessages(1);
    assert.equal(parseDsn(dsn.raw).status[1]["final-recipient"], "rfc822; gone@example.test");
    // All recipients refused: the refusal passes through, nothing is queued.
    const refused = await send(gw.port, { to: ["gone@example.test"], data: message("p2") });
    assert.equal(refused.code, 550);
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
    assert.equal(senderHop.messages.length, 1);
  });

  it("queues recipients whose next hop is down when others were delivered, and delivers them later", async () => {
    const up = await hop();
    const later = await hop({ down: true });
    const gw = await gateway(
      policy(`  - { match: { recipientDomain: other.test }, to: "smtp://127.0.0.1:${later.port}" }
  - { to: "smtp://127.0.0.1:${up.port}" }`).replace("mode: queue", "mode: proxy"),
    );
    const reply = await send(gw.port, { to: ["b@example.test", "c@other.test"], data: message("p3") });
    assert.equal(reply.code, 250, "the delivered recipient must not get a duplicate from a client retry");
    await up.waitForMessages(1);
    later.up();
    const [received] = await later.waitForMessages(1, 10_000);
    assert.deepEqual(received.to, ["c@other.test"]);
    // Nothing was delivered anywhere: the client keeps the message (4xx).
    later.down();
    const nowhere = await send(gw.port, { to: ["c@other.test"], data: message("p4") });
    assert.equal(nowhere.code, 451);
  });
});

describe("loops", () => {
  it("refuses a message with more Received headers than delivery.maxReceived (554 5.4.6)", async () => {
    const next = await hop();
    const gw = await gateway(policy(`  - { to: "smtp://127.0.0.1:${next.port}" }`, "  maxReceived: 3"));
    const received = "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n".repeat(4);
    const reply = await send(gw.port, { to: ["b@example.test"], data: message("loop", "x\r\n", received) });
    assert.equal(reply.code, 554);
    assert.match(reply.text, /^5\.4\.6 /);
    const fine = await send(gw.port, {
      to: ["b@example.test"],
      data: message("ok", "x\r\n", received.slice(0, received.length / 4)),
    });
    assert.equal(fine.code, 250);
  });
});
