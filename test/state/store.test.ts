/**
 * core/state: the limiter and greylist arithmetic as pure functions with an injected clock, then
 * one behaviour suite run against both stores (memory, and a real redis-server) — counts at one
 * instant, and expiry over short real intervals, since the Lua scripts read Redis's own clock and
 * no hand-moved clock reaches them — then what the Redis store does when Redis goes away and comes back.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { countStep } from "../../core/state/arithmetic.js";
import {
  type BucketRequest,
  type BucketResult,
  clientNet,
  gcra,
  greylistStep,
  MemoryStore,
  RedisStore,
  type StateStore,
  StoreUnavailableError,
} from "../../core/state/create.js";
import { eventually } from "../fixtures/eventually.js";
import { startRedis, type TestRedis } from "../fixtures/redis.js";

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

const bucket = (key: string, burst: number, cost = 1, extra: Partial<BucketRequest> = {}): BucketRequest => ({
  key,
  intervalMs: HOUR,
  burst,
  cost,
  commit: true,
  blocking: true,
  ...extra,
});

async function allowedCount(store: StateStore, request: BucketRequest, times: number): Promise<number> {
  const results = await Promise.all(Array.from({ length: times }, () => store.consume([request])));
  return results.filter(([r]) => r.allowed).length;
}

/**
 * Behaviour both stores must share. The counting tests refill once an hour, so only counts matter;
 * the tests of expiry wait out short intervals on the real clock (Date.now for the memory store, the
 * server's TIME for Redis). Each checks the state before an interval, then after a wait several
 * times longer, so a slow machine can only make the wait longer, never the answer different.
 */
