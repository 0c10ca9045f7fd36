/**
 * core/state: the limiter and greylist arithmetic as pure functions with an injected clock, then
 * the behaviour suite (store-suite.ts; redis-cluster and redis-sentinel run it on theirs) against
 * the memory store and a real redis-server — counts at one
 * instant, and expiry over short real intervals, since the Lua scripts read Redis's own clock and
 * no hand-moved clock reaches them — then what the Redis store does when Redis goes away and comes back.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { countStep } from "../../core/state/arithmetic.js";
import {
  clientNet,
  gcra,
  greylistStep,
  MemoryStore,
  RedisStore,
  StoreUnavailableError,
} from "../../core/state/create.js";
import { startRedis, type TestRedis } from "../fixtures/redis.js";
import { allowedCount, bucket, reachable, storeSuite } from "./store-suite.js";

const silent = pino({ level: "silent" });
const HOUR = 3_600_000;
const T0 = 1_800_000_000_000;

/** Takes `cost` units `times` times in a row from one bucket, returning how many were allowed. */
function drain(params: { intervalMs: number; burst: number }, now: number, times: number, start: number | null = null) {
  let tat = start;
  let allowed = 0;
  for (let i = 0; i < times; i++) {
    const step = gcra(tat, now, params, 1);
    if (step.allowed) allowed++;
    tat = step.tat;
  }
  return { allowed, tat };
}

describe("GCRA arithmetic", () => {
  const params = { intervalMs: 1000, burst: 5 };

  test("a fresh bucket allows exactly the burst at one instant", () => {
    assert.equal(drain(params, T0, 20).allowed, 5);
    const first = gcra(null, T0, params, 1);
    assert.deepEqual(first, { allowed: true, tat: T0 + 1000, remaining: 4, retryAfterMs: 0, resetAfterMs: 1000 });
  });

  test("one unit comes back per interval, never more than the burst", () => {
    const { tat } = drain(params, T0, 5);
    const early = gcra(tat, T0 + 999, params, 1);
    assert.equal(early.allowed, false);
    assert.equal(early.retryAfterMs, 1);
    assert.equal(early.remaining, 0);
    assert.equal(gcra(tat, T0 + 1000, params, 1).allowed, true, "exactly at the window edge");
    assert.equal(drain(params, T0 + 3000, 10, tat).allowed, 3);
    assert.equal(drain(params, T0 + 3_600_000, 10, tat).allowed, 5, "a long pause refills to the burst only");
  });

  test("a cost takes several units at once; more than the burst can never pass", () => {
    const three = gcra(null, T0, params, 3);
    assert.equal(three.allowed, true);
    assert.equal(three.remaining, 2);
    const tooMuch = gcra(three.tat, T0, params, 3);
    assert.equal(tooMuch.allowed, false);
    assert.equal(tooMuch.retryAfterMs, 1000);
    assert.equal(gcra(null, T0, params, 6).retryAfterMs, Number.POSITIVE_INFINITY);
    const report = gcra(three.tat, T0, params, 0);
    assert.equal(report.allowed, true);
    assert.equal(report.tat, three.tat, "cost 0 only reports");
  });

  test("a clock going backwards never locks a key out longer than a full refill", () => {
    const { tat } = drain(params, T0, 5);
    const back = gcra(tat, T0 - HOUR, params, 1);
    assert.equal(back.allowed, false);
    assert.equal(back.retryAfterMs, 1000);
    assert.equal(back.resetAfterMs, 5000);
    // ...and grants nothing extra either: the bucket stays empty until time catches up.
    assert.equal(drain(params, T0 - 10, 3, tat).allowed, 0);
  });

  test("fractional intervals (100/1m) keep exact counts", () => {
    const rate = { intervalMs: 60_000 / 7, burst: 7 };
    const { tat, allowed } = drain(rate, T0, 10);
    assert.equal(allowed, 7);
    assert.equal(drain(rate, T0 + 60_000, 10, tat).allowed, 7);
    assert.equal(drain(rate, T0 + (60_000 / 7) * 2, 10, tat).allowed, 2);
  });
});

