/**
 * A submission listener through real sockets: AUTH only after STARTTLS, PLAIN and LOGIN against a
 * users file of scrypt hashes, authenticated users relay, senders limited to the user's own
 * addresses (any address with `senders: any`), failed attempts refused, counted and locked out; plus
 * `portcullis passwd`.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { gatewayEndpoints, startOpsServer } from "../../core/observability/http.js";
import { hashPassword, parseUsersFile, verifyPassword } from "../../core/smtp/auth/index.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { testCertificate, upgradeToTls } from "../fixtures/tls.js";
import { scrape } from "../ops/scrape.js";

/** Cheap scrypt parameters: these tests check behaviour, not cost. */
const FAST = { N: 1024, r: 8, p: 1 };
const b64 = (text: string) => Buffer.from(text).toString("base64");

async function secureClient(port: number): Promise<SmtpTestClient> {
  const plain = await SmtpTestClient.connect(port);
  await plain.command("EHLO mua.test");
  assert.equal((await plain.command("STARTTLS")).code, 220);
  plain.socket.removeAllListeners("data");
  const client = SmtpTestClient.over(await upgradeToTls(plain.socket));
  await client.command("EHLO mua.test");
  return client;
}

async function authPlain(client: SmtpTestClient, user: string, password: string) {
  return client.command(`AUTH PLAIN ${b64(`\0${user}\0${password}`)}`);
}

describe("submission listener", () => {
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    hop = await startNextHop();
    const users = [
      "# test users",
      `alice@example.test:${await hashPassword("alice-pw", FAST)}`,
      `bob:${await hashPassword("bob-pw", FAST)}:bob@corp.test,@bob.test`,
    ].join("\n");
    gw = await startGateway(
      `
version: 1
server:
  hostname: gw.test
  tls: { cert: ./cert.pem, key: ./key.pem }
  listen: [{ address: "127.0.0.1:0", submission: true }]
  auth: { users: ./users, maxFailures: 3, failureWindow: 10m, refusalDelay: 0s }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
      { files: { ...testCertificate().files, users } },
    );
  });
  after(async () => {
    await gw.stop();
    await hop.close();
  });

  test("before TLS: AUTH is neither offered nor accepted, and MAIL asks for STARTTLS", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    const ehlo = await client.command("EHLO mua.test");
    assert.ok(ehlo.lines.includes("STARTTLS"));
    assert.ok(!ehlo.lines.some((line) => line.startsWith("AUTH")), ehlo.lines.join("|"));
    assert.equal((await authPlain(client, "alice@example.test", "alice-pw")).code, 500);
    assert.equal(
      (await client.command("MAIL FROM:<alice@example.test>")).raw,
      "530 5.7.0 Must issue a STARTTLS command first",
    );
    await client.quit();
  });

  test("after TLS: AUTH PLAIN/LOGIN offered; good credentials relay anywhere as ESMTPSA", async () => {
    const client = await secureClient(gw.port);
    assert.match((await client.command("MAIL FROM:<alice@example.test>")).raw, /^530 5\.7\.0 /);
    assert.equal(
      (await authPlain(client, "alice@example.test", "alice-pw")).raw,
      "235 2.7.0 Authentication successful",
    );
    const result = await client.transaction({
      from: "alice@example.test",
      to: ["someone@elsewhere.test"],
      data: "Subject: submitted\r\n\r\nhello\r\n",
    });
    assert.equal(result.data?.code, 250);
    assert.ok(result.ehlo.lines.includes("AUTH PLAIN LOGIN") === false, "AUTH is not offered again once authenticated");
    await client.quit();
    const [message] = await hop.waitForMessages(1);
    assert.deepEqual(message.to, ["someone@elsewhere.test"]);
    assert.match(message.raw.toString("latin1"), /with ESMTPSA \(TLSv1\.3 /);
  });

  test("AUTH LOGIN works too; the EHLO after TLS offers both mechanisms", async () => {
    const plain = await SmtpTestClient.connect(gw.port);
    await plain.command("EHLO mua.test");
    await plain.command("STARTTLS");
    plain.socket.removeAllListeners("data");
    const client = SmtpTestClient.over(await upgradeToTls(plain.socket));
    assert.ok((await client.command("EHLO mua.test")).lines.includes("AUTH PLAIN LOGIN"));
    assert.equal((await client.command("AUTH LOGIN")).code, 334);
    assert.equal((await client.command(b64("bob"))).code, 334);
    assert.equal((await client.command(b64("bob-pw"))).raw, "235 2.7.0 Authentication successful");
    await client.quit();
  });

  test("a sender that is not the user's own is refused with 553 5.7.1", async () => {
    const alice = await secureClient(gw.port);
    await authPlain(alice, "alice@example.test", "alice-pw");
    assert.equal(
      (await alice.command("MAIL FROM:<bob@corp.test>")).raw,
      "553 5.7.1 Sender address not owned by the authenticated user",
    );
    assert.equal((await alice.command("MAIL FROM:<Alice@EXAMPLE.test>")).code, 250);
    await alice.quit();
    const bob = await secureClient(gw.port);
    await authPlain(bob, "bob", "bob-pw");
    assert.equal((await bob.command("MAIL FROM:<bob@corp.test>")).code, 250);
    await bob.command("RSET");
    assert.equal((await bob.command("MAIL FROM:<anyone@bob.test>")).code, 250);
    await bob.command("RSET");
    assert.match((await bob.command("MAIL FROM:<alice@example.test>")).raw, /^553 5\.7\.1 /);
    await bob.quit();
    assert.equal(hop.messages.length, 1, "only the earlier test's message arrived");
  });

  // Last in this suite: it locks 127.0.0.1 out.
  test("bad credentials get 535 5.7.8 and are counted; past maxFailures even good ones get 454 4.7.0", async () => {
    const client = await secureClient(gw.port);
    for (const [user, password] of [
      ["alice@example.test", "wrong"],
      ["nobody", "alice-pw"],
      ["bob", ""],
    ]) {
      assert.equal((await authPlain(client, user, password)).raw, "535 5.7.8 Authentication credentials invalid");
    }
    assert.equal(
      (await authPlain(client, "alice@example.test", "alice-pw")).raw,
      "454 4.7.0 Too many failed authentication attempts, try again later",
    );
    await client.quit();
    const failures = gw.logs.filter((line) => line.event === "auth" && line.ok === false);
    assert.equal(failures.length, 4);
    // Counted for /metrics too; the locked-out attempt was refused unchecked, so not a failure.
    const ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
    try {
      const metrics = await scrape(`http://127.0.0.1:${ops.address.port}`);
      assert.equal(metrics.value("portcullis_auth_failures_total"), 3);
      assert.equal(metrics.value("portcullis_auth_refused_total", { reason: "locked-ip" }), 1);
    } finally {
      await ops.close();
    }
  });
});

