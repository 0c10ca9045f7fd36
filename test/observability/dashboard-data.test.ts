/**
 * What the dashboard's pages are drawn from, without a browser: the activity ring (eviction,
 * per-minute counts over the last hour, filters, networks), the token credentials, and the health
 * the overview reads from a real Redis that goes away and comes back.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { get } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { loadPolicy } from "../../app/catalogue.js";
import { Activity, clientNetwork } from "../../core/observability/dashboard/activity.js";
import { DashboardAuth, loadCredentials } from "../../core/observability/dashboard/auth.js";
import { DashboardListener } from "../../core/observability/dashboard/server.js";
import type { ConnectionSummary, TransactionSummary } from "../../core/observability/observe.js";
import { manualClock } from "../fixtures/clock.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { startGatewayProcess } from "../fixtures/gateway-process.js";
import { startRedis, type TestRedis } from "../fixtures/redis.js";

function transaction(overrides: Partial<TransactionSummary> = {}): TransactionSummary {
  return {
    event: "transaction",
    client: { ip: "192.0.2.1", name: null },
    helo: "client.test",
    tls: null,
    from: "a@sender.test",
    to: ["user@example.test"],
    rejectedRecipients: [],
    size: 100,
    outcome: "accepted",
    reply: "250 2.0.0 Ok: queued",
    decidedBy: null,
    route: null,
    nextHops: ["queue"],
    delivery: [],
    score: 0,
    trace: [],
    ms: 1,
    ...overrides,
  };
}

function connection(overrides: Partial<ConnectionSummary> = {}): ConnectionSummary {
  return {
    event: "connection",
    client: { ip: "203.0.113.9", name: null },
    helo: null,
    tls: null,
    outcome: "refused",
    phase: "connect",
    reply: "554 5.7.1 listed",
    decidedBy: "plugin:dnsbl",
    from: null,
    refusedMails: 1,
    findings: { dnsbl: { listed: true, zone: "bl.test" } },
    score: 0,
    trace: [],
    ms: 1,
    ...overrides,
  };
}

const MINUTE = 60_000;

describe("the activity ring", () => {
  test("keeps the newest entries up to its capacity; older ones are gone from lists and details", () => {
    const activity = new Activity(100, manualClock(), () => []);
    for (let i = 0; i < 150; i++) activity.transaction(transaction({ helo: `h${i}.test` }), {});
    assert.equal(activity.size, 100);
    const { total, rows } = activity.query({}, { offset: 0, limit: 3 });
    assert.equal(total, 100);
    assert.deepEqual(
      rows.map((row) => [row.seq, row.helo]),
      [
        [150, "h149.test"],
        [149, "h148.test"],
        [148, "h147.test"],
      ],
    );
    assert.equal(activity.detail(50), null);
    assert.equal(activity.detail(51)?.helo, "h50.test");
    assert.equal(activity.query({}, { offset: 98, limit: 50 }).rows.length, 2);
  });

  test("counts per minute for the last hour: accepted, rejected, deferred, refused at connect", () => {
    const clock = manualClock(100 * 60 * MINUTE);
    const activity = new Activity(1000, clock, () => []);
    activity.transaction(transaction(), {});
    activity.transaction(transaction({ outcome: "rejected", reply: "550 5.7.1 no" }), {});
    // Refused at MAIL: counted by its reply's class.
    activity.transaction(transaction({ outcome: "refused", reply: "450 4.7.1 later" }), {});
    activity.transaction(transaction({ outcome: "aborted", reply: null }), {});
    activity.connection(connection());
    // A connection that left unrefused is not a decision: neither kept nor counted.
    activity.connection(connection({ outcome: "closed", reply: null, decidedBy: null }));
    assert.deepEqual(activity.totals(), { accepted: 1, rejected: 1, deferred: 1, refusedAtConnect: 1 });
    assert.equal(activity.size, 5);

    clock.advance(30 * MINUTE);
    activity.transaction(transaction(), {});
    const series = activity.series();
    assert.equal(series.minutes.length, 60);
    assert.deepEqual(series.accepted.slice(-31), [1, ...Array(29).fill(0), 1]);
    assert.equal(series.minutes.at(-1), ((100 * 60 + 30) * MINUTE) / 1000);

    clock.advance(30 * MINUTE);
    assert.deepEqual(activity.totals(), { accepted: 1, rejected: 0, deferred: 0, refusedAtConnect: 0 });
  });

  test("filters by client network or text, sender domain or text, recipient, outcome, decider and zone", () => {
    const activity = new Activity(1000, manualClock(), () => []);
    activity.transaction(transaction({ client: { ip: "198.51.100.7", name: "mail.example.net" } }), {});
    activity.transaction(transaction({ client: { ip: "2001:db8:1:2::5", name: null }, from: "b@Other.test" }), {});
    activity.transaction(
      transaction({
        from: "c@sender.test",
        to: [],
        rejectedRecipients: [{ to: "X@elsewhere.test", reply: "550 5.7.1 relay" }],
        outcome: "rejected",
        decidedBy: "core:relay-access",
      }),
      {},
    );
    activity.connection(connection());
    const matching = (filter: Parameters<Activity["query"]>[0]) =>
      activity.query(filter, { offset: 0, limit: 10 }).rows.map((row) => row.seq);
    assert.deepEqual(matching({ client: "198.51.100.0/24" }), [1]);
    assert.deepEqual(matching({ client: "2001:db8:1:2::/64" }), [2]);
    assert.deepEqual(matching({ client: "example.net" }), [1]);
    assert.deepEqual(matching({ client: "192.0.2." }), [3]);
    assert.deepEqual(matching({ sender: "@other.test" }), [2]);
    assert.deepEqual(matching({ sender: "@sender.test" }), [3, 1]);
    assert.deepEqual(matching({ sender: "c@" }), [3]);
    assert.deepEqual(matching({ recipient: "x@elsewhere" }), [3]);
    assert.deepEqual(matching({ outcome: "refused" }), [4]);
    assert.deepEqual(matching({ decider: "core:relay-access" }), [3]);
    assert.deepEqual(matching({ zone: "bl.test" }), [4]);
    assert.deepEqual(matching({ sender: "@sender.test", outcome: "accepted" }), [1]);
  });

  test("refusals count against the client's /24 or IPv6 /64", () => {
    assert.equal(clientNetwork("203.0.113.9"), "203.0.113.0/24");
    assert.equal(clientNetwork("::ffff:203.0.113.9"), "203.0.113.0/24");
    assert.equal(clientNetwork("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    const activity = new Activity(1000, manualClock(), () => []);
    for (const ip of ["203.0.113.9", "203.0.113.10", "2001:db8::1"])
      activity.connection(connection({ client: { ip, name: null } }));
    activity.transaction(transaction({ client: { ip: "192.0.2.1", name: null } }), {});
    assert.deepEqual(activity.decisions().networks, [
      { key: "203.0.113.0/24", count: 2 },
      { key: "2001:db8:0:0::/64", count: 1 },
    ]);
  });
});

describe("token credentials", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "portcullis-dashboard-token-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test("a token file is read once; Bearer or the Basic password pass, anything else does not", async () => {
    const token = "t0ken-of-more-than-thirty-two-characters";
    await writeFile(join(dir, "token"), `${token}\n`);
    const auth = new DashboardAuth(await loadCredentials({ tokenFile: "./token" }, dir));
    assert.equal(await auth.who(`Bearer ${token}`, 0), "token");
    assert.equal(await auth.who(`Basic ${Buffer.from(`anyone:${token}`).toString("base64")}`, 0), "token");
    assert.equal(await auth.who(`Bearer ${token}x`, 0), null);
    assert.equal(await auth.who(undefined, 0), null);
    assert.match(auth.challenge, /^Bearer /);

    await writeFile(join(dir, "short"), "too-short\n");
    await assert.rejects(loadCredentials({ tokenFile: "./short" }, dir), /at least 32 characters/);
  });
});

describe("the overview's health of a real Redis", () => {
  let redis: TestRedis;
  let gw: TestGateway;
  let dashboard: DashboardListener;
  let base: string;
  const token = "another-token-long-enough-for-the-dashboard";

  before(async () => {
    redis = await startRedis();
    gw = await startGateway(
      `
version: 1
server: { hostname: mx.gateway.test }
state: { store: { redis: "${redis.url}" } }
relay: { domains: [example.test] }
routes: [{ to: discard }]
delivery: { mode: queue, spool: ./spool }
observability:
  dashboard: { listen: "127.0.0.1:0", auth: { tokenFile: ./dashboard.token } }
`,
      { files: { "dashboard.token": token } },
    );
    dashboard = new DashboardListener(gw.gateway);
    await dashboard.follow();
    base = `http://127.0.0.1:${dashboard.address!.port}`;
  });
  after(async () => {
    await dashboard.close();
    await gw.stop();
    await redis.stop();
  });

  const health = async () => {
    const response = await fetch(`${base}/api/overview`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(response.status, 200);
    return ((await response.json()) as { health: { state: { ok: boolean; detail?: string } | null } }).health;
  };

  test("Redis answering, down, and back; no token gets 401", async () => {
    const anonymous = await fetch(`${base}/api/overview`);
    assert.equal(anonymous.status, 401);
    assert.match(anonymous.headers.get("www-authenticate") ?? "", /^Bearer /);
    assert.deepEqual((await health()).state, { ok: true });
    await redis.stop();
    await eventually(async () => (await health()).state?.ok === false, "Redis reported down");
    assert.ok((await health()).state?.detail, "with what failed");
    await redis.start();
    await eventually(async () => (await health()).state?.ok === true, "Redis reported back");
  });

  test("a reload whose token file cannot be read leaves the running dashboard as it was", async () => {
    const file = join(gw.dir, "policy.yaml");
    const text = await readFile(file, "utf8");
    await writeFile(file, text.replace("./dashboard.token", "./missing.token"));
    await gw.gateway.reload(await loadPolicy(file));
    await assert.rejects(
      dashboard.follow(),
      /observability\.dashboard\.auth: .*missing\.token.*the running dashboard stays/,
    );
    assert.deepEqual((await health()).state, { ok: true }, "the old token still opens the old dashboard");
  });
});

describe("portcullis start with a dashboard", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "portcullis-dashboard-start-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const policy = (dashboard: string) => `version: 1
server: { hostname: mx.gateway.test }
relay: { domains: [example.test] }
routes: [{ to: discard }]
delivery: { mode: queue, spool: ./spool }
observability:${dashboard}
`;

  test("refuses to start when the dashboard is reachable from other hosts without auth, naming the line", async () => {
    const file = join(dir, "open.yaml");
    await writeFile(file, policy('\n  dashboard: { listen: "0.0.0.0:0" }'));
    await assert.rejects(startGatewayProcess(file), (error: Error) =>
      error.message.includes(`${file}:7:24 observability.dashboard.listen: 0.0.0.0:0 is reachable from other hosts`),
    );
  });

  test("serves it on loopback, and a reload that removes it stops it", async () => {
    const file = join(dir, "loopback.yaml");
    await writeFile(file, policy('\n  dashboard: { listen: "127.0.0.1:0" }'));
    const gateway = await startGatewayProcess(file);
    try {
      const listening = () => gateway.logs.find((line) => line.msg === "dashboard listening");
      await eventually(() => listening() !== undefined, "a log line says where the dashboard listens");
      const base = `http://${listening()!.dashboard}`;
      const page = await fetch(`${base}/`);
      assert.equal(page.status, 200);
      assert.match(await page.text(), /<script src="\/app\.js" defer><\/script>/);
      assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'none'/);
      // A web page that pointed its own name at 127.0.0.1 (DNS rebinding) gets nothing.
      const { port } = new URL(base);
      assert.equal(await statusFor(Number(port), "rebound.example.net"), 403);
      assert.equal(await statusFor(Number(port), `localhost:${port}`), 200);

      await writeFile(file, policy(" {}"));
      gateway.send("SIGHUP");
      await eventually(
        () => gateway.logs.some((line) => line.msg === "policy reload applied" && line.dashboard === "stopped"),
        "the reload says the dashboard stopped",
      );
      await assert.rejects(fetch(`${base}/`), "nothing listens there any more");
    } finally {
      await gateway.stop();
    }
  });
});

/** The status of GET / on 127.0.0.1:port sent with the given Host header (fetch does not let one set it). */
function statusFor(port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    get({ host: "127.0.0.1", port, path: "/", headers: { host } }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    }).on("error", reject);
  });
}
