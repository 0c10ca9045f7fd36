/**
 * rate-limit: what a transaction costs (pure), limits through the test kit with an injected clock
 * and the memory store, the tarpit, disconnect and the hits metric through a real gateway, then
 * real gateways on one real Redis: two gateway processes sharing a limit exactly, and a Redis
 * outage in the middle of a run; two gateways sharing a real Redis Cluster exactly; a gateway on
 * a Sentinel-watched primary that is killed mid-run.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { runPlugin, runPolicy, type SimulatedTransaction } from "../../app/testkit.js";
import type { Address, ConnectionContext } from "../../core/contract/api.js";
import { gatewayEndpoints, type OpsServer, startOpsServer } from "../../core/observability/http.js";
import { MemoryStore, RedisStore, type StateStore } from "../../core/state/create.js";
import { demand, growth, type LimitShape, type TransactionView } from "../../plugins/rate-limit/demand.js";
import rateLimit from "../../plugins/rate-limit/index.js";
import { manualClock } from "../fixtures/clock.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { CLI, type GatewayProcess, startGatewayProcess } from "../fixtures/gateway-process.js";
import { closedPort } from "../fixtures/next-hop.js";
import {
  startRedis,
  startRedisCluster,
  startRedisSentinel,
  type TestRedis,
  type TestRedisCluster,
  type TestRedisSentinel,
} from "../fixtures/redis.js";
import { connectAs } from "../fixtures/smtp-client.js";
import { type Scrape, scrape } from "../ops/scrape.js";

const HOUR = 3_600_000;

function address(text: string): Address {
  const at = text.lastIndexOf("@");
  return { address: text, local: text.slice(0, at), domain: text.slice(at + 1).toLowerCase(), args: {} };
}

const connection = {
  client: { ip: "192.0.2.10", port: 0, family: 4 },
  helo: "mta.sender.test",
  authUser: null,
} as unknown as ConnectionContext;

describe("what a transaction costs", () => {
  const view = (recipients: string[], size = 0): TransactionView => ({
    connection,
    sender: address("a@sender.test"),
    recipients: recipients.map(address),
    size,
  });
  const costs = (shape: LimitShape, v: TransactionView) => Object.fromEntries(demand(shape, v));

  test("a message counts once per key value, recipients per recipient, bytes per message", () => {
    const to = ["x@one.test", "y@one.test", "z@two.test"];
    assert.deepEqual(costs({ key: ["client.ip"], count: "messages" }, view(to)), { "192.0.2.10": 1 });
    assert.deepEqual(costs({ key: ["client.net"], count: "recipients" }, view(to)), { "192.0.2.0/24": 3 });
    assert.deepEqual(costs({ key: ["recipient.domain"], count: "messages" }, view(to)), {
      "one.test": 1,
      "two.test": 1,
    });
    assert.deepEqual(costs({ key: ["recipient.domain"], count: "recipients" }, view(to)), {
      "one.test": 2,
      "two.test": 1,
    });
    assert.deepEqual(costs({ key: ["sender.domain", "helo"], count: "bytes" }, view(to, 500)), {
      "sender.test,mta.sender.test": 500,
    });
    assert.deepEqual(costs({ key: ["auth.user"], count: "messages" }, view(to)), {}, "no AUTH, no key");
    assert.deepEqual(costs({ key: ["client.ip"], count: "connections" }, { connection, recipients: [], size: 0 }), {
      "192.0.2.10": 1,
    });
  });

  test("an attempt's step costs what it adds", () => {
    const shape: LimitShape = { key: ["recipient.domain"], count: "messages" };
    const before = demand(shape, view(["x@one.test"]));
    assert.deepEqual(Object.fromEntries(growth(before, demand(shape, view(["x@one.test", "y@one.test"])))), {});
    assert.deepEqual(Object.fromEntries(growth(before, demand(shape, view(["x@one.test", "z@two.test"])))), {
      "two.test": 1,
    });
  });
});

function kit(options: unknown, state?: StateStore) {
  const clock = manualClock();
  const store = state ?? new MemoryStore({ clock });
  const run = (input: Partial<SimulatedTransaction> = {}) =>
    runPlugin(
      rateLimit,
      options,
      { ip: "192.0.2.10", helo: "mta.sender.test", from: "a@sender.test", to: ["b@example.test"], ...input },
      { clock, state: store },
    );
  return { clock, store, run };
}

describe("limits through the test kit (memory store, injected clock)", () => {
  test("exactly the burst passes; the next is deferred 451 4.7.0 with a retry hint; time refills it", async () => {
    const { clock, run } = kit({ limits: [{ key: "client.ip", rate: "3/1h" }] });
    for (let i = 0; i < 3; i++) assert.equal((await run()).outcome, "accepted");
    const over = await run();
    assert.equal(over.outcome, "deferred");
    assert.equal(over.phase, "mail", "refused at MAIL, before any data is sent");
    assert.deepEqual(over.reply, {
      code: 451,
      enhanced: "4.7.0",
      text: "Rate limit exceeded, try again in 1200s",
    });
    assert.equal((over.facts.rateLimit as { exceeded: string }).exceeded, "client.ip/messages/3/1h");
    clock.advance(20 * 60_000 - 1);
    assert.equal((await run()).outcome, "deferred");
    clock.advance(1);
    assert.equal((await run()).outcome, "accepted");
    assert.equal((await run()).outcome, "deferred");
  });

  test("only accepted transactions count by default; attempts count when configured", async () => {
    // Greylisting after DATA defers every first attempt: with countAt accepted, the retries still get the quota.
    const dir = await mkdtemp(join(tmpdir(), "portcullis-rl-"));
    try {
      const accepted: number[] = [];
      for (const countAt of ["accepted", "attempts"]) {
        const file = join(dir, `${countAt}.yaml`);
        await writeFile(
          file,
          `version: 1
server: { hostname: gw.test }
relay: { networks: ["0.0.0.0/0"] }
pipeline:
  - { plugin: rate-limit, countAt: ${countAt}, limits: [{ key: client.ip, rate: 2/1h }] }
  - { plugin: greylist, at: data, delay: 10m }
routes: [{ to: discard }]
`,
        );
        const clock = manualClock();
        const state = new MemoryStore({ clock });
        const send = (to: string) =>
          runPolicy(file, { ip: "192.0.2.10", from: "a@sender.test", to: [to] }, { clock, state });
        const recipients = ["1@example.test", "2@example.test", "3@example.test"];
        for (const to of recipients) assert.equal((await send(to)).outcome, "deferred");
        clock.advance(10 * 60_000);
        const retries = [];
        for (const to of recipients) retries.push((await send(to)).outcome);
        accepted.push(retries.filter((outcome) => outcome === "accepted").length);
      }
      assert.deepEqual(accepted, [2, 0], "accepted mode: the quota is intact; attempts mode: greylisting used it up");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("recipients: each RCPT is checked against what the transaction already holds", async () => {
    const { run } = kit({ limits: [{ key: "sender.domain", count: "recipients", rate: "5/1h" }] });
    assert.equal((await run({ to: ["1@example.test", "2@example.test", "3@example.test"] })).outcome, "accepted");
    const second = await run({ to: ["4@example.test", "5@example.test", "6@example.test"] });
    assert.equal(second.outcome, "accepted");
    assert.deepEqual(
      second.recipients.map((r) => r.decision?.reply.code ?? 250),
      [250, 250, 451],
    );
    assert.equal((await run()).outcome, "deferred");
  });

  test("per-recipient keys refuse only the recipient whose bucket is empty", async () => {
    const { run } = kit({ limits: [{ key: "recipient.domain", rate: "1/1h" }] });
    assert.equal((await run({ to: ["a@one.test"] })).outcome, "accepted");
    const mixed = await run({ to: ["b@one.test", "c@two.test"] });
    assert.equal(mixed.outcome, "accepted");
    assert.deepEqual(
      mixed.recipients.map((r) => r.decision?.reply.code ?? 250),
      [451, 250],
    );
    assert.deepEqual(mixed.routes, { discard: ["c@two.test"] });
  });

  test("bytes count the message size, a message larger than the burst needs a full bucket", async () => {
    const { clock, run } = kit({ countAt: "attempts", limits: [{ key: "client.ip", count: "bytes", rate: "1KB/1h" }] });
    const big = `Subject: x\r\n\r\n${"x".repeat(2000)}\r\n`;
    assert.equal((await run({ message: big })).outcome, "accepted");
    assert.equal((await run({ message: "Subject: y\r\n\r\nsmall\r\n" })).outcome, "deferred");
    clock.advance(HOUR);
    assert.equal((await run({ message: "Subject: y\r\n\r\nsmall\r\n" })).outcome, "accepted");
  });

  test("composite keys, exemptions by network, authentication and allowlist", async () => {
    const { run } = kit({
      exempt: { networks: ["10.0.0.0/8"] },
      limits: [
        {
          key: ["client.net", "sender.domain"],
          rate: "1/1h",
          exempt: { authenticated: true, keys: ["partner.test"] },
        },
      ],
    });
    assert.equal((await run({ ip: "192.0.2.1" })).outcome, "accepted");
    assert.equal((await run({ ip: "192.0.2.2" })).outcome, "deferred", "same /24 and sender domain");
    assert.equal((await run({ ip: "192.0.2.2", from: "a@other.test" })).outcome, "accepted");
    assert.equal((await run({ ip: "198.51.100.1" })).outcome, "accepted");
    for (let i = 0; i < 3; i++) {
      assert.equal((await run({ ip: "10.1.2.3" })).outcome, "accepted");
      assert.equal((await run({ ip: "192.0.2.3", authUser: "alice" })).outcome, "accepted");
      assert.equal((await run({ ip: "192.0.2.3", from: "x@partner.test" })).outcome, "accepted");
    }
  });

  test("actions: reject with a reply, score, connections at connect", async () => {
    const rejecting = kit({
      limits: [{ key: "sender", rate: "1/1d", action: { reject: "550 5.7.1 Too much mail from {sender}" } }],
    });
    await rejecting.run();
    const refused = await rejecting.run();
    assert.deepEqual(refused.reply, { code: 550, enhanced: "5.7.1", text: "Too much mail from a@sender.test" });

    const scoring = kit({ limits: [{ key: "client.ip", rate: "1/1h", action: { score: 7 } }] });
    assert.equal((await scoring.run()).score, 0);
    const scored = await scoring.run();
    assert.equal(scored.outcome, "accepted");
    assert.equal(scored.score, 7, "scored once, when the transaction is counted");

    const connections = kit({ limits: [{ key: "client.ip", count: "connections", rate: "2/1m", burst: 2 }] });
    assert.equal((await connections.run()).outcome, "accepted");
    assert.equal((await connections.run()).outcome, "accepted");
    const third = await connections.run();
    assert.equal(third.outcome, "deferred");
    assert.equal(third.reply?.enhanced, "4.7.0");
  });

  test("the options are checked: rates, keys per count, duplicate names", () => {
    const parse = (options: unknown) => rateLimit.options.safeParse(options);
    assert.equal(parse({ limits: [{ key: "client.ip", rate: "100/1m" }] }).success, true);
    assert.equal(parse({ limits: [{ key: "client.ip", rate: "100/m" }] }).success, true);
    assert.equal(parse({ limits: [{ key: "client.ip", rate: "100 per minute" }] }).success, false);
    assert.equal(parse({ limits: [{ key: "sender", count: "connections", rate: "1/1m" }] }).success, false);
    assert.equal(parse({ limits: [{ key: "ip", rate: "1/1m" }] }).success, false);
    const twins = parse({
      limits: [
        { key: "client.ip", rate: "1/1m" },
        { key: "client.ip", rate: "1/1m" },
      ],
    });
    assert.equal(twins.success, false);
  });

  test("an unreachable store: onStoreError defer gives 451 4.3.0, allow lets mail through", async () => {
    const closed = `redis://127.0.0.1:${await closedPort()}/0`;
    const log = pino({ level: "silent" });
    for (const [onStoreError, outcome] of [
      ["defer", "deferred"],
      ["allow", "accepted"],
    ] as const) {
      const store = new RedisStore({ url: closed, log, onStoreError });
      const result = await kit({ limits: [{ key: "client.ip", rate: "1/1h" }] }, store).run();
      assert.equal(result.outcome, outcome);
      if (outcome === "deferred") assert.equal(result.reply?.enhanced, "4.3.0");
      assert.equal((result.facts.rateLimit as { storeUnavailable: boolean }).storeUnavailable, true);
      await store.close();
    }
  });
});

const message = "From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: load\r\n\r\nhello\r\n";

/** One transaction from `ip` through the PROXY header; returns the DATA reply code (or the refusal's). */
async function send(port: number, ip: string): Promise<number> {
  const client = await connectAs(port, ip);
  try {
    const result = await client.transaction({ from: "a@sender.test", to: ["b@example.test"], data: message });
    return result.data?.code ?? (result.mail.code !== 250 ? result.mail.code : result.rcpts[0].code);
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

/**
 * `total` transactions from `ip`, eight clients at a time alternating between two gateways as a load
 * balancer would; each gateway's reply codes, and the assertions that together they accepted
 * exactly `limit` (both some) and deferred the rest with 451.
 */
async function sendInterleaved(ports: readonly [number, number], ip: string, total: number, limit: number) {
  const codes: number[][] = [[], []];
  for (let wave = 0; wave < total / 8; wave++) {
    await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        codes[i % 2].push(await send(ports[i % 2], ip));
      }),
    );
  }
  const accepted = codes.map((list) => list.filter((code) => code === 250).length);
  assert.equal(accepted[0] + accepted[1], limit, `accepted of ${total} per gateway: ${accepted.join(", ")}`);
  assert.ok(accepted[0] > 0 && accepted[1] > 0, `both gateways accepted mail: ${accepted.join(", ")}`);
  assert.deepEqual(
    codes.flat().filter((code) => code !== 250),
    Array(total - limit).fill(451),
  );
}

