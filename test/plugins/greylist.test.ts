/**
 * greylist through the test kit with an injected clock (delay, retry window, lifetime, exemptions,
 * the SPF+DMARC pass), its reply through a real gateway, and two gateways on one real Redis, where
 * a retry reaches the other gateway after a real delay.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { runPlugin, runPolicy, type SimulatedTransaction } from "../../app/testkit.js";
import { MemoryStore, RedisStore, type StateStore } from "../../core/state/create.js";
import greylist from "../../plugins/greylist/index.js";
import { manualClock } from "../fixtures/clock.js";
import { startGateway } from "../fixtures/gateway.js";
import { startRedis } from "../fixtures/redis.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;

const base: SimulatedTransaction = { ip: "192.0.2.10", from: "a@sender.test", to: ["b@example.test"] };

function kit(options: unknown, state?: StateStore) {
  const clock = manualClock();
  const store = state ?? new MemoryStore({ clock });
  const run = (input: Partial<SimulatedTransaction> = {}) =>
    runPlugin(greylist, options, { ...base, ...input }, { clock, state: store });
  return { clock, run };
}

describe("greylisting (memory store, injected clock)", () => {
  test("451 4.7.1 first; 451 before the delay; 250 after; passes for its lifetime", async () => {
    const { clock, run } = kit({ delay: "5m", retryWindow: "4h", lifetime: "30d" });
    const first = await run();
    assert.equal(first.outcome, "deferred");
    assert.equal(first.phase, "rcpt");
    assert.deepEqual(first.reply, {
      code: 451,
      enhanced: "4.7.1",
      text: "Greylisted, please try again in 300s",
    });
    clock.advance(4 * MINUTE);
    const early = await run();
    assert.equal(early.outcome, "deferred");
    assert.equal(early.reply?.text, "Greylisted, please try again in 60s");
    clock.advance(MINUTE);
    const passed = await run();
    assert.equal(passed.outcome, "accepted");
    assert.deepEqual(passed.facts.greylist, { status: "passed", retryIn: 0 });
    for (let i = 0; i < 3; i++) {
      clock.advance(29 * DAY);
      const known = await run();
      assert.equal(known.outcome, "accepted", "each pass renews the lifetime");
      assert.equal((known.facts.greylist as { status: string }).status, "known");
    }
    clock.advance(30 * DAY + 1);
    assert.equal((await run()).outcome, "deferred", "unseen for a lifetime: greylisted again");
  });

  test("a triplet is client net, sender and recipient; a retry too late starts over", async () => {
    const { clock, run } = kit({ delay: "5m", retryWindow: "1h" });
    await run();
    clock.advance(5 * MINUTE);
    assert.equal((await run({ ip: "192.0.2.99" })).outcome, "accepted", "same /24");
    assert.equal((await run({ ip: "198.51.100.1" })).outcome, "deferred", "another network");
    assert.equal((await run({ from: "other@sender.test" })).outcome, "deferred", "another sender");
    const mixed = await run({ to: ["b@example.test", "c@example.test"] });
    assert.deepEqual(
      mixed.recipients.map((r) => r.decision?.reply.code ?? 250),
      [250, 451],
      "another recipient",
    );
    clock.advance(2 * 60 * MINUTE);
    assert.equal((await run({ from: "other@sender.test" })).outcome, "deferred", "the old attempt expired");
  });

  test("exemptions: networks, authenticated clients, senders, recipients", async () => {
    const { run } = kit({
      skip: { networks: ["10.0.0.0/8"], senders: ["friend.test"], recipients: ["postmaster@example.test"] },
    });
    assert.equal((await run({ ip: "10.9.8.7" })).outcome, "accepted");
    assert.equal((await run({ authUser: "alice" })).outcome, "accepted");
    assert.equal((await run({ from: "x@friend.test" })).outcome, "accepted");
    assert.equal((await run({ to: ["postmaster@example.test"] })).outcome, "accepted");
    assert.equal((await run()).outcome, "deferred");
  });

  test("an unreachable store applies onStoreError", async () => {
    const log = pino({ level: "silent" });
    for (const [onStoreError, outcome] of [
      ["defer", "deferred"],
      ["allow", "accepted"],
    ] as const) {
      const store = new RedisStore({ url: "redis://127.0.0.1:1/0", log, onStoreError });
      const result = await kit({}, store).run();
      assert.equal(result.outcome, outcome);
      assert.equal((result.facts.greylist as { status: string }).status, "unavailable");
      await store.close();
    }
  });

  test("the options are checked", () => {
    assert.equal(greylist.options.safeParse({ delay: "1h", retryWindow: "30m" }).success, false);
    const skipWhenAuthenticated = {
      skip: { when: [{ "spf.result": "pass" }] },
    };
    assert.equal(greylist.options.safeParse(skipWhenAuthenticated).success, true);
  });
});

describe("greylisting with findings of other plugins", () => {
  let dir: string;
  const api = fileURLToPath(new URL("../../core/index.ts", import.meta.url));
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "portcullis-grey-"));
    // Stands in for fcrdns, spf and dmarc: sets their findings as the options say.
    await writeFile(
      join(dir, "findings.ts"),
      `import { definePlugin, z } from ${JSON.stringify(api)};
export default definePlugin({
  name: "findings",
  options: z.object({ spf: z.string(), dmarc: z.string(), ptr: z.string().optional() }),
  setup: (options) => ({
    connect: async (ctx) => { ctx.connection.verifiedName = options.ptr ?? null; return undefined; },
    mail: async (ctx) => { Object.assign(ctx.facts, { spf: { result: options.spf } }); return undefined; },
    data: async (ctx) => { Object.assign(ctx.facts, { dmarc: { result: options.dmarc } }); return undefined; },
  }),
});
`,
    );
  });
  after(() => rm(dir, { recursive: true, force: true }));

  async function policy(name: string, findings: string, grey: string): Promise<string> {
    const file = join(dir, `${name}.yaml`);
    await writeFile(
      file,
      `version: 1
server: { hostname: gw.test }
relay: { networks: ["0.0.0.0/0", "::/0"] }
pipeline:
  - { plugin: ./findings.ts, ${findings} }
  - { plugin: greylist, ${grey} }
routes: [{ to: discard }]
`,
    );
    return file;
  }

  test("a sender that passes SPF and DMARC skips greylisting when configured", async () => {
    const skip = `at: data, skip: { when: [{ spf.result: pass, dmarc.result: pass }] }`;
    const clock = manualClock();
    const state = new MemoryStore({ clock });
    const run = async (findings: string) =>
      (await runPolicy(await policy(findings.replace(/\W/g, ""), findings, skip), base, { clock, state })).outcome;
    assert.equal(await run("spf: pass, dmarc: pass"), "accepted");
    assert.equal(await run("spf: pass, dmarc: fail"), "deferred");
    assert.equal(await run("spf: softfail, dmarc: pass"), "deferred");
    const unconfigured = await policy("plain", "spf: pass, dmarc: pass", "at: data");
    assert.equal(
      (await runPolicy(unconfigured, { ...base, from: "z@sender.test" }, { clock, state })).outcome,
      "deferred",
    );
  });

  test("ptr-domain: one sender's pool of outbound hosts shares its triplets", async () => {
    const clock = manualClock();
    const state = new MemoryStore({ clock });
    const run = async (ip: string, ptr: string) => {
      const file = await policy(`ptr-${ip}`, `spf: none, dmarc: none, ptr: ${ptr}`, "client: ptr-domain");
      return (await runPolicy(file, { ...base, ip }, { clock, state })).outcome;
    };
    assert.equal(await run("192.0.2.1", "out-1.mail.bigsender.co.uk"), "deferred");
    clock.advance(5 * MINUTE);
    assert.equal(await run("203.0.113.9", "out-7.mta.bigsender.co.uk"), "accepted");
    assert.equal(await run("203.0.113.9", "out-7.mta.other.co.uk"), "deferred");
  });
});

test("through the wire: 451 4.7.1 at RCPT TO", async () => {
  const gw = await startGateway(`
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
pipeline:
  - { plugin: greylist, delay: 2m }
routes: [{ to: discard }]
`);
  try {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<a@sender.test>");
    const rcpt = await client.command("RCPT TO:<b@example.test>");
    assert.equal(rcpt.raw, "451 4.7.1 Greylisted, please try again in 120s");
    await client.quit();
  } finally {
    await gw.stop();
  }
});

describe("two gateways on one Redis", () => {
  test("a retry after the delay passes on the gateway that never saw the first attempt", async () => {
    const redis = await startRedis();
    const policy = `
version: 1
server: { hostname: gw.test }
state: { store: { redis: "${redis.url}" } }
relay: { domains: [example.test] }
pipeline:
  - { plugin: greylist, delay: 300ms, retryWindow: 1m }
routes: [{ to: discard }]
`;
    const gateways = await Promise.all([startGateway(policy), startGateway(policy)]);
    const rcpt = async (port: number) => {
      const client = await SmtpTestClient.connect(port);
      try {
        await client.command("EHLO client.test");
        await client.command("MAIL FROM:<a@sender.test>");
        return (await client.command("RCPT TO:<b@example.test>")).raw;
      } finally {
        await client.quit();
      }
    };
    try {
      const [first, second] = gateways.map((gw) => gw.port);
      assert.match(await rcpt(first), /^451 4\.7\.1 Greylisted/);
      assert.match(await rcpt(first), /^451 4\.7\.1 Greylisted/, "a retry before the delay is deferred again");
      await sleep(1000);
      // Only the shared record can pass here: this gateway's own first sighting would be "new".
      assert.match(await rcpt(second), /^250 /);
      assert.match(await rcpt(first), /^250 /, "and the triplet is known to both");
    } finally {
      await Promise.all(gateways.map((gw) => gw.stop()));
      await redis.stop();
    }
  });
});