describe("counter and greylist arithmetic", () => {
  test("a fixed window counts from its first increment and starts over after it", () => {
    const first = countStep(null, T0, 2, 1000);
    assert.deepEqual(first, { count: 2, resetAt: T0 + 1000 });
    assert.deepEqual(countStep(first, T0 + 999, 1, 1000), { count: 3, resetAt: T0 + 1000 });
    assert.deepEqual(countStep(first, T0 + 1000, 1, 1000), { count: 1, resetAt: T0 + 2000 });
    assert.equal(countStep(first, T0 - HOUR, 1, 1000).resetAt, T0 - HOUR + 1000, "clock backwards: capped");
  });

  test("new, early, passed at the delay, known; too late starts over", () => {
    const params = { delayMs: 300_000, retryWindowMs: 4 * HOUR, lifetimeMs: 36 * 24 * HOUR };
    const first = greylistStep(null, T0, params);
    assert.deepEqual(first.result, { status: "new", retryInMs: 300_000 });
    const record = first.write!.record;
    assert.equal(first.write!.ttlMs, params.retryWindowMs);
    assert.deepEqual(greylistStep(record, T0 + 299_999, params), {
      result: { status: "early", retryInMs: 1 },
      write: null,
    });
    const passed = greylistStep(record, T0 + 300_000, params);
    assert.equal(passed.result.status, "passed");
    assert.equal(passed.write!.ttlMs, params.lifetimeMs);
    assert.equal(greylistStep(passed.write!.record, T0 + 20 * HOUR, params).result.status, "known");
    assert.equal(greylistStep(record, T0 + params.retryWindowMs, params).result.status, "passed");
    const late = greylistStep(record, T0 + params.retryWindowMs + 1, params);
    assert.deepEqual(late.result, { status: "new", retryInMs: 300_000 });
    assert.equal(late.write!.record.firstSeen, T0 + params.retryWindowMs + 1);
    assert.deepEqual(greylistStep(record, T0 - HOUR, params).result, { status: "early", retryInMs: 300_000 });
  });
});

test("client networks: /24 for IPv4, /64 for IPv6", () => {
  assert.equal(clientNet("192.0.2.77"), "192.0.2.0/24");
  assert.equal(clientNet("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
  assert.equal(clientNet("2001:db8::1"), "2001:db8:0:0::/64");
  assert.equal(clientNet("2001:0db8:00a0::"), "2001:db8:a0:0::/64");
  assert.equal(clientNet("::1"), "0:0:0:0::/64");
});

storeSuite("memory", async () => new MemoryStore());

test("the memory store ages everything by its injected clock and stays bounded", async () => {
  let now = T0;
  const store = new MemoryStore({ clock: { now: () => now }, maxEntries: 3 });
  await store.set("v", "x", 1000);
  const slow = { key: "b", intervalMs: 1000, burst: 2, cost: 1, commit: true, blocking: true };
  assert.equal(await allowedCount(store, slow, 3), 2);
  assert.equal((await store.acquireSlot("s", "a", 1, 1000)).acquired, true);
  assert.equal((await store.acquireSlot("s", "b", 1, 1000)).acquired, false);
  now += 999;
  assert.equal(await store.get("v"), "x");
  assert.equal((await store.consume([slow]))[0].allowed, false);
  now += 1;
  assert.equal(await store.get("v"), null);
  assert.equal((await store.consume([slow]))[0].allowed, true);
  assert.equal((await store.acquireSlot("s", "b", 1, 1000)).acquired, true, "a's lease ran out");
  const grey = { delayMs: 300, retryWindowMs: 1000, lifetimeMs: 5000 };
  assert.equal((await store.greylist("g", grey)).status, "new");
  now += 300;
  assert.equal((await store.greylist("g", grey)).status, "passed");
  const small = new MemoryStore({ maxEntries: 2 });
  for (const key of ["k1", "k2", "k3"]) await small.set(key, key, HOUR);
  assert.deepEqual([await small.get("k1"), await small.get("k3")], [null, "k3"], "the oldest entry made room");
});

describe("redis", () => {
  let redis: TestRedis;
  before(async () => {
    redis = await startRedis();
  });
  after(() => redis.stop());

  storeSuite("redis", async () => {
    const store = new RedisStore({ url: redis.url, log: silent });
    await reachable(store);
    return store;
  });

  test("two stores (two gateways) on one Redis share a bucket exactly", async () => {
    const stores = [0, 1].map(() => new RedisStore({ url: redis.url, log: silent }));
    await Promise.all(stores.map(reachable));
    const request = bucket(`shared-${process.pid}`, 25);
    const counts = await Promise.all(stores.map((store) => allowedCount(store, request, 40)));
    assert.equal(counts[0] + counts[1], 25);
    await Promise.all(stores.map((store) => store.close()));
  });

  test("an outage fails fast with StoreUnavailableError and the store recovers by itself", async () => {
    const store = new RedisStore({ url: redis.url, log: silent });
    await reachable(store);
    await redis.stop();
    for (const attempt of [() => store.consume([bucket("outage", 5)]), () => store.get("outage")]) {
      await assert.rejects(attempt(), StoreUnavailableError);
    }
    assert.ok(store.failures >= 2);
    await redis.start();
    await reachable(store);
    const [result] = await store.consume([bucket("outage", 5)]);
    assert.equal(result.allowed, true);
    await store.close();
  });
});
