/**
 * The Redis store on a primary watched by three real Sentinels (quorum 2) started by this file:
 * the store suite through Sentinel discovery, a failover asked of the Sentinels while the primary
 * stays up, then the primary killed with SIGKILL: the store answers StoreUnavailableError (so hooks
 * apply onStoreError) until the Sentinels have promoted the replica, then carries on there with the
 * state the replica had.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { RedisStore, StoreUnavailableError } from "../../core/state/create.js";
import { eventually } from "../fixtures/eventually.js";
import { startRedisSentinel, type TestRedisSentinel } from "../fixtures/redis.js";
import { bucket, reachable, storeSuite } from "./store-suite.js";

const silent = pino({ level: "silent" });

describe("redis sentinel", () => {
  let sentinel: TestRedisSentinel;
  const opened: RedisStore[] = [];
  before(async () => {
    sentinel = await startRedisSentinel();
  });
  after(async () => {
    await Promise.all(opened.map((store) => store.close()));
    await sentinel.stop();
  });

  const open = async () => {
    // A second rather than the default 250 ms: the machine running the tests is shared, and these
    // tests are about answers, not speed.
    const store = new RedisStore({
      sentinel: { sentinels: sentinel.sentinels, name: sentinel.name },
      log: silent,
      commandTimeoutMs: 1000,
    });
    opened.push(store);
    await reachable(store);
    return store;
  };

  storeSuite("redis sentinel", open);

  test("a failover the Sentinels are asked for (the old primary stays up): the store moves to the new one at once", async () => {
    const store = await open();
    const limit = bucket(`switch-${process.pid}`, 5);
    await store.consume([limit, limit]);
    await sentinel.replicated();
    const old = await sentinel.currentPrimary();
    await sentinel.failover();
    // The old primary still takes writes until the Sentinels demote it, some ten seconds on, and
    // loses them then: the store must reach the new one before that, on the Sentinels' announcement.
    const probe = `switch-probe-${process.pid}`;
    await eventually(async () => {
      await store.set(probe, "moved", 60_000).catch((err) => {
        if (!(err instanceof StoreUnavailableError)) throw err;
      });
      if ((await sentinel.readOnPrimary(`portcullis:kv:{${probe}}`)) === "moved") return true;
      assert.equal(await sentinel.role(old), "master", "the old primary was demoted before the store left it");
      return false;
    }, "the store writes to the new primary");
    assert.equal((await store.inspect(limit.key)).bucket?.remaining, 3, "two of five were taken before the switch");
    // The next test kills the primary and needs a replica in sync to promote.
    await sentinel.demoted();
  });

  test("the primary killed: unavailable until the replica is promoted, then the limit goes on from the replica's state", async () => {
    const store = await open();
    const limit = bucket(`failover-${process.pid}`, 5);
    const taken = await store.consume([limit, limit]);
    assert.ok(taken.every((r) => r.allowed));
    await sentinel.replicated();
    const dead = await sentinel.currentPrimary();
    await sentinel.killPrimary();
    await assert.rejects(store.consume([limit]), StoreUnavailableError, "the dead primary answers nothing");
    await eventually(async () => (await sentinel.currentPrimary()) !== dead, "the Sentinels promoted the replica");
    await reachable(store);
    const after = await store.consume([limit, limit, limit, limit]);
    assert.deepEqual(
      after.map((r) => r.allowed),
      [true, true, true, false],
      "two of five were taken before the failover",
    );
    assert.ok(store.failures >= 1, `failures counted: ${store.failures}`);
  });
});
