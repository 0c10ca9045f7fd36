/**
 * TLS through real sockets: STARTTLS command injection (CVE-2011-0411 class), the session starting
 * over after the handshake, TLS 1.2 as the floor, the cipher named in Received, and an implicit-TLS
 * listener. The certificate is made at test time (test/fixtures/tls.ts).
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, beforeEach, describe, test } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { fileURLToPath } from "node:url";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { calls } from "../fixtures/plugins/recorder.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { testCertificate, upgradeToTls } from "../fixtures/tls.js";

const recorder = fileURLToPath(new URL("../fixtures/plugins/recorder.ts", import.meta.url));

/** STARTTLS on `client` (anything in `pipelined` goes in the same segment), then a client over TLS. */
async function startTls(client: SmtpTestClient, pipelined = ""): Promise<SmtpTestClient> {
  client.write(`STARTTLS\r\n${pipelined}`);
  assert.equal((await client.reply()).raw, "220 2.0.0 Ready to start TLS");
  client.socket.removeAllListeners("data");
  return SmtpTestClient.over(await upgradeToTls(client.socket));
}

describe("TLS", () => {
  let relay: Relay;
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    relay = await startRelay(
      (hop) => `
version: 1
server:
  hostname: gw.test
  tls: { cert: ./cert.pem, key: ./key.pem }
  listen:
    - { address: "127.0.0.1:0" }
    - { address: "127.0.0.1:0", implicitTls: true }
relay: { domains: [example.test] }
pipeline: [{ plugin: ${recorder}, id: r }]
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
      { files: testCertificate().files },
    );
    ({ hop, gw } = relay);
  });
  after(() => relay.stop());
  beforeEach(() => {
    calls.length = 0;
  });

  test("a command pipelined after STARTTLS is discarded, not executed inside TLS", async () => {
    const plain = await SmtpTestClient.connect(gw.port);
    assert.ok((await plain.command("EHLO client.test")).lines.includes("STARTTLS"));
    const secure = await startTls(plain, "MAIL FROM:<injected@sender.test>\r\n");
    assert.equal((await secure.command("EHLO client.test")).code, 250);
    // Had the injected MAIL run, this RCPT would be accepted.
    assert.equal((await secure.command("RCPT TO:<b@example.test>")).raw, "503 5.5.1 Error: need MAIL command");
    assert.ok(!calls.includes("r:mail"), calls.join(","));
    await secure.quit();
  });

  test("after TLS the session starts over: HELO and the transaction are forgotten; cipher in Received", async () => {
    const plain = await SmtpTestClient.connect(gw.port);
    await plain.command("EHLO before.test");
    assert.equal((await plain.command("MAIL FROM:<a@sender.test>")).code, 250);
    const secure = await startTls(plain);
    assert.equal((await secure.command("RCPT TO:<b@example.test>")).raw, "503 5.5.1 Error: send HELO/EHLO first");
    const ehlo = await secure.command("EHLO before.test");
    assert.ok(!ehlo.lines.includes("STARTTLS"));
    const result = await secure.transaction({
      helo: "after.test",
      from: "a@sender.test",
      to: ["b@example.test"],
      data: "Subject: tls\r\n\r\nbody\r\n",
    });
    assert.equal(result.data?.code, 250);
    await secure.quit();
    // The plaintext transaction was abandoned; helo hooks ran again for the TLS session.
    const outcomes = gw.transactions().slice(-2);
    assert.deepEqual(
      outcomes.map((t) => [t.outcome, t.tls]),
      [
        ["aborted", null],
        ["accepted", "TLSv1.3"],
      ],
    );
    assert.equal(calls.filter((call) => call === "r:helo").length, 2);
    const [message] = await hop.waitForMessages(1);
    const received = message.raw.toString("latin1").split("\r\n\r\n")[0];
    assert.match(
      received,
      /^Received: from after\.test \(\[127\.0\.0\.1\]\) by gw\.test\r\n\twith ESMTPS \(TLSv1\.3 TLS_/,
    );
    hop.messages.length = 0;
  });

  test("TLS 1.2 is the floor: a TLS 1.1 client is refused by the server, a TLS 1.2 client is served", async () => {
    const attempt = async (version: "TLSv1.1" | "TLSv1.2"): Promise<string> => {
      const plain = await SmtpTestClient.connect(gw.port);
      await plain.command("EHLO client.test");
      plain.write("STARTTLS\r\n");
      await plain.reply();
      plain.socket.removeAllListeners("data");
      // SECLEVEL=0 lets this client offer TLS 1.1 at all: the refusal must come from the server.
      const options = { minVersion: "TLSv1" as const, maxVersion: version, ciphers: "DEFAULT@SECLEVEL=0" };
      try {
        const secure = await upgradeToTls(plain.socket, options);
        const protocol = secure.getProtocol() ?? "none";
        secure.destroy();
        return protocol;
      } catch (err) {
        plain.destroy();
        return (err as Error).message;
      }
    };
    assert.match(await attempt("TLSv1.1"), /alert protocol version/);
    assert.equal(await attempt("TLSv1.2"), "TLSv1.2");
  });

  test("an implicit-TLS listener speaks TLS from the first byte", async () => {
    const port = gw.gateway.addresses()[1].port;
    const socket = tlsConnect({ port, host: "127.0.0.1", servername: "gw.test", rejectUnauthorized: false });
    await once(socket, "secureConnect");
    const client = SmtpTestClient.over(socket);
    assert.match((await client.reply()).raw, /^220 gw\.test ESMTP/);
    const ehlo = await client.command("EHLO client.test");
    assert.ok(!ehlo.lines.includes("STARTTLS"));
    const result = await client.transaction({
      from: "a@sender.test",
      to: ["b@example.test"],
      data: "Subject: 465\r\n\r\nbody\r\n",
    });
    assert.equal(result.data?.code, 250);
    await client.quit();
    const [message] = await hop.waitForMessages(1);
    assert.match(message.raw.toString("latin1"), /with ESMTPS \(TLSv1\.3 TLS_/);
    hop.messages.length = 0;
  });
});

test("without server.tls STARTTLS is neither offered nor accepted", async () => {
  const gw = await startGateway("version: 1\nroutes: [{ to: discard }]\n");
  try {
    const client = await SmtpTestClient.connect(gw.port);
    assert.ok(!(await client.command("EHLO client.test")).lines.includes("STARTTLS"));
    assert.equal((await client.command("STARTTLS")).raw, "500 5.5.2 Error: command not recognized");
    await client.quit();
  } finally {
    await gw.stop();
  }
});