/**
 * One limit on messages per client IP; `store` is the policy's YAML for it (`memory`, `{ redis: "URL" }`).
 * `also` adds a limit (a YAML flow mapping), `timeout` sets the store's.
 */
function policy(
  store: string,
  limit: { onStoreError?: string; rate?: string; action?: string; also?: string; timeout?: string } = {},
): string {
  const action = limit.action ? `, action: ${limit.action}` : "";
  const timeout = limit.timeout ? `, timeout: ${limit.timeout}` : "";
  return `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
state: { store: ${store}, onStoreError: ${limit.onStoreError ?? "defer"}${timeout} }
relay: { domains: [example.test] }
pipeline:
  - plugin: rate-limit
    limits:
      - { key: client.ip, count: messages, rate: ${limit.rate ?? "10/1h"}${action} }
${limit.also ? `      - ${limit.also}\n` : ""}routes: [{ to: discard }]
`;
}

const redisStore = (url: string) => `{ redis: "${url}" }`;

async function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const [code] = await once(child, "exit");
  return { code, stdout, stderr };
}

/** A gateway on the memory store with its metrics endpoint, both stopped once `use` is done. */
async function withGateway(
  policyText: string,
  use: (port: number, metrics: () => Promise<Scrape>) => Promise<void>,
): Promise<void> {
  const gw = await startGateway(policyText);
  const ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
  try {
    await use(gw.port, () => scrape(`http://127.0.0.1:${ops.address.port}`));
  } finally {
    await ops.close();
    await gw.stop();
  }
}

