/**
 * the default: authenticated clients (like relay.networks clients) skip SPF enforcement. One
 * gateway, two listeners: the same sender whose SPF fails everywhere is refused on the MX listener
 * and accepted from the authenticated user on the submission listener, where SPF is still recorded.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { hashPassword } from "../../core/smtp/auth/index.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { testCertificate, upgradeToTls } from "../fixtures/tls.js";

let relay: DnsRelay;
let mxPort: number;

before(async () => {
  const users = `alice@example.test:${await hashPassword("alice-pw", { N: 1024, r: 8, p: 1 })}`;
  relay = await startDnsRelay(
    { "example.test": { TXT: ["v=spf1 -all"] } },
    (hop) => `
version: 1
server:
  hostname: gw.test
  tls: { cert: ./cert.pem, key: ./key.pem }
  listen:
    - { address: "127.0.0.1:0", submission: true }
    - { address: "127.0.0.1:0" }
  auth: { users: ./users }
dns: { timeout: 500ms }
relay: { domains: [example.test] }
pipeline:
  - plugin: spf
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
    { files: { ...testCertificate().files, users } },
  );
  mxPort = relay.gw.gateway.addresses()[1].port;
});
after(() => relay.stop());

test("an outsider on the MX listener is refused for a sender whose SPF fails", async () => {
  const client = await SmtpTestClient.connect(mxPort);
  await client.command("EHLO outside.test");
  assert.match((await client.command("MAIL FROM:<alice@example.test>")).raw, /^550 5\.7\.23 /);
  await client.quit();
});

test("the authenticated user with the same sender is accepted; SPF fail is recorded, not enforced", async () => {
  const plain = await SmtpTestClient.connect(relay.gw.port);
  await plain.command("EHLO mua.test");
  assert.equal((await plain.command("STARTTLS")).code, 220);
  plain.socket.removeAllListeners("data");
  const client = SmtpTestClient.over(await upgradeToTls(plain.socket));
  await client.command("EHLO mua.test");
  const auth = await client.command(`AUTH PLAIN ${Buffer.from("\0alice@example.test\0alice-pw").toString("base64")}`);
  assert.equal(auth.code, 235);
  const result = await client.transaction({
    from: "alice@example.test",
    to: ["friend@elsewhere.test"],
    data: "From: <alice@example.test>\r\nSubject: hi\r\n\r\nhello\r\n",
  });
  assert.equal(result.mail.code, 250);
  assert.equal(result.data?.code, 250);
  await client.quit();
  const summary = relay.gw.transactions().at(-1)!;
  const spf = (summary.trace as Array<{ plugin: string; phase: string; verdict: string | null }>).find(
    (entry) => entry.plugin === "spf" && entry.phase === "mail",
  );
  assert.ok(spf, "spf ran at MAIL for the authenticated user");
  assert.equal(spf.verdict, null);
});
