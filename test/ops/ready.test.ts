/**
 * Acceptance: /readyz turns unready when the spool cannot be written or Redis is down,
 * and ready again after; a stopping gateway is unready. /healthz stays 200 throughout.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { loadPolicy } from "../../app/catalogue.js";
import { gatewayEndpoints, type OpsServer, type Readiness, startOpsServer } from "../../core/observability/http.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { startRedis, type TestRedis } from "../fixtures/redis.js";

async function readyz(base: string): Promise<{ status: number; body: Readiness }> {
  const response = await fetch(`${base}/readyz`);
  return { status: response.status, body: (await response.json()) as Readiness };
}

describe("/readyz", () => {
  let redis: TestRedis;
  let gw: TestGateway;
  let ops: OpsServer;
  let base: string;

  before(async () => {
    redis = await startRedis();
    gw = await startGateway(`
version: 1
server: { hostname: mx.gateway.test }
state: { store: { redis: "${redis.url}" } }
relay: { domains: [example.test] }
routes: [{ to: discard }]
delivery: { mode: queue, spool: ./spool }
`);
    ops = await startOpsServer("127.0.0.1:0", gatewayEndpoints(gw.gateway));
    base = `http://127.0.0.1:${ops.address.port}`;
  });
  after(async () => {
    await ops.close();
    await gw.stop();
    await redis.stop();
  });

  test("ready when listening, the spool is writable and Redis answers", async () => {
    const { status, body } = await readyz(base);
    assert.equal(status, 200);
    assert.deepEqual(
      { ready: body.ready, checks: body.checks },
      { ready: true, checks: { listening: { ok: true }, spool: { ok: true }, state: { ok: true } } },
    );
  });

  test("says whether the policy file on disk is the one running, without taking traffic away", async () => {
    const file = join(gw.dir, "policy.yaml");
    const first = (await readyz(base)).body.policy;
    assert.ok(first?.current && first.running === first.file && first.running.length === 64, JSON.stringify(first));
    await writeFile(file, `${await readFile(file, "utf8")}# edited, not yet reloaded\n`);
    const edited = await readyz(base);
    assert.equal(edited.status, 200);
    assert.equal(edited.body.policy?.current, false);
    assert.notEqual(edited.body.policy?.file, edited.body.policy?.running);
    await gw.gateway.reload(await loadPolicy(file));
    assert.equal((await readyz(base)).body.policy?.current, true);
  });

  test("unready while the spool cannot be written, ready again after", async () => {
    // Root ignores permission bits, so the spool's work folder is made unusable instead: a file in its place.
    const tmp = join(gw.dir, "spool", "tmp");
    await rm(tmp, { recursive: true });
    await writeFile(tmp, "not a folder");
    try {
      const { status, body } = await readyz(base);
      assert.equal(status, 503);
      assert.equal(body.ready, false);
      assert.equal(body.checks.spool.ok, false);
      assert.match(body.checks.spool.detail ?? "", /ENOTDIR/);
      assert.equal(body.checks.state.ok, true);
    } finally {
      await rm(tmp);
      await mkdir(tmp);
    }
    assert.equal((await readyz(base)).status, 200);
  });

  test("unready while Redis is down, ready again once it is back", async () => {
    await redis.stop();
    const down = await readyz(base);
    assert.equal(down.status, 503);
    assert.equal(down.body.checks.state.ok, false);
    assert.equal(down.body.checks.spool.ok, true);
    assert.equal((await fetch(`${base}/healthz`)).status, 200, "alive though unready");
    await redis.start();
    await eventually(async () => (await readyz(base)).status === 200, "ready after Redis is back");
  });

  test("a stopping gateway is unready", async () => {
    const stopping = gw.gateway.stop(200);
    const { status, body } = await readyz(base);
    assert.equal(status, 503);
    assert.equal(body.checks.listening.ok, false);
    await stopping;
  });
});
