/**
 * One test per resource limit, through a real socket, asserting the exact reply code and enhanced
 * code. Limits are configured tiny (two recipients, a 300-byte header…) so every test hits its
 * limit at once; assertions are on replies, never on elapsed time. The idle and DATA timeouts are
 * short but not tiny: every other test's client must get through a whole transaction inside them
 * on a loaded machine (at 200 ms one did not, once).
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { type SmtpReplyLine, SmtpTestClient } from "../fixtures/smtp-client.js";

const MAX_SIZE = 2000;

/** Waits until every session of the gateway is closed (connections end asynchronously). */
async function settled(gw: TestGateway): Promise<void> {
  for (let i = 0; i < 200 && gw.gateway.openSessions().sessions > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.deepEqual(gw.gateway.openSessions(), { sessions: 0, ipSlots: 0 });
}

/** EHLO, MAIL, RCPT, DATA; returns the client at the 354. */
async function atData(port: number): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(port);
  await client.command("EHLO client.test");
  assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
  assert.equal((await client.command("RCPT TO:<b@example.test>")).code, 250);
  assert.equal((await client.command("DATA")).code, 354);
  return client;
}

/** Reads replies until the connection closes; returns them all. */
async function repliesUntilClose(client: SmtpTestClient): Promise<SmtpReplyLine[]> {
  const replies: SmtpReplyLine[] = [];
  for (;;) {
    try {
      replies.push(await client.reply());
    } catch {
      return replies;
    }
  }
}

describe("limits", () => {
  let gw: TestGateway;

  before(async () => {
    gw = await startGateway(`
version: 1
server:
  hostname: gw.test
  limits:
    maxMessageSize: ${MAX_SIZE}
    maxRecipients: 2
    maxConnectionsPerIp: 3
    idleTimeout: 1s
    dataTimeout: 1500ms
    maxTransactionsPerConnection: 1
    maxHeaderSize: 300
    maxHeaderCount: 5
    maxCommandLength: 512
    maxErrors: 3
relay: { domains: [example.test] }
routes: [{ to: discard }]
`);
  });
  after(async () => {
    await settled(gw);
    await gw.stop();
  });

  test("SIZE is advertised; a larger SIZE= gets 552 5.3.4", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    const ehlo = await client.command("EHLO client.test");
    assert.ok(ehlo.lines.includes(`SIZE ${MAX_SIZE}`), ehlo.lines.join("|"));
    const mail = await client.command(`MAIL FROM:<a@sender.test> SIZE=${MAX_SIZE + 1}`);
    assert.equal(mail.code, 552);
    assert.match(mail.raw, /^552 5\.3\.4 /);
    await client.quit();
  });

  test("a message over maxMessageSize gets 552 5.3.4", async () => {
    const client = await atData(gw.port);
    client.write(`Subject: big\r\n\r\n${"x".repeat(MAX_SIZE)}\r\n.\r\n`);
    assert.equal((await client.reply()).raw, "552 5.3.4 Message size exceeds fixed maximum message size");
    await client.quit();
  });

  test("a recipient over maxRecipients gets 452 4.5.3", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<a@sender.test>");
    assert.equal((await client.command("RCPT TO:<1@example.test>")).code, 250);
    assert.equal((await client.command("RCPT TO:<2@example.test>")).code, 250);
    assert.equal((await client.command("RCPT TO:<3@example.test>")).raw, "452 4.5.3 Too many recipients");
    await client.quit();
  });

  test("a command line over maxCommandLength gets 500 5.5.2 and the connection closes", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    assert.equal((await client.command(`EHLO ${"a".repeat(600)}`)).raw, "500 5.5.2 Line too long");
    await client.waitClosed();
  });

  test("a header section over maxHeaderSize gets 552 5.3.4", async () => {
    const client = await atData(gw.port);
    client.write(`Subject: x\r\nX-Long: ${"h".repeat(400)}\r\n\r\nbody\r\n.\r\n`);
    assert.equal((await client.reply()).raw, "552 5.3.4 Message header section too large");
    await client.quit();
  });

  test("more header fields than maxHeaderCount get 552 5.3.4", async () => {
    const client = await atData(gw.port);
    const fields = [1, 2, 3, 4, 5, 6].map((n) => `X-H${n}: ${n}\r\n`).join("");
    client.write(`${fields}\r\nbody\r\n.\r\n`);
    assert.equal((await client.reply()).raw, "552 5.3.4 Too many header fields");
    await client.quit();
  });

  test("a transaction over maxTransactionsPerConnection gets 421 4.7.0 and a close", async () => {
    const client = await atData(gw.port);
    client.write("Subject: one\r\n\r\nbody\r\n.\r\n");
    assert.equal((await client.reply()).code, 250);
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).raw, "421 4.7.0 Too many transactions, reconnect");
    await client.waitClosed();
  });

  test("a connection over maxConnectionsPerIp gets 421 4.7.0", async () => {
    const held = await Promise.all([1, 2, 3].map(() => SmtpTestClient.connect(gw.port)));
    const extra = await SmtpTestClient.connect(gw.port);
    assert.equal(extra.greeting.raw, "421 4.7.0 Too many connections from your address");
    await extra.waitClosed();
    await Promise.all(held.map((client) => client.quit()));
    await settled(gw);
  });

  test("an idle client gets 421 4.4.2 after idleTimeout", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    assert.equal((await client.reply()).raw, "421 4.4.2 Idle timeout, closing connection");
    await client.waitClosed();
  });

  test("a sender trickling DATA past dataTimeout gets 421 4.4.2, though never idle", async () => {
    const client = await atData(gw.port);
    client.write("Subject: slow\r\n\r\n");
    // One byte well inside every idle period, for as long as the connection lasts.
    const trickle = setInterval(() => client.write("x"), 100);
    try {
      assert.equal((await client.reply()).raw, "421 4.4.2 DATA timeout, closing connection");
    } finally {
      clearInterval(trickle);
    }
    client.destroy();
    await settled(gw);
    assert.equal(gw.transactions().at(-1)?.outcome, "aborted");
  });

  test("maxErrors error replies end the session with 421 4.7.0", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    client.write("FOO\r\nMAIL FROM:<bad\r\nBAR\r\nNOOP\r\n");
    const replies = await repliesUntilClose(client);
    assert.deepEqual(
      replies.map((reply) => reply.raw.slice(0, 9)),
      ["500 5.5.2", "501 5.1.7", "500 5.5.2", "421 4.7.0"],
    );
    assert.equal(replies.at(-1)?.raw, "421 4.7.0 Too many errors, closing connection");
  });
});

describe("connection limits across the gateway", () => {
  test("a connection over maxClients gets 421 4.7.0; unknown commands end with 421 4.7.0", async () => {
    const gw = await startGateway("version: 1\nserver: { limits: { maxClients: 2 } }\nroutes: [{ to: discard }]\n");
    try {
      const held = await Promise.all([1, 2].map(() => SmtpTestClient.connect(gw.port)));
      const extra = await SmtpTestClient.connect(gw.port);
      assert.equal(extra.greeting.raw, "421 4.7.0 Too many connections, try again later");
      await extra.waitClosed();

      // smtp-server's own limit of ten unrecognised commands, with our enhanced code.
      const [client] = held;
      for (let i = 0; i < 9; i++) assert.equal((await client.command(`XYZZY${i}`)).code, 500);
      assert.equal((await client.command("XYZZY")).raw, "421 4.7.0 Too many unrecognized commands");
      await client.waitClosed();
      await held[1].quit();
      await settled(gw);
    } finally {
      await gw.stop();
    }
  });
});
