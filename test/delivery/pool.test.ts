/**
 * The next-hop connection pool's slots: a free slot or an idle connection is handed out at once,
 * without making the wait signal; with every slot busy the caller waits until a release, or until
 * its signal aborts.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ConnectionPool } from "../../core/delivery/pool.js";

describe("ConnectionPool.acquire", () => {
  test("a free slot is handed out at once; the wait signal is not even made", async () => {
    const pool = new ConnectionPool({ defaultLimit: 2, idleMs: 1000 });
    let made = 0;
    const waitSignal = () => {
      made++;
      return new AbortController().signal;
    };
    const first = await pool.acquire("hop", 2, waitSignal);
    const second = await pool.acquire("hop", 2, waitSignal);
    assert.equal(first.link, null, "no idle connection yet: the caller opens one");
    assert.equal(second.link, null);
    assert.equal(made, 0);
    pool.release(first, null);
    pool.release(second, null);
  });

  test("with every slot busy the caller waits for a release", async () => {
    const pool = new ConnectionPool({ defaultLimit: 1, idleMs: 1000 });
    const held = await pool.acquire("hop", 1);
    let made = 0;
    let granted = false;
    const waiting = pool
      .acquire("hop", 1, () => {
        made++;
        return new AbortController().signal;
      })
      .then((lease) => {
        granted = true;
        return lease;
      });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(granted, false);
    assert.equal(made, 1, "the wait signal is made once the caller has to wait");
    pool.release(held, null);
    const lease = await waiting;
    assert.equal(lease.key, "hop");
    pool.release(lease, null);
  });

  test("a wait ends with the signal's reason when it aborts first, and leaves no waiter behind", async () => {
    const pool = new ConnectionPool({ defaultLimit: 1, idleMs: 1000 });
    const held = await pool.acquire("hop", 1);
    const controller = new AbortController();
    const waiting = pool.acquire("hop", 1, () => controller.signal);
    controller.abort(new Error("gave up"));
    await assert.rejects(waiting, { message: "gave up" });
    pool.release(held, null);
    // The slot is free again for the next caller, who is not woken into a stale wait.
    const next = await pool.acquire("hop", 1, () => AbortSignal.abort(new Error("must not wait")));
    assert.equal(next.link, null);
    pool.release(next, null);
  });
});
