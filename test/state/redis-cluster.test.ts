/**
 * The Redis store on a real Redis Cluster of three masters started by this file: the store suite
 * (every script's keys must share a slot, or the cluster refuses it with CROSSSLOT), a batch whose
 * buckets sit on different masters, state spread over the masters, and two stores sharing a
 * bucket exactly.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Redis } from "ioredis";
import { pino } from "pino";
import { RedisStore } from "../../core/state/create.js";
import { startRedisCluster, type TestRedisCluster } from "../fixtures/redis.js";
import { allowedCount, bucket, reachable, storeSuite } from "./store-suite.js";

const silent = pino({ level: "silent" });

describe("redis cluster", () => {
  let cluster: TestRedisCluster;
  const opened: RedisStore[] = [];
  before(async () => {
    cluster = await startRedisCluster();
  });
  // Closed here rather than by each test, so a failed assertion leaves no client keeping the process alive.
  after(async () => {
    await Promise.all(opened.map((store) => store.close()));
    await cluster.stop();
  });

  const open = async () => {
    // A second rather than the default 250 ms: the machine running the tests is shared, and these
    // tests are about answers, not speed.
    const store = new RedisStore({ cluster: cluster.nodes, log: silent, commandTimeoutMs: 1000 });
    opened.push(store);
    await reachable(store);
    return store;
  };

  storeSuite("redis cluster", open);

  test("a batch over buckets on different masters: a refused blocking bucket takes back what the others took", async () => {
    const store = await open();
    const keys = Array.from({ length: 6 }, (_, i) => `spread-${i}-${process.pid}`);
    const full = `spread-full-${process.pid}`;
    await store.consume([bucket(full, 1)]);
    const results = await store.consume([...keys.map((key) => bucket(key, 3)), bucket(full, 1)]);
    assert.deepEqual(
      results.map((r) => r.allowed),
      [...keys.map(() => true), false],
    );
    for (const key of keys) assert.deepEqual(await store.inspect(key), {}, `${key} is as it was`);
    const passing = await store.consume(keys.map((key) => bucket(key, 3)));
    assert.ok(passing.every((r) => r.allowed && r.remaining === 2));
    for (const key of keys) assert.equal((await store.inspect(key)).bucket?.remaining, 2, `${key} took one unit`);
  });

  test("state spreads over the masters: each holds some of the keys", async () => {
    const store = await open();
    for (let i = 0; i < 30; i++) await store.set(`spread-value-${i}`, "x", 60_000);
    const sizes = await Promise.all(
      cluster.nodes.map(async (url) => {
        const node = new Redis(url, { lazyConnect: true });
        try {
          await node.connect();
          return await node.dbsize();
        } finally {
          node.disconnect();
        }
      }),
    );
    assert.ok(
      sizes.every((size) => size > 0),
      `keys per master: ${sizes.join(", ")}`,
    );
  });

  test("two stores (two gateways) on the cluster share a bucket exactly", async () => {
    const stores = await Promise.all([open(), open()]);
    const request = bucket(`shared-${process.pid}`, 25);
    const counts = await Promise.all(stores.map((store) => allowedCount(store, request, 40)));
    assert.equal(counts[0] + counts[1], 25);
  });
});
