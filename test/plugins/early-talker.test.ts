/**
 * early-talker: the judgement by table; then through the wire: a client writing before the banner
 * is refused, a polite one is not (and is remembered), an allowlisted one gets no delay, and a
 * policy that only scores lets the early talker's held command run after the banner. Delays are
 * asserted from the recorded findings, never from the clock.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { judgePregreet } from "../../plugins/early-talker/check.js";
import type { EarlyTalkerFacts } from "../../plugins/early-talker/index.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { connectAs } from "../fixtures/smtp-client.js";
import { closedConnections, lastFinding, tryMail } from "./connection-checks.js";

describe("early-talker judgement", () => {
  const cases: Array<[string, { delayMs: number; talkedEarly: boolean }, boolean, EarlyTalkerFacts]> = [
    [
      "waited the whole delay",
      { delayMs: 3000, talkedEarly: false },
      false,
      { result: "pass", skipped: null, delayMs: 3000 },
    ],
    ["talked first", { delayMs: 3000, talkedEarly: true }, false, { result: "early", skipped: null, delayMs: 3000 }],
    [
      "talked first after a recent pass",
      { delayMs: 0, talkedEarly: true },
      false,
      { result: "early", skipped: null, delayMs: 0 },
    ],
    [
      "no delay: a recent pass",
      { delayMs: 0, talkedEarly: false },
      false,
      { result: "skipped", skipped: "recent-pass", delayMs: 0 },
    ],
    [
      "allowlisted, even talking first",
      { delayMs: 0, talkedEarly: true },
      true,
      { result: "skipped", skipped: "allowlisted", delayMs: 0 },
    ],
  ];
  for (const [name, pregreet, allowlisted, want] of cases) {
    test(name, () => assert.deepEqual(judgePregreet(pregreet, allowlisted, 3000), want));
  }
});

const policy = (on = "") => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
relay: { domains: [example.test] }
pipeline:
  - plugin: early-talker
    delay: 400ms
    allow: [198.51.100.0/24]
${on}
routes: [{ to: discard }]
`;

describe("early-talker through the wire", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startGateway(policy());
  });
  after(() => gw.stop());

  const facts = () => lastFinding<EarlyTalkerFacts>(gw, "early-talker");

  test("a client writing before the banner gets 554 5.5.1 and is disconnected", async () => {
    const client = await connectAs(gw.port, "192.0.2.66", { greeting: false });
    client.write("EHLO early.test\r\n");
    const reply = await client.reply();
    assert.equal(reply.raw, "554 5.5.1 Protocol error: talking before the greeting");
    await client.waitClosed();
    assert.deepEqual(facts(), { result: "early", skipped: null, delayMs: 400 });
  });

  test("a polite client waits the delay, passes, and is not delayed on its next connection", async () => {
    const first = await tryMail(gw.port, "192.0.2.67");
    assert.equal(first.greeting.code, 220);
    assert.equal(first.mail.code, 250);
    assert.deepEqual(facts(), { result: "pass", skipped: null, delayMs: 400 });
    assert.equal((await tryMail(gw.port, "192.0.2.67")).mail.code, 250);
    assert.deepEqual(facts(), { result: "skipped", skipped: "recent-pass", delayMs: 0 });
  });

  test("an allowlisted client gets no delay, and nothing it sends early is held against it", async () => {
    const client = await connectAs(gw.port, "198.51.100.5", { greeting: false });
    client.write("EHLO allowed.test\r\n");
    assert.equal((await client.reply()).code, 220);
    assert.equal((await client.reply()).code, 250);
    assert.equal((await client.command("MAIL FROM:<a@allowed.test>")).code, 250);
    await client.quit();
    assert.deepEqual(facts(), { result: "skipped", skipped: "allowlisted", delayMs: 0 });
  });
});

describe("early-talker: the policy decides", () => {
  test("scored only: the held command runs after the banner and the session goes on", async () => {
    const gw = await startGateway(policy("    on: { early: { score: 5 } }"));
    try {
      const client = await connectAs(gw.port, "192.0.2.68", { greeting: false });
      client.write("EHLO early.test\r\n");
      assert.equal((await client.reply()).code, 220);
      assert.equal((await client.reply()).code, 250);
      assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
      await client.quit();
      assert.equal(lastFinding<EarlyTalkerFacts>(gw, "early-talker").result, "early");
      await closedConnections(gw, 1);
      assert.equal(gw.transactions().at(-1)?.score, 5);
    } finally {
      await gw.stop();
    }
  });
});