const HITS = "portcullis_rate_limit_hits_total";

/** Every series of the hits counter added up, whatever its labels. */
function allHits(metrics: Scrape): number {
  const series = metrics.text.split("\n").filter((line) => line.startsWith(`${HITS}{`) || line.startsWith(`${HITS} `));
  return series.reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
}

describe("limit actions through a gateway", () => {
  test("a tarpit holds the reply for its delay, then accepts", async () => {
    const TARPIT_MS = 400;
    await withGateway(policy("memory", { rate: "1/1h", action: `{ tarpit: ${TARPIT_MS}ms }` }), async (port) => {
      assert.equal(await send(port, "192.0.2.40"), 250);
      const started = performance.now();
      assert.equal(await send(port, "192.0.2.40"), 250, "a tarpit slows a client down, it does not refuse");
      const waited = performance.now() - started;
      // libuv counts timers in whole milliseconds, so a timer may fire up to one early by this clock.
      assert.ok(waited >= TARPIT_MS - 1, `the transaction ended ${waited.toFixed(1)} ms after it began`);
    });
  });

  test("portcullis_rate_limit_hits_total counts each refusal", async () => {
    await withGateway(policy("memory", { rate: "2/1h" }), async (port, metrics) => {
      assert.equal(allHits(await metrics()), 0);
      const codes = [];
      for (let i = 0; i < 5; i++) codes.push(await send(port, "192.0.2.41"));
      assert.deepEqual(codes, [250, 250, 451, 451, 451]);
      const scraped = await metrics();
      assert.equal(scraped.value(HITS, { phase: "mail", kind: "defer" }), 3);
      assert.equal(allHits(scraped), 3, "counted once per refusal, under no other labels");
    });
  });

  test("disconnect answers 421 4.7.0 at MAIL FROM and closes the connection", async () => {
    await withGateway(policy("memory", { rate: "1/1h", action: "disconnect" }), async (port, metrics) => {
      assert.equal(await send(port, "192.0.2.42"), 250);
      const client = await connectAs(port, "192.0.2.42");
      assert.equal((await client.command("EHLO client.test")).code, 250);
      const refused = await client.command("MAIL FROM:<a@sender.test>");
      assert.match(refused.raw, /^421 4\.7\.0 Rate limit exceeded, try again in \d+s$/);
      await client.waitClosed();
      assert.equal((await metrics()).value(HITS, { phase: "mail", kind: "disconnect" }), 1);
    });
  });
});

