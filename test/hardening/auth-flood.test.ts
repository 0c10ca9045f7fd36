/**
 * AUTH under parallel attack through real sockets (STARTTLS submission listener): bursts of
 * parallel wrong passwords from one IP are locked out however they interleave, on the memory
 * store and on a real Redis; the lockout ends with failureWindow; and attempts beyond the per-IP
 * in-flight limit or the hash queue are answered 454 4.7.0 at once.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { hashPassword } from "../../core/smtp/auth/index.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { startRedis, type TestRedis } from "../fixtures/redis.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { testCertificate, upgradeToTls } from "../fixtures/tls.js";

/** Cheap scrypt parameters where only the count of checks matters. */
const FAST = { N: 1024, r: 8, p: 1 };
const LOCKED = "454 4.7.0 Too many failed authentication attempts, try again later";
const BUSY = "454 4.7.0 Too many authentication attempts at once, try again later";
const INVALID = "535 5.7.8 Authentication credentials invalid";

/** A client from `ip` (a PROXY line: the listener trusts loopback to send one), past STARTTLS and EHLO. */
async function secureClient(port: number, ip: string): Promise<SmtpTestClient> {
  const plain = await SmtpTestClient.connect(port, { proxy: `PROXY TCP4 ${ip} 127.0.0.1 40000 587` });
  await plain.command("EHLO mua.test");
  assert.equal((await plain.command("STARTTLS")).code, 220);
  plain.socket.removeAllListeners("data");
  const client = SmtpTestClient.over(await upgradeToTls(plain.socket));
  await client.command("EHLO mua.test");
  return client;
}

function authPlain(client: SmtpTestClient, user: string, password: string) {
  return client.command(`AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString("base64")}`);
}

function tally(replies: ReadonlyArray<{ raw: string }>): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const { raw } of replies) counts[raw] = (counts[raw] ?? 0) + 1;
  return counts;
}

async function submissionGateway(auth: string, options: { state?: string; users: string }): Promise<TestGateway> {
  return startGateway(
    `
version: 1
server:
  hostname: gw.test
  tls: { cert: ./cert.pem, key: ./key.pem }
  listen: [{ address: "127.0.0.1:0", submission: true }]
  proxyProtocol: true
  limits: { maxConnectionsPerIp: 100 }
  auth: { users: ./users, refusalDelay: 0s, ${auth} }
state: { store: ${options.state ?? "memory"} }
relay: { domains: [example.test] }
routes: [{ to: discard }]
`,
    { files: { ...testCertificate().files, users: options.users } },
  );
}

describe("AUTH lockout under parallel bursts", () => {
  let redis: TestRedis;
  before(async () => {
    redis = await startRedis();
  });
  after(() => redis.stop());

  for (const store of ["memory", "redis"] as const) {
    test(`${store}: 3 bursts of 19 parallel wrong AUTH from one IP are mostly 454; the right password works after failureWindow`, async () => {
      const window = 2000;
      const gw = await submissionGateway(
        // Room for every attempt in flight and in the hash queue: only the failure count may stop them.
        `maxFailures: 5, failureWindow: ${window}ms, maxInFlightPerIp: 100, hashQueue: 100`,
        {
          state: store === "memory" ? "memory" : `{ redis: "${redis.url}" }`,
          users: `alice:${await hashPassword("alice-pw", FAST)}\n`,
        },
      );
      try {
        // Connected and past TLS first, so each burst's attempts really arrive together.
        const bursts = await Promise.all(
          Array.from({ length: 3 }, () =>
            Promise.all(Array.from({ length: 19 }, () => secureClient(gw.port, "198.51.100.1"))),
          ),
        );
        const replies = [];
        for (const burst of bursts) {
          replies.push(...(await Promise.all(burst.map((client) => authPlain(client, "alice", "guess")))));
        }
        const counts = tally(replies);
        assert.ok((counts[LOCKED] ?? 0) >= 45, JSON.stringify(counts));
        assert.deepEqual(Object.keys(counts).sort(), [INVALID, LOCKED].sort());
        const late = await secureClient(gw.port, "198.51.100.1");
        assert.equal((await authPlain(late, "alice", "alice-pw")).raw, LOCKED, "locked: not even checked");

        await sleep(window + 300);
        assert.equal((await authPlain(late, "alice", "alice-pw")).raw, "235 2.7.0 Authentication successful");
        await Promise.all([...bursts.flat(), late].map((client) => client.quit()));
      } finally {
        await gw.stop();
      }
    });
  }
});

describe("AUTH load limits on the wire", () => {
  let gw: TestGateway;
  before(async () => {
    // A real scrypt cost, so a check lasts long enough for the others to arrive while it runs.
    gw = await submissionGateway(
      "maxFailures: 50, maxFailuresPerUser: 50, maxInFlightPerIp: 2, hashConcurrency: 1, hashQueue: 3",
      { users: `alice:${await hashPassword("alice-pw")}\n` },
    );
  });
  after(() => gw.stop());

  test("one IP with more attempts under check than maxInFlightPerIp gets 454 4.7.0 for the rest", async () => {
    const clients = await Promise.all(Array.from({ length: 6 }, () => secureClient(gw.port, "198.51.100.7")));
    const counts = tally(await Promise.all(clients.map((client) => authPlain(client, "alice", "guess"))));
    assert.ok((counts[BUSY] ?? 0) >= 3, JSON.stringify(counts));
    assert.ok((counts[INVALID] ?? 0) <= 3, JSON.stringify(counts));
    await Promise.all(clients.map((client) => client.quit()));
  });

  test("attempts from many IPs beyond the hash queue get 454 4.7.0 at once", async () => {
    const clients = await Promise.all(
      Array.from({ length: 10 }, (_, i) => secureClient(gw.port, `203.0.113.${i + 1}`)),
    );
    const counts = tally(await Promise.all(clients.map((client) => authPlain(client, "alice", "guess"))));
    assert.ok((counts[BUSY] ?? 0) >= 3, JSON.stringify(counts));
    assert.equal((counts[BUSY] ?? 0) + (counts[INVALID] ?? 0), 10, JSON.stringify(counts));
    const busy = gw.logs.filter((line) => line.event === "auth" && line.refused === "busy");
    assert.ok(busy.length >= 3);
    await Promise.all(clients.map((client) => client.quit()));
  });
});
