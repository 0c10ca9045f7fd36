/**
 * A PROXY v2 header from a peer outside `server.proxyProtocol` is refused: the claimed address is
 * never adopted, the peer's own address decides relay access, and nothing is relayed for it.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { proxyV2Header } from "../hardening/proxy-header.js";

describe("PROXY v2 from an untrusted peer", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startGateway(`
version: 1
server: { hostname: gw.test, proxyProtocol: [192.0.2.0/24] }
relay: { domains: [example.test], networks: [192.0.2.0/24] }
routes: [{ to: discard }]
`);
  });
  after(() => gw.stop());

  test("the binary header is not read as a client address; loopback stays loopback", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    assert.equal(client.greeting.code, 220, "an untrusted peer is greeted at once (no header expected)");
    client.write(proxyV2Header({ address: "192.0.2.10", port: 40000 }, { address: "192.0.2.1", port: 25 }));
    // Read as SMTP, the v2 signature is two empty lines, a NUL line and "QUIT\n": three 500s, then
    // 221 and the connection closes; the address block after it is never looked at.
    const replies: string[] = [];
    try {
      for (;;) replies.push((await client.reply()).raw);
    } catch {
      // the server closed the connection
    }
    assert.equal(client.closed, true);
    assert.deepEqual(replies, [
      "500 5.5.2 Error: command not recognized",
      "500 5.5.2 Error: command not recognized",
      "500 5.5.2 Error: command not recognized",
      "221 2.0.0 Bye",
    ]);
    const connects = gw.logs.filter((line) => line.event === "connect").map((line) => line.client);
    assert.deepEqual(connects, ["127.0.0.1"]);
  });

  test("a trusted-looking v1 line from loopback is an unknown command too", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    assert.equal((await client.command("PROXY TCP4 192.0.2.10 192.0.2.1 40000 25")).code, 500);
    await client.command("EHLO client.test");
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
    assert.ok((await client.command("RCPT TO:<x@other.test>")).code >= 500);
    await client.quit();
  });
});