describe("rate limits on a shared Redis", () => {
  let redis: TestRedis;
  let dir: string;
  before(async () => {
    redis = await startRedis();
    dir = await mkdtemp(join(tmpdir(), "portcullis-rl-"));
  });
  after(async () => {
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  });

  describe("two gateway processes", () => {
    const L = 10;
    let gateways: GatewayProcess[];
    before(async () => {
      const file = join(dir, "cluster.yaml");
      await writeFile(file, policy(redisStore(redis.url), { rate: `${L}/1h` }));
      gateways = await Promise.all([startGatewayProcess(file), startGatewayProcess(file)]);
    });
    after(() => Promise.all(gateways.map((g) => g.stop())));

    test("share one limit exactly under concurrent clients: L accepted in total, not 2L", async () => {
      await sendInterleaved([gateways[0].port, gateways[1].port], "198.51.100.7", 40, L);
      assert.equal(await send(gateways[0].port, "198.51.100.8"), 250, "another client has its own bucket");
    });

    test("alternating between them, the L-th message passes and the one after it is deferred", async () => {
      const through = (i: number) => gateways[i % 2].port;
      const codes = [];
      for (let i = 0; i <= L; i++) codes.push(await send(through(i), "198.51.100.9"));
      assert.deepEqual(codes, [...Array(L).fill(250), 451]);
      assert.equal(await send(through(L + 1), "198.51.100.9"), 451, "and on the other gateway");
    });
  });

  test("portcullis limits show and reset a bucket", async () => {
    const file = join(dir, "cli.yaml");
    await writeFile(file, policy(redisStore(redis.url), { rate: "5/1h" }));
    const gw = await startGateway(policy(redisStore(redis.url), { rate: "5/1h" }));
    try {
      assert.equal(await send(gw.port, "192.0.2.77"), 250);
      assert.equal(await send(gw.port, "192.0.2.77"), 250);
    } finally {
      await gw.stop();
    }
    const key = "client.ip/messages/5/1h:192.0.2.77";
    const shown = await runCli(["limits", "show", key, "--policy", file]);
    assert.equal(shown.code, 0, shown.stderr);
    const report = JSON.parse(shown.stdout);
    assert.equal(report.key, key);
    assert.equal(report.bucket.burst, 5);
    assert.equal(report.bucket.remaining, 3);
    assert.deepEqual(await runCli(["limits", "reset", key, "--policy", file]), {
      code: 0,
      stdout: `${key}: cleared\n`,
      stderr: "",
    });
    assert.equal((await runCli(["limits", "show", key, "--policy", file])).stdout, `${key}: nothing stored\n`);
    const memory = join(dir, "memory.yaml");
    await writeFile(memory, "version: 1\n");
    const refused = await runCli(["limits", "show", key, "--policy", memory]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /keeps limits in memory/);
    assert.equal((await runCli(["limits", "show"])).code, 2);
  });

  test("state.timeout: a check waits that long for a slow Redis, then applies onStoreError", async () => {
    const ip = "203.0.113.50";
    for (const timeout of ["100ms", "5s"]) {
      const gw = await startGateway(policy(redisStore(redis.url), { rate: "100/1h", timeout }));
      try {
        assert.equal(await send(gw.port, ip), 250, "the store is connected");
        redis.pause();
        if (timeout === "100ms") {
          assert.equal(await send(gw.port, ip), 451, "no answer within 100 ms: onStoreError defer");
        } else {
          // Frozen for a moment far shorter than the timeout: the check waits it out and passes.
          const sending = send(gw.port, ip);
          await sleep(300);
          redis.resume();
          assert.equal(await sending, 250, "the answer came within 5 s");
        }
      } finally {
        redis.resume();
        await gw.stop();
      }
    }
  });

  for (const onStoreError of ["defer", "allow"] as const) {
    test(`Redis stopped mid-run: ${onStoreError}, no stuck connection; limits work again once it is back`, async () => {
      let gw: TestGateway | undefined;
      let ops: OpsServer | undefined;
      try {
        gw = await startGateway(policy(redisStore(redis.url), { onStoreError, rate: "3/1h" }));
        ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
        const base = `http://127.0.0.1:${ops.address.port}`;
        const storeErrors = async () => (await scrape(base)).value("portcullis_state_store_errors_total");
        const port = gw.port;
        assert.equal(await send(port, "203.0.113.5"), 250);
        assert.equal(await storeErrors(), 0);
        await redis.stop();
        const during = await Promise.all(Array.from({ length: 5 }, () => send(port, "203.0.113.5")));
        assert.deepEqual(during, Array(5).fill(onStoreError === "defer" ? 451 : 250));
        // The outage is counted, at least once per transaction that met it.
        const counted = await storeErrors();
        assert.ok(counted >= 5, `store errors counted: ${counted}`);
        if (onStoreError === "defer") {
          const refusal = gw.transactions().at(-1);
          assert.match(String(refusal?.reply), /^451 4\.3\.0 /);
        }
        await eventually(() => gw!.gateway.openSessions().sessions === 0, "every connection ended on the gateway");
        await redis.start();
        // Reconnection runs on ioredis's backoff; the store says when it is back.
        await eventually(
          () => gw!.logs.some((line) => line.msg === "state store reachable again"),
          "the gateway reconnected to Redis",
        );
        const after = [];
        for (let i = 0; i < 4; i++) after.push(await send(port, "203.0.113.6"));
        assert.deepEqual(after, [250, 250, 250, 451], "the limit holds again, without a restart");
        assert.equal(await storeErrors(), counted, "nothing more counted once Redis is back");
      } finally {
        await redis.start();
        await ops?.close();
        await gw?.stop();
      }
    });
  }
});

