/**
 * The next-hop connection pool's slots: a free slot is handed out at once; with every slot busy the
 * caller waits until a release, its deadline (PoolWaitTimeout) or its signal's abort — and a wait
 * that ended leaves no waiter behind to be woken later.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ConnectionPool, PoolWaitTimeout } from "../../core/delivery/pool.js";

const FAR = () => Date.now() + 60_000;

describe("ConnectionPool.acquire", () => {
  test("free slots are handed out at once, without a connection (the caller opens one)", async () => {
    const pool = new ConnectionPool({ defaultLimit: 2, idleMs: 1000 });
    const first = await pool.acquire("hop", 2, { until: FAR() });
    const second = await pool.acquire("hop", 2, { until: FAR() });
    assert.equal(first.link, null);
    assert.equal(second.link, null);
    pool.release(first, null);
    pool.release(second, null);
  });

  test("with every slot busy the caller waits for a release", async () => {
    const pool = new ConnectionPool({ defaultLimit: 1, idleMs: 1000 });
    const held = await pool.acquire("hop", 1);
    let granted = false;
    const waiting = pool.acquire("hop", 1, { until: FAR() }).then((lease) => {
      granted = true;
      return lease;
    });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(granted, false);
    pool.release(held, null);
    const lease = await waiting;
    assert.equal(lease.key, "hop");
    pool.release(lease, null);
  });

  test("a wait ends at its deadline with PoolWaitTimeout, and at an abort with the signal's reason", async () => {
    const pool = new ConnectionPool({ defaultLimit: 1, idleMs: 1000 });
    const held = await pool.acquire("hop", 1);
    await assert.rejects(pool.acquire("hop", 1, { until: Date.now() + 20 }), PoolWaitTimeout);
    const controller = new AbortController();
    const aborted = pool.acquire("hop", 1, { until: FAR(), signal: controller.signal });
    controller.abort(new Error("gave up"));
    await assert.rejects(aborted, { message: "gave up" });
    await assert.rejects(pool.acquire("hop", 1, { signal: AbortSignal.abort(new Error("already")) }), {
      message: "already",
    });
    // Neither ended wait is left as a waiter: the release goes to the next caller's free slot.
    pool.release(held, null);
    const next = await pool.acquire("hop", 1, { until: Date.now() + 20 });
    assert.equal(next.link, null);
    pool.release(next, null);
  });
});