describe("submission listener with server.auth.senders: any", () => {
  test("an authenticated user may send as an address that is not theirs", async () => {
    const hop = await startNextHop();
    const users = `alice@example.test:${await hashPassword("alice-pw", FAST)}`;
    const gw = await startGateway(
      `
version: 1
server:
  hostname: gw.test
  tls: { cert: ./cert.pem, key: ./key.pem }
  listen: [{ address: "127.0.0.1:0", submission: true }]
  auth: { users: ./users, senders: any }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
      { files: { ...testCertificate().files, users } },
    );
    try {
      const client = await secureClient(gw.port);
      assert.equal((await authPlain(client, "alice@example.test", "alice-pw")).code, 235);
      const result = await client.transaction({
        from: "bob@corp.test",
        to: ["someone@elsewhere.test"],
        data: "Subject: on behalf\r\n\r\nhello\r\n",
      });
      assert.equal(result.mail.raw, "250 2.1.0 Accepted");
      assert.equal(result.data?.code, 250);
      await client.quit();
      const [message] = await hop.waitForMessages(1);
      assert.equal(message.from, "bob@corp.test");
    } finally {
      await gw.stop();
      await hop.close();
    }
  });
});

describe("users file and passwd", () => {
  test("hashes verify only with their password; a malformed hash never verifies", async () => {
    const hash = await hashPassword("pw", FAST);
    assert.match(hash, /^scrypt\$1024\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    assert.equal(await verifyPassword("pw", hash), true);
    assert.equal(await verifyPassword("pw ", hash), false);
    assert.equal(await verifyPassword("pw", "plain-text"), false);
  });

  test("a users file line that is not name:hash[:senders] names its line", async () => {
    const good = await hashPassword("pw", FAST);
    assert.throws(() => parseUsersFile(`# c\nalice:${good}\nbob\n`, "users"), /users:3: expected name:hash/);
    assert.throws(() => parseUsersFile("carol:md5$abc\n", "users"), /users:1: the hash of "carol"/);
    assert.throws(() => parseUsersFile(`a:${good}\nA:${good}\n`, "users"), /users:2: "A" is listed twice/);
    assert.deepEqual(parseUsersFile(`Dave:${good}:Dave@X.test, @y.test\n`).get("dave")?.senders, [
      "dave@x.test",
      "@y.test",
    ]);
  });

  test("portcullis passwd NAME reads the password from stdin and prints a users-file line", async () => {
    const bin = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));
    const line = execFileSync(process.execPath, [bin, "passwd", "erin"], { input: "erin-pw\n" }).toString().trim();
    const users = parseUsersFile(line);
    assert.equal(await verifyPassword("erin-pw", users.get("erin")?.hash ?? ""), true);
  });
});