describe("rate limits on a Redis Cluster", () => {
  const L = 10;
  const DOMAIN_RATE = 1000;
  let cluster: TestRedisCluster;
  let gateways: TestGateway[] = [];
  let store: RedisStore | undefined;
  before(async () => {
    cluster = await startRedisCluster();
    const nodes = `{ cluster: { nodes: [${cluster.nodes.map((url) => `"${url}"`).join(", ")}] } }`;
    // A second limit puts two buckets, on two slots, in every step's batch.
    // A store timeout of a second: on a shared test machine a slow answer must not pass for an outage.
    const text = policy(nodes, {
      rate: `${L}/1h`,
      timeout: "1s",
      also: `{ key: sender.domain, count: messages, rate: ${DOMAIN_RATE}/1h }`,
    });
    gateways = await Promise.all([startGateway(text), startGateway(text)]);
  });
  after(async () => {
    await store?.close();
    await Promise.all(gateways.map((g) => g.stop()));
    await cluster.stop();
  });

  test("two gateways sharing the cluster accept L in total from clients sent to both, interleaved", async () => {
    await sendInterleaved([gateways[0].port, gateways[1].port], "198.51.100.20", 40, L);
    // The sender's domain paid for accepted mail only: what a refused transaction's batch took
    // from it on its own slot was given back.
    store = new RedisStore({ cluster: cluster.nodes, log: pino({ level: "silent" }), commandTimeoutMs: 1000 });
    const report = await store.inspect(`sender.domain/messages/${DOMAIN_RATE}/1h:sender.test`);
    assert.equal(report.bucket?.remaining, DOMAIN_RATE - L);
  });
});

