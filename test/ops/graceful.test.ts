/**
 * Acceptance: SIGTERM during a load stops accepting, lets the transactions in flight
 * finish, exits 0, and loses no acknowledged message (a second gateway on the same spool delivers
 * every one); a second SIGTERM exits at once although a client still holds a transaction open and
 * the grace period of the first has long to run.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { eventually } from "../fixtures/eventually.js";
import { startGateway } from "../fixtures/gateway.js";
import { closedPort } from "../fixtures/next-hop.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { refused, sendOne, startChild, startSink } from "./child.js";

const policy = (spool: string, nextHopPort: number) => `
version: 1
server: { hostname: mx.gateway.test }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${nextHopPort}" }]
delivery: { mode: queue, spool: "${spool}", retry: { schedule: [100ms], maxAge: 1h } }
`;

/** A client in the middle of DATA: the header is sent, the body and the final dot are not. */
async function holdInData(port: number): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(port);
  await client.command("EHLO held.test");
  assert.equal((await client.command("MAIL FROM:<held@sender.test>")).code, 250);
  assert.equal((await client.command("RCPT TO:<user@example.test>")).code, 250);
  assert.equal((await client.command("DATA")).code, 354);
  client.write("Message-ID: <held@sender.test>\r\nSubject: in flight\r\n\r\n");
  return client;
}

describe("graceful stop", () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "portcullis-graceful-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("SIGTERM under load: in-flight transactions finish, exit 0, every acknowledged message delivered", async () => {
    const spool = join(dir, "spool");
    // The next hop is down: acknowledged mail stays in the spool across the stop.
    const sink = await startSink();
    const file = join(dir, "load.yaml");
    await writeFile(file, policy(spool, sink.port));
    const gateway = await startChild(file);

    // A message half received when the signal comes; it is finished after the listener closed.
    const held = await holdInData(gateway.port);

    const acknowledged: string[] = [];
    let sent = 0;
    let signalled = false;
    const senders = Array.from({ length: 4 }, async (_, worker) => {
      for (;;) {
        const id = `<load-${worker}-${sent++}@sender.test>`;
        let code: number;
        try {
          code = await sendOne(gateway.port, id);
        } catch {
          return; // refused or closed: the gateway stopped accepting
        }
        if (code === 250) acknowledged.push(id);
        if (!signalled && acknowledged.length >= 20) {
          signalled = true;
          gateway.child.kill("SIGTERM");
        }
      }
    });
    await Promise.all(senders);
    assert.ok(signalled, "the load ran until the signal");
    await eventually(() => refused(gateway.port), "the listener closed");

    held.write("body\r\n.\r\n");
    assert.equal((await held.reply()).code, 250, "the transaction in flight was finished");
    acknowledged.push("<held@sender.test>");
    await held.quit();
    assert.equal(await gateway.exited, 0);

    // Every acknowledged message was in the spool: a gateway on it delivers each one.
    sink.up();
    const resumed = await startGateway(policy(spool, sink.port));
    try {
      await eventually(
        () => acknowledged.every((id) => sink.ids.includes(id)),
        `all ${acknowledged.length} acknowledged messages delivered`,
      );
    } finally {
      await resumed.stop();
      await sink.close();
    }
  });

  test("a second SIGTERM exits at once, even with a message still being received", async () => {
    const file = join(dir, "second.yaml");
    await writeFile(file, policy(join(dir, "spool2"), await closedPort()));
    // A grace far longer than the wait below: only the second signal can end the process in time.
    const gateway = await startChild(file, { args: ["--grace", "60s"] });
    const held = await holdInData(gateway.port);
    gateway.child.kill("SIGTERM");
    await eventually(() => refused(gateway.port), "the listener closed");
    assert.equal(gateway.child.exitCode, null, "draining: waits for the message in flight");
    gateway.child.kill("SIGTERM");
    const ignored = sleep(10_000, "still running 10 s after the second SIGTERM", { ref: false });
    assert.equal(await Promise.race([gateway.exited, ignored]), 0, "exited at once, with code 0");
    await held.waitClosed();
  });

  test("between commands, a draining gateway answers 421: the client retries, nothing was acknowledged", async () => {
    const file = join(dir, "between.yaml");
    await writeFile(file, policy(join(dir, "spool3"), await closedPort()));
    const gateway = await startChild(file);
    const client = await SmtpTestClient.connect(gateway.port);
    await client.command("EHLO idle.test");
    gateway.child.kill("SIGTERM");
    await eventually(() => refused(gateway.port), "the listener closed");
    assert.equal((await client.command("MAIL FROM:<late@sender.test>")).code, 421);
    await client.waitClosed();
    assert.equal(await gateway.exited, 0);
  });
});
