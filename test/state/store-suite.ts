/**
 * The behaviour every state store must share, run by each store's test file against a store of
 * its kind (memory, one Redis, a Redis Cluster, a Sentinel-watched primary), with the helpers
 * those files use to drive a store.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type BucketRequest,
  type BucketResult,
  type StateStore,
  StoreUnavailableError,
} from "../../core/state/create.js";
import { eventually } from "../fixtures/eventually.js";

const HOUR = 3_600_000;

export const bucket = (key: string, burst: number, cost = 1, extra: Partial<BucketRequest> = {}): BucketRequest => ({
  key,
  intervalMs: HOUR,
  burst,
  cost,
  commit: true,
  blocking: true,
  ...extra,
});

export async function allowedCount(store: StateStore, request: BucketRequest, times: number): Promise<number> {
  const results = await Promise.all(Array.from({ length: times }, () => store.consume([request])));
  return results.filter(([r]) => r.allowed).length;
}

/**
 * Behaviour both stores must share. The counting tests refill once an hour, so only counts matter;
 * the tests of expiry wait out short intervals on the real clock (Date.now for the memory store, the
 * server's TIME for Redis). Each checks the state before an interval, then after a wait several
 * times longer, so a slow machine can only make the wait longer, never the answer different.
 */
export function storeSuite(name: string, open: () => Promise<StateStore>) {
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

/** Waits until the store answers; reconnection runs on ioredis's backoff, which the test does not time. */
export function reachable(store: StateStore): Promise<void> {
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