describe("rate limits on a Sentinel-watched Redis", () => {
  let sentinel: TestRedisSentinel;
  let gw: TestGateway | undefined;
  before(async () => {
    sentinel = await startRedisSentinel();
  });
  after(async () => {
    await gw?.stop();
    await sentinel.stop();
  });

  test("the primary killed mid-run: onStoreError (allow) meanwhile, then the limit goes on from the promoted replica", async () => {
    const sentinels = sentinel.sentinels.map((address) => `"${address}"`).join(", ");
    const store = `{ sentinel: { sentinels: [${sentinels}], name: ${sentinel.name} } }`;
    // A store timeout of a second: on a shared test machine a slow answer must not pass for an outage.
    // allow, not the default defer: the hooks' onError defers too, and must not pass for it.
    gw = await startGateway(policy(store, { rate: "5/1h", timeout: "1s", onStoreError: "allow" }));
    const port = gw.port;
    assert.deepEqual([await send(port, "203.0.113.30"), await send(port, "203.0.113.30")], [250, 250]);
    await sentinel.replicated();
    const dead = await sentinel.currentPrimary();
    await sentinel.killPrimary();
    // The Sentinels wait down-after-milliseconds (500 ms) before they even start a failover.
    const during = await Promise.all(Array.from({ length: 3 }, () => send(port, "203.0.113.30")));
    assert.deepEqual(during, [250, 250, 250], "onStoreError: allow while there is no primary");
    assert.ok(
      gw.logs.some((line) => line.msg === "state store unreachable"),
      "the gateway noticed the primary was gone",
    );
    await eventually(async () => (await sentinel.currentPrimary()) !== dead, "the Sentinels promoted the replica");
    await eventually(
      () => gw!.logs.some((line) => line.msg === "state store reachable again"),
      "the gateway follows the Sentinels to the new primary",
    );
    const after = [];
    for (let i = 0; i < 4; i++) after.push(await send(port, "203.0.113.30"));
    // Mail let through unchecked during the outage counted nowhere.
    assert.deepEqual(after, [250, 250, 250, 451], "two of five were taken before the failover, on the replica too");
  });
});