function storeSuite(name: string, open: () => Promise<StateStore>) {
  describe(`${name} store`, () => {
    let store: StateStore;
    let n = 0;
    const key = (label: string) => `${label}-${++n}-${process.pid}`;
    before(async () => {
      store = await open();
    });
    after(() => store.close());

    test("plain values with a TTL", async () => {
      const k = key("kv");
      assert.equal(await store.get(k), null);
      await store.set(k, "pass", HOUR);
      assert.equal(await store.get(k), "pass");
      await store.delete(k);
      assert.equal(await store.get(k), null);
    });

    test("a bucket allows exactly its burst under concurrent requests", async () => {
      const request = bucket(key("rl"), 7);
      assert.equal(await allowedCount(store, request, 30), 7);
      const [denied] = await store.consume([request]);
      assert.equal(denied.allowed, false);
      assert.equal(denied.remaining, 0);
      assert.ok(denied.retryAfterMs > 0 && denied.retryAfterMs <= HOUR, `retry after ${denied.retryAfterMs}`);
    });

    test("a denied blocking request commits nothing of its batch; a non-blocking one does not stop it", async () => {
      const a = key("a");
      const full = key("full");
      await store.consume([bucket(full, 1)]);
      const [ra, rfull] = await store.consume([bucket(a, 2), bucket(full, 1)]);
      assert.equal(ra.allowed, true);
      assert.equal(rfull.allowed, false);
      assert.equal((await store.inspect(a)).bucket, undefined, "the allowed part was not written");
      await store.consume([bucket(a, 2), bucket(full, 1, 1, { blocking: false })]);
      assert.equal((await store.inspect(a)).bucket?.remaining, 1);
    });

    test("a check without commit writes nothing; a repeated key sees the earlier request", async () => {
      const k = key("dup");
      const [check] = await store.consume([bucket(k, 3, 3, { commit: false })]);
      assert.equal(check.allowed, true);
      assert.equal(check.remaining, 0);
      assert.deepEqual(await store.inspect(k), {});
      const results = await store.consume([bucket(k, 3, 2), bucket(k, 3, 2)]);
      assert.deepEqual(
        results.map((r) => r.allowed),
        [true, false],
      );
      assert.equal(results[1].remaining, 1);
      const [tooBig] = await store.consume([bucket(key("big"), 3, 4)]);
      assert.equal(tooBig.retryAfterMs, Number.POSITIVE_INFINITY);
    });

    test("inspect and reset a bucket", async () => {
      const k = key("show");
      await store.consume([bucket(k, 5, 2)]);
      const report = await store.inspect(k);
      assert.equal(report.bucket?.burst, 5);
      assert.equal(report.bucket?.intervalMs, HOUR);
      assert.equal(report.bucket?.remaining, 3);
      assert.ok(Math.abs((report.bucket?.resetAfterMs ?? 0) - 2 * HOUR) < 60_000);
      assert.equal(await store.reset(k), true);
      assert.deepEqual(await store.inspect(k), {});
      assert.equal(await store.reset(k), false);
      assert.equal(await allowedCount(store, bucket(k, 5), 6), 5, "reset gives the full burst back");
    });

    test("counters add up within their window", async () => {
      const k = key("count");
      assert.equal((await store.increment(k, 2, HOUR)).count, 2);
      const second = await store.increment(k, 3, HOUR);
      assert.equal(second.count, 5);
      assert.ok(second.resetInMs > 0 && second.resetInMs <= HOUR);
      assert.equal((await store.inspect(k)).counter?.count, 5);
    });

    test("slots: at most max holders, renewals keep theirs, releases give them back", async () => {
      const k = key("slots");
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => store.acquireSlot(k, `holder-${i}`, 3, HOUR)),
      );
      const holders = results.flatMap((r, i) => (r.acquired ? [`holder-${i}`] : []));
      assert.equal(holders.length, 3);
      assert.deepEqual(await store.acquireSlot(k, holders[0], 3, HOUR), { acquired: true, held: 3 });
      assert.equal((await store.acquireSlot(k, "late", 3, HOUR)).acquired, false);
      assert.equal((await store.inspect(k)).slots?.held, 3);
      assert.equal(await store.releaseSlot(k, holders[0]), 2);
      assert.equal(await store.releaseSlot(k, "never-held"), 2);
      assert.equal((await store.acquireSlot(k, "late", 3, HOUR)).acquired, true);
      for (const holder of [...holders, "late"]) await store.releaseSlot(k, holder);
      assert.deepEqual(await store.inspect(k), {});
    });

    test("greylist: new, then early while the delay runs", async () => {
      const k = key("grey");
      const params = { delayMs: HOUR, retryWindowMs: 4 * HOUR, lifetimeMs: 24 * HOUR };
      assert.deepEqual(await store.greylist(k, params), { status: "new", retryInMs: HOUR });
      const early = await store.greylist(k, params);
      assert.equal(early.status, "early");
      assert.ok(early.retryInMs > 0 && early.retryInMs <= HOUR);
      const report = (await store.inspect(k)).greylist;
      assert.equal(report?.passed, false);
    });

    test("greylist: with no delay the first retry passes and the triplet is then known", async () => {
      const k = key("grey0");
      const params = { delayMs: 0, retryWindowMs: HOUR, lifetimeMs: 24 * HOUR };
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await store.greylist(k, params)).status);
      assert.deepEqual(statuses, ["new", "passed", "known"]);
      assert.equal((await store.inspect(k)).greylist?.passed, true);
    });

    test("a drained bucket gets units back as time passes, up to its burst and no further", async () => {
      // A full refill takes a second, so the bucket's record outlives the partial wait (in Redis
      // it expires when full) and the script's refill arithmetic, not a fresh key, answers.
      const request = bucket(key("refill"), 10, 1, { intervalMs: 100, blocking: false });
      // One batch is one instant: no refill slips in between its requests. Non-blocking, so the
      // allowed part is taken although the last request is denied.
      const takeAll = () => store.consume(Array(11).fill(request));
      const allowed = (results: BucketResult[]) => results.filter((r) => r.allowed).length;
      const drained = await takeAll();
      assert.equal(allowed(drained), 10);
      const { retryAfterMs } = drained[10];
      assert.ok(retryAfterMs > 0 && retryAfterMs <= 100, `one unit back within an interval: ${retryAfterMs}`);
      await sleep(300);
      const partly = await takeAll();
      assert.ok(allowed(partly) >= 3, `at least three intervals refilled: ${allowed(partly)}`);
      assert.equal(partly[10].allowed, false, "never more than the burst");
      await sleep(2000);
      assert.equal(allowed(await takeAll()), 10, "full again after a long wait, and only the burst");
    });

    test("a slot's lease runs out: another holder gets it after the lease, not before", async () => {
      const k = key("lease");
      // A holder with a long lease, taken first, keeps the slot set alive: only the per-holder lease
      // can free "gone", and a later, shorter lease must not cut "alive" short.
      assert.equal((await store.acquireSlot(k, "alive", 2, HOUR)).acquired, true);
      assert.equal((await store.acquireSlot(k, "gone", 2, 500)).acquired, true);
      assert.deepEqual(await store.acquireSlot(k, "next", 2, HOUR), { acquired: false, held: 2 });
      await sleep(1500);
      assert.deepEqual(await store.acquireSlot(k, "next", 2, HOUR), { acquired: true, held: 2 }, "alive still holds");
    });

    test("greylist: a retry is early while the delay runs and passes after it", async () => {
      const k = key("grey-delay");
      const params = { delayMs: 300, retryWindowMs: HOUR, lifetimeMs: HOUR };
      assert.deepEqual(await store.greylist(k, params), { status: "new", retryInMs: 300 });
      const early = await store.greylist(k, params);
      assert.equal(early.status, "early");
      assert.ok(early.retryInMs > 0 && early.retryInMs <= 300, `retry in ${early.retryInMs}`);
      await sleep(900);
      assert.deepEqual(await store.greylist(k, params), { status: "passed", retryInMs: 0 });
      assert.deepEqual(await store.greylist(k, params), { status: "known", retryInMs: 0 });
    });

    test("greylist: a retry after the retry window starts over", async () => {
      const k = key("grey-window");
      const params = { delayMs: 100, retryWindowMs: 400, lifetimeMs: HOUR };
      assert.equal((await store.greylist(k, params)).status, "new");
      assert.equal((await store.greylist(k, params)).status, "early");
      await sleep(1200);
      assert.deepEqual(await store.greylist(k, params), { status: "new", retryInMs: 100 });
      assert.equal((await store.greylist(k, params)).status, "early", "the delay runs again from the new attempt");
    });

    test("greylist: each pass renews the lifetime; unseen for a lifetime, the triplet starts over", async () => {
      const k = key("grey-lifetime");
      const params = { delayMs: 0, retryWindowMs: HOUR, lifetimeMs: 1500 };
      assert.equal((await store.greylist(k, params)).status, "new");
      assert.equal((await store.greylist(k, params)).status, "passed");
      // Two waits of 900 ms outlast one lifetime only if the first "known" renewed it.
      for (let i = 0; i < 2; i++) {
        await sleep(900);
        assert.equal((await store.greylist(k, params)).status, "known", `renewed, wait ${i + 1}`);
      }
      await sleep(3000);
      assert.equal((await store.greylist(k, params)).status, "new");
    });
  });
}

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

/** Waits until the store answers; reconnection runs on ioredis's backoff, which the test does not time. */
function reachable(store: StateStore): Promise<void> {
  return eventually(
    () =>
      store.get("ping").then(
        () => true,
        (err) => {
          if (err instanceof StoreUnavailableError) return false;
          throw err;
        },
      ),
    "the store answers",
  );
}
