/**
 * An `lmtp://` route through a gateway: LMTP answers the end of DATA once per recipient (RFC 2033),
 * so one message can be delivered to one recipient and refused for another. Each recipient must
 * get its own outcome: in proxy mode the client's reply and a DSN for the refused one, in queue
 * mode a DSN naming only the refused one.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { message, parseDsn, send, until } from "../queue/helpers.js";

const cleanups = cleanupAfterAll();
const { hop, gateway } = cleanups;

const REFUSAL = "550 5.2.1 Mailbox disabled";

function policy(mode: "proxy" | "queue", lmtp: NextHop, senderHop: NextHop): string {
  return `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes:
  - { match: { recipientDomain: sender.test }, to: "smtp://127.0.0.1:${senderHop.port}" }
  - { to: "lmtp://127.0.0.1:${lmtp.port}" }
delivery: { mode: ${mode} }
`;
}

/** The LMTP next hop refuses `refused@example.test` at DATA and takes everyone else. */
function lmtpHop(): Promise<NextHop> {
  return hop({ lmtp: true, rejectDataRecipients: { "refused@example.test": REFUSAL } });
}

/** The one DSN the sender's route received: it reports exactly the refused recipient with the LMTP reply. */
async function assertBouncedRefusedOnly(senderHop: NextHop, lmtp: NextHop, id: string): Promise<void> {
  const [bounce] = await senderHop.waitForMessages(1);
  assert.equal(bounce.from, "");
  assert.deepEqual(bounce.to, ["a@sender.test"]);
  const dsn = parseDsn(bounce.raw);
  const [, ...perRecipient] = dsn.status;
  assert.deepEqual(
    perRecipient.map((r) => [r["final-recipient"], r.action, r.status, r["diagnostic-code"], r["remote-mta"]]),
    [["rfc822; refused@example.test", "failed", "5.2.1", `smtp; ${REFUSAL}`, `dns; 127.0.0.1:${lmtp.port}`]],
  );
  assert.match(dsn.returned, new RegExp(`Message-ID: <${id}@sender\\.test>`));
}

describe("lmtp:// route through the gateway", () => {
  it("proxy mode: 250 for the delivered recipient, a DSN for the one LMTP refused at DATA", async () => {
    const lmtp = await lmtpHop();
    const senderHop = await hop();
    const gw = await gateway(policy("proxy", lmtp, senderHop));
    const reply = await send(gw.port, { to: ["taken@example.test", "refused@example.test"], data: message("lp1") });
    assert.equal(reply.code, 250);
    assert.match(reply.text, /^2\.0\.0 Ok: delivered as /);
    assert.deepEqual(
      lmtp.messages.map((m) => m.to),
      [["taken@example.test", "refused@example.test"]],
      "one transaction carried both recipients",
    );
    await assertBouncedRefusedOnly(senderHop, lmtp, "lp1");

    // When LMTP refuses every recipient, the client hears that refusal itself and nothing is queued.
    const refused = await send(gw.port, { to: ["refused@example.test"], data: message("lp2") });
    assert.deepEqual(refused, { code: 550, text: "5.2.1 Mailbox disabled" });
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
    assert.equal(senderHop.messages.length, 1, "the client was told; no DSN for the refusal it heard");
  });

  it("queue mode: delivers the accepted recipient and bounces only the refused one", async () => {
    const lmtp = await lmtpHop();
    const senderHop = await hop();
    const gw = await gateway(policy("queue", lmtp, senderHop));
    const reply = await send(gw.port, { to: ["taken@example.test", "refused@example.test"], data: message("lq1") });
    assert.equal(reply.code, 250);
    assert.match(reply.text, /^2\.0\.0 Ok: queued as /);
    await assertBouncedRefusedOnly(senderHop, lmtp, "lq1");
    await until(() => gw.gateway.queue.spool?.entries().length === 0, "the spool to empty");
    assert.equal(lmtp.messages.length, 1, "delivered once: the accepted recipient is not tried again");
  });
});
