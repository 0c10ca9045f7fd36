/**
 * SubmissionAuth with a password check the test holds open, so attempts are truly in flight at
 * once: how many reach the hash, per client IP and per user, on the memory store and on a real
 * redis-server; the per-IP in-flight limit; the bounded hash pool; and a store that cannot count.
 */
import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";
import { pino } from "pino";
import type { PolicyConfig } from "../../../core/policy/schema.js";
import { HashPool } from "../../../core/smtp/auth/hash-pool.js";
import { type AuthResult, SubmissionAuth } from "../../../core/smtp/auth/index.js";
import type { UserEntry } from "../../../core/smtp/auth/users.js";
import { MemoryStore, RedisStore, type StateStore, StoreUnavailableError } from "../../../core/state/create.js";
import { startRedis, type TestRedis } from "../../fixtures/redis.js";

type AuthConfig = NonNullable<PolicyConfig["server"]["auth"]>;

const CONFIG: AuthConfig = {
  users: "users",
  senders: "own",
  maxFailures: 5,
  maxFailuresPerUser: 20,
  failureWindow: 60_000,
  maxInFlightPerIp: 100,
  hashConcurrency: 100,
  hashQueue: 100,
  refusalDelay: 0,
};

/** Stand-in hashes: the "hash" of a user is its password, and every check waits for release(). */
const USERS: ReadonlyMap<string, UserEntry> = new Map([
  ["alice", { hash: "alice-pw", senders: [] }],
  ["bob", { hash: "bob-pw", senders: [] }],
]);

/** A password check that records what it was asked and answers only when released. */
function heldVerifier() {
  const checked: string[] = [];
  let open!: () => void;
  let gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  return {
    checked,
    verify: async (password: string, hash: string) => {
      checked.push(hash);
      await gate;
      return password === hash;
    },
    /** Lets every check waiting now (and later) answer. */
    release: () => open(),
    /** Holds checks again from now on. */
    hold: () => {
      gate = new Promise<void>((resolve) => {
        open = resolve;
      });
    },
  };
}

