/**
 * The end of a deferral through real sockets: a next hop that only ever answers 4xx keeps a message
 * in the queue until `delivery.retry.maxAge`; then the worker bounces it with an RFC 3464 DSN to the
 * sender's route and the message leaves the spool. Without RET, and with full DSNs allowed for
 * unauthenticated senders, the DSN returns the whole original up to 256 KiB and only its header
 * section beyond (core/queue/worker.ts).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import { message, parseDsn, send, until } from "./helpers.js";

const cleanups = cleanupAfterAll();
const { hop, gateway } = cleanups;

const MAX_AGE_MS = 1000;
/** The worker's documented limit for returning the full original when the client asked for no RET. */
const FULL_RETURN_LIMIT = 256 * 1024;

describe("a message still deferred at maxAge", () => {
  it("is bounced with a failed DSN (4.4.7, the last reply kept), capped content, and leaves the spool", async () => {
    const deferring = await hop({ rejectMail: "451 4.3.0 Try again later" });
    const senderHop = await hop();
    const gw = await gateway(`
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes:
  - { match: { recipientDomain: sender.test }, to: "smtp://127.0.0.1:${senderHop.port}" }
  - { to: "smtp://127.0.0.1:${deferring.port}" }
delivery:
  mode: queue
  retry: { schedule: [200ms], maxAge: ${MAX_AGE_MS}ms }
  # The sender is not authenticated (no SPF record): by default its DSN would return headers only.
  bounces: { unauthenticated: full }
`);
    const sentAt = Date.now();
    const bigBody = `${"x".repeat(99)}\r\n`.repeat(Math.ceil((FULL_RETURN_LIMIT + 10_000) / 101));
    assert.equal((await send(gw.port, { to: ["b@example.test"], data: message("small") })).code, 250);
    assert.equal((await send(gw.port, { to: ["b@example.test"], data: message("big", bigBody) })).code, 250);

    const bounces = await senderHop.waitForMessages(2, 15_000);
    assert.ok(Date.now() - sentAt >= MAX_AGE_MS, "no bounce before maxAge");
    const byOriginal = new Map(
      bounces.map((bounce) => {
        const dsn = parseDsn(bounce.raw);
        return [/Message-ID: <(\w+)@sender\.test>/.exec(dsn.returned)?.[1], { bounce, dsn }];
      }),
    );
    assert.deepEqual([...byOriginal.keys()].sort(), ["big", "small"]);

    for (const { bounce, dsn } of byOriginal.values()) {
      assert.equal(bounce.from, "", "a DSN comes from the null sender");
      assert.deepEqual(bounce.to, ["a@sender.test"]);
      const [perMessage, ...perRecipient] = dsn.status;
      assert.equal(perMessage["reporting-mta"], "dns; gw.test");
      assert.equal(perRecipient.length, 1);
      const [recipient] = perRecipient;
      assert.equal(recipient["final-recipient"], "rfc822; b@example.test");
      assert.equal(recipient.action, "failed");
      // RFC 3463 X.4.7 "delivery time expired" in class 4: a persistent transient condition caused
      // the abandonment; the next hop's own last reply stays in the diagnosis.
      assert.equal(recipient.status, "4.4.7");
      assert.equal(
        recipient["diagnostic-code"],
        "smtp; 451 4.4.7 Delivery time expired; last reply: 451 4.3.0 Try again later",
      );
      assert.equal(recipient["remote-mta"], `dns; 127.0.0.1:${deferring.port}`);
      assert.ok(recipient["last-attempt-date"], "the last attempt is dated");
    }

    const small = byOriginal.get("small")!.dsn;
    assert.equal(small.returnedType, "message/rfc822");
    assert.match(
      small.returned,
      /Message-ID: <small@sender\.test>\r\n\r\nhello\r\n/,
      "under the limit the whole original comes back",
    );
    const big = byOriginal.get("big")!.dsn;
    assert.equal(big.returnedType, "text/rfc822-headers");
    assert.match(big.returned, /^Received: [\s\S]*Message-ID: <big@sender\.test>\r\n\r\n$/);
    assert.ok(bounces.every((bounce) => bounce.raw.length < FULL_RETURN_LIMIT));

    // Retried on the schedule before giving up, and never delivered.
    const attempts = gw.logs.filter((line) => line.event === "delivery");
    assert.ok(attempts.length >= 4, `${attempts.length} attempts: more than one each before the bounce`);
    assert.equal(deferring.messages.length, 0);
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
  });
});
