/**
 * concurrency: simultaneous connections per client IP through real sockets, on the memory store
 * and on a real Redis. Slots must come back however a connection ends: QUIT, reset, idle timeout,
 * and — through the lease on Redis — a gateway killed while holding them.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { startGatewayProcess } from "../fixtures/gateway-process.js";
import { startRedis, type TestRedis } from "../fixtures/redis.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const connect = (port: number, ip: string) =>
  SmtpTestClient.connect(port, { proxy: `PROXY TCP4 ${ip} 192.0.2.1 40000 25` });

function policy(store: string, lease = "10m"): string {
  return `
version: 1
server: { hostname: gw.test, proxyProtocol: true, limits: { idleTimeout: 1s } }
state: { store: ${store} }
relay: { domains: [example.test] }
pipeline:
  - plugin: concurrency
    limits: [{ key: client.ip, max: 12 }, { key: client.net, max: 14 }]
    lease: ${lease}
routes: [{ to: discard }]
`;
}

describe("concurrency slots", () => {
  let redis: TestRedis;
  before(async () => {
    redis = await startRedis();
  });
  after(() => redis.stop());

  for (const store of ["memory", "redis"] as const) {
    test(`${store}: the limit holds, and every slot comes back after QUIT, reset and timeout`, async () => {
      let gw: TestGateway | undefined;
      try {
        gw = await startGateway(policy(store === "memory" ? "memory" : `{ redis: "${redis.url}" }`));
        const state = gw.gateway.runtime.services.state;
        const port = gw.port;
        const clients = await Promise.all(Array.from({ length: 12 }, () => connect(port, "198.51.100.20")));
        assert.ok(clients.every((c) => c.greeting.code === 220));
        assert.equal((await state.inspect("client.ip:198.51.100.20")).slots?.held, 12);

        const refused = await connect(port, "198.51.100.20");
        assert.equal(refused.greeting.code, 421);
        assert.match(refused.greeting.raw, /^421 4\.7\.0 /);
        await refused.waitClosed();
        const neighbours = await Promise.all([connect(port, "198.51.100.21"), connect(port, "198.51.100.22")]);
        assert.ok(
          neighbours.every((c) => c.greeting.code === 220),
          "the /24 has room for two more",
        );
        const crowded = await connect(port, "198.51.100.23");
        assert.equal(crowded.greeting.code, 421, "the /24 is full");
        await crowded.waitClosed();

        await Promise.all(
          [...clients, ...neighbours].map(async (client, i) => {
            await client.command("EHLO client.test");
            if (i % 3 === 0) await client.quit();
            else if (i % 3 === 1) client.destroy();
            else await client.waitClosed(); // the idle timeout
          }),
        );
        await eventually(async () => {
          const reports = await Promise.all(
            ["client.ip:198.51.100.20", "client.net:198.51.100.0/24"].map((key) => state.inspect(key)),
          );
          return reports.every((report) => report.slots === undefined);
        }, "all slots released");
        assert.equal(gw.gateway.openSessions().sessions, 0);
        const again = await connect(port, "198.51.100.20");
        assert.equal(again.greeting.code, 220);
        await again.quit();
      } finally {
        await gw?.stop();
      }
    });
  }

  test("redis: a killed gateway's slots come back after the lease, not before", async () => {
    const LEASE_MS = 3000;
    const text = policy(`{ redis: "${redis.url}" }`, `${LEASE_MS}ms`);
    const dir = await mkdtemp(join(tmpdir(), "portcullis-cc-"));
    const file = join(dir, "policy.yaml");
    await writeFile(file, text);
    const [crashing, survivor] = await Promise.all([startGatewayProcess(file), startGateway(text)]);
    try {
      const held = await Promise.all(Array.from({ length: 12 }, () => connect(crashing.port, "203.0.113.40")));
      assert.ok(held.every((c) => c.greeting.code === 220));
      // SIGKILL runs no close hook: only the leases can give these slots back.
      await crashing.kill();
      for (const client of held) client.destroy();
      const early = await connect(survivor.port, "203.0.113.40");
      assert.equal(early.greeting.code, 421, "the dead gateway's leases still run");
      await early.waitClosed();
      await sleep(2 * LEASE_MS);
      const later = await connect(survivor.port, "203.0.113.40");
      assert.equal(later.greeting.code, 220, "the leases ran out");
      await later.quit();
    } finally {
      await crashing.kill();
      await survivor.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("concurrency lease renewal", () => {
  test("MAIL renews each held slot with its own limit; close releases them", async () => {
    const { default: concurrency } = await import("../../plugins/concurrency/index.js");
    const calls: string[] = [];
    const state = {
      onStoreError: "defer",
      acquireSlot: async (slot: string, _holder: string, max: number, leaseMs: number) => {
        calls.push(`acquire ${slot} max=${max} lease=${leaseMs}`);
        return { acquired: true, held: 1 };
      },
      releaseSlot: async (slot: string) => {
        calls.push(`release ${slot}`);
      },
    };
    const options = concurrency.options.parse({
      limits: [
        { key: "client.ip", max: 12 },
        { key: "client.net", max: 14 },
      ],
      lease: "1m",
    });
    // Only what the hooks read; the casts keep the test free of the full context shapes.
    const hooks = await concurrency.setup(options, {} as never);
    const connection = { id: "c1", client: { ip: "198.51.100.20" } };
    const ctx = { connection, state, facts: {}, log: { info() {} } } as never;
    await hooks.connect?.(ctx);
    calls.length = 0;
    await hooks.mail?.(ctx);
    assert.deepEqual(calls, [
      "acquire client.ip:198.51.100.20 max=12 lease=60000",
      "acquire client.net:198.51.100.0/24 max=14 lease=60000",
    ]);
    calls.length = 0;
    await hooks.close?.(ctx);
    assert.deepEqual(calls, ["release client.ip:198.51.100.20", "release client.net:198.51.100.0/24"]);
  });
});