function refusals(results: readonly AuthResult[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const result of results) {
    const key = "user" in result ? "ok" : result.refused;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

/** Lets the attempts started so far run up to their password check. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

/** `open(namespace)` gives a store of its own to each test. */
function lockoutSuite(name: string, open: (namespace: string) => StateStore) {
  describe(`${name} store`, () => {
    let store: StateStore;
    let tests = 0;
    beforeEach(() => {
      store = open(`auth-test-${process.pid}-${++tests}:`);
    });
    afterEach(() => store.close());
    let n = 0;
    const ip = () => `192.0.2.${++n}`;

    test("of 19 parallel wrong attempts from one IP only maxFailures reach the hash; the rest are locked out", async () => {
      const hasher = heldVerifier();
      const auth = new SubmissionAuth(USERS, CONFIG, { store, decoy: "decoy", verify: hasher.verify });
      const client = ip();
      const attempts = Array.from({ length: 19 }, (_, i) => auth.authenticate(client, `user${i}`, "guess"));
      await settle();
      hasher.release();
      const results = await Promise.all(attempts);
      assert.deepEqual(refusals(results), { invalid: 5, "locked-ip": 14 });
      assert.equal(hasher.checked.length, 5);
      assert.deepEqual(refusals([await auth.authenticate(client, "alice", "alice-pw")]), { "locked-ip": 1 });
      assert.equal(auth.failed, 5);
      assert.equal(auth.refused["locked-ip"], 15);
    });

    test("a success gives its place back, so logins never lock a client out", async () => {
      const hasher = heldVerifier();
      hasher.release();
      const auth = new SubmissionAuth(USERS, CONFIG, { store, decoy: "decoy", verify: hasher.verify });
      const client = ip();
      const logins: AuthResult[] = [];
      for (let i = 0; i < 12; i++) logins.push(await auth.authenticate(client, "bob", "bob-pw"));
      assert.deepEqual(refusals(logins), { ok: 12 });
      const guesses = await Promise.all(Array.from({ length: 8 }, () => auth.authenticate(client, "bob", "guess")));
      assert.deepEqual(refusals(guesses), { invalid: 5, "locked-ip": 3 });
    });

    test("one user guessed at from many IPs is locked after maxFailuresPerUser; refused attempts give the IP place back", async () => {
      const hasher = heldVerifier();
      hasher.release();
      const auth = new SubmissionAuth(
        USERS,
        { ...CONFIG, maxFailuresPerUser: 4 },
        { store, decoy: "decoy", verify: hasher.verify },
      );
      const clients = Array.from({ length: 8 }, ip);
      const results = await Promise.all(clients.map((client) => auth.authenticate(client, "Alice", "guess")));
      assert.deepEqual(refusals(results), { invalid: 4, "locked-user": 4 });
      assert.deepEqual(refusals([await auth.authenticate(ip(), "alice", "alice-pw")]), { "locked-user": 1 });
      const locked = results.map((result, i) =>
        "refused" in result && result.refused === "locked-user" ? clients[i] : null,
      );
      const refusedClient = locked.find((client) => client !== null) as string;
      assert.equal((await store.inspect(`auth-failures:ip:${refusedClient}`)).slots, undefined);
      assert.deepEqual(refusals([await auth.authenticate(refusedClient, "bob", "bob-pw")]), { ok: 1 });
    });
  });
}

describe("AUTH failure counting", () => {
  let redis: TestRedis;
  before(async () => {
    redis = await startRedis();
  });
  after(() => redis.stop());

  lockoutSuite("memory", () => new MemoryStore());
  lockoutSuite("redis", (keyPrefix) => new RedisStore({ url: redis.url, log: pino({ level: "silent" }), keyPrefix }));
});

describe("AUTH load limits", () => {
  test("beyond maxInFlightPerIp attempts under check, one IP gets busy; other IPs do not", async () => {
    const hasher = heldVerifier();
    const auth = new SubmissionAuth(
      USERS,
      { ...CONFIG, maxInFlightPerIp: 2 },
      { store: new MemoryStore(), decoy: "decoy", verify: hasher.verify },
    );
    const held = [auth.authenticate("192.0.2.1", "alice", "guess"), auth.authenticate("192.0.2.1", "bob", "guess")];
    await settle();
    const third = auth.authenticate("192.0.2.1", "alice", "alice-pw");
    const neighbour = auth.authenticate("192.0.2.2", "alice", "alice-pw");
    await settle();
    hasher.release();
    assert.deepEqual(refusals([await third]), { busy: 1 });
    assert.deepEqual(refusals([...(await Promise.all(held)), await neighbour]), { invalid: 2, ok: 1 });
    assert.deepEqual(refusals([await auth.authenticate("192.0.2.1", "alice", "alice-pw")]), { ok: 1 });
  });

  test("a full hash queue answers busy at once and gives back the failure places; unknown users queue too", async () => {
    const hasher = heldVerifier();
    const store = new MemoryStore();
    const auth = new SubmissionAuth(
      USERS,
      { ...CONFIG, hashConcurrency: 1, hashQueue: 1 },
      { store, decoy: "decoy", verify: hasher.verify },
    );
    const running = auth.authenticate("192.0.2.1", "nobody", "guess");
    const waiting = auth.authenticate("192.0.2.2", "alice", "alice-pw");
    await settle();
    assert.deepEqual(hasher.checked, ["decoy"], "the unknown user is checked against the decoy");
    const third = auth.authenticate("192.0.2.3", "bob", "bob-pw");
    await settle();
    assert.equal((await store.inspect("auth-failures:ip:192.0.2.3")).slots, undefined);
    assert.equal((await store.inspect("auth-failures:user:bob")).slots, undefined);
    hasher.release();
    assert.deepEqual(refusals([await third]), { busy: 1 });
    assert.deepEqual(refusals([await running, await waiting]), { invalid: 1, ok: 1 });
    assert.equal(auth.refused.busy, 1);
  });

  test("a store that cannot count refuses AUTH with 454 and never checks the password", async () => {
    const hasher = heldVerifier();
    hasher.release();
    const store = new MemoryStore();
    store.acquireSlot = async () => {
      throw new StoreUnavailableError("state store unavailable: connection refused");
    };
    const auth = new SubmissionAuth(USERS, CONFIG, { store, decoy: "decoy", verify: hasher.verify });
    const result = await auth.authenticate("192.0.2.1", "alice", "alice-pw");
    assert.ok("reply" in result);
    assert.equal(`${result.reply.code} ${result.reply.enhanced}`, "454 4.7.0");
    assert.equal(result.refused, "store-unavailable");
    assert.match(result.error ?? "", /connection refused/);
    assert.equal(hasher.checked.length, 0);
  });

  test("IPv6 clients are counted per /64", async () => {
    const hasher = heldVerifier();
    hasher.release();
    const auth = new SubmissionAuth(
      USERS,
      { ...CONFIG, maxFailures: 2 },
      {
        store: new MemoryStore(),
        decoy: "decoy",
        verify: hasher.verify,
      },
    );
    await auth.authenticate("2001:db8:1:2::a", "alice", "guess");
    await auth.authenticate("2001:db8:1:2::b", "alice", "guess");
    assert.deepEqual(refusals([await auth.authenticate("2001:db8:1:2:ffff::1", "alice", "alice-pw")]), {
      "locked-ip": 1,
    });
    assert.deepEqual(refusals([await auth.authenticate("2001:db8:1:3::a", "alice", "alice-pw")]), { ok: 1 });
  });
});

describe("HashPool", () => {
  test("runs at most `concurrency` tasks, queues at most `queueLimit`, refuses the rest, in order", async () => {
    const pool = new HashPool(2, 1);
    const order: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const task = (id: number) => async () => {
      order.push(id);
      await gate;
      return id;
    };
    const accepted = [pool.run(task(1)), pool.run(task(2)), pool.run(task(3))];
    assert.equal(pool.run(task(4)), null);
    await settle();
    assert.deepEqual(order, [1, 2]);
    assert.deepEqual(pool.load, { running: 2, waiting: 1 });
    release();
    assert.deepEqual(await Promise.all(accepted), [1, 2, 3]);
    assert.deepEqual(pool.load, { running: 0, waiting: 0 });
    assert.equal(await pool.run(task(5)), 5, "a place freed by a failed or finished task is free again");
  });
});
