/**
 * Through a real gateway: per-module log levels (`observability.log.levels`), the exact
 * field set of the transaction summary line, and message bodies never reaching the log, even at
 * debug level.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parsePolicy } from "../../app/catalogue.js";
import { eventually } from "../fixtures/eventually.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { message, sendAs } from "../fixtures/sender-auth.js";
import { closedConnections } from "../plugins/connection-checks.js";

const chatty = fileURLToPath(new URL("./chatty-plugin.ts", import.meta.url));
/** Two entries of one plugin under two names (an entry is named by its `plugin:` path). */
const files = {
  "loud.ts": `export { default } from ${JSON.stringify(chatty)};\n`,
  "quiet.ts": `export { default } from ${JSON.stringify(chatty)};\n`,
};
const MARKER = "BODY-MARKER-7f3a9c";

const policy = (port: number, levels: string) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
relay: { domains: [example.test] }
pipeline:
  - { plugin: ./loud.ts, id: loud }
  - { plugin: ./quiet.ts, id: quiet }
rules:
  - { name: deny-spam, when: { sender.domain: spam.test, recipients: { exists: true } }, action: reject }
routes: [{ to: "smtp://127.0.0.1:${port}" }]
delivery: { mode: queue, spool: ./spool }
observability: { log: { level: debug, levels: ${levels} } }
`;

function send(port: number, from: string, subject: string) {
  return sendAs(port, "192.0.2.10", {
    helo: "client.sender.test",
    from,
    to: ["user@example.test"],
    data: message({ from, to: "<user@example.test>", subject, body: `Hello,\r\n${MARKER} secret text\r\n` }),
  });
}

describe("a plugin at warn, everything else at debug", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay((hop) => policy(hop.port, `{ "plugin:./quiet.ts": warn }`), { files });
    assert.equal((await send(relay.gw.port, "a@sender.test", "levels")).data?.code, 250);
    await relay.hop.waitForMessages(1);
    await closedConnections(relay.gw, 1);
  });
  after(() => relay.stop());

  test("the quiet plugin writes its warn lines only; the loud one its debug lines too", async () => {
    const { logs } = relay.gw;
    const of = (id: string, level: number) => logs.filter((l) => l.chatty === id && l.level === level);
    assert.equal(of("quiet", 20).length, 0, "no debug line from the plugin at warn");
    assert.equal(of("quiet", 40).length, 3, "its warn lines (setup, mail, data) are written");
    assert.equal(of("loud", 20).length, 3, "the other plugin's debug lines are written");
    assert.equal(of("loud", 40).length, 3);
    assert.ok(
      of("quiet", 40).every((l) => l.plugin === "./quiet.ts"),
      "a plugin's lines carry its entry name",
    );
    assert.ok(
      logs.some((l) => l.event === "transaction"),
      "session lines keep the global level",
    );
  });
});

describe("smtp and the queue at warn", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay((hop) => policy(hop.port, `{ smtp: warn, queue: warn }`), { files });
    assert.equal((await send(relay.gw.port, "a@sender.test", "levels")).data?.code, 250);
    await relay.hop.waitForMessages(1);
    // No "close" line to wait for (info): the spool emptying means the worker is done.
    await eventually(() => relay.gw.gateway.queue.spool?.entries().length === 0, "the queue delivered");
  });
  after(() => relay.stop());

  test("no session or queue line below warn; the plugins keep the global level", () => {
    const { logs } = relay.gw;
    assert.deepEqual(
      logs.filter((l) => l.cid !== undefined && (l.level as number) < 40),
      [],
      "connect, transaction and close lines are info: not written",
    );
    assert.deepEqual(
      logs.filter((l) => ["delivery", "done"].includes(l.event as string)),
      [],
      "the queue's delivery lines are info: not written",
    );
    assert.ok(logs.some((l) => l.chatty === "quiet" && l.level === 20));
  });
});

describe("the transaction summary line at debug level", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay((hop) => policy(hop.port, "{}"), { files });
    assert.equal((await send(relay.gw.port, "a@sender.test", "accepted")).data?.code, 250);
    assert.equal((await send(relay.gw.port, "b@spam.test", "rejected")).data?.code, 550);
    await relay.hop.waitForMessages(1);
    await closedConnections(relay.gw, 2);
    await eventually(() => relay.gw.logs.some((l) => l.event === "done"), "the queue delivered");
  });
  after(() => relay.stop());

  // The contract of docs/operations.md ("The transaction summary line"): add fields here and there
  // together; renaming or removing one breaks operators' log pipelines.
  const FIELDS = [
    "level",
    "time",
    "service",
    "cid",
    "tx",
    "event",
    "client",
    "helo",
    "tls",
    "from",
    "to",
    "rejectedRecipients",
    "size",
    "outcome",
    "reply",
    "decidedBy",
    "route",
    "nextHops",
    "delivery",
    "score",
    "trace",
    "ms",
    "msg",
  ];

  test("has exactly the documented fields (`reason` only when a decision refused)", () => {
    const [accepted, rejected] = relay.gw.transactions();
    assert.equal(accepted.outcome, "accepted");
    assert.deepEqual(Object.keys(accepted).sort(), [...FIELDS].sort());
    assert.equal(rejected.outcome, "rejected");
    assert.deepEqual(Object.keys(rejected).sort(), [...FIELDS, "reason"].sort());
    assert.deepEqual(Object.keys(accepted.client as object).sort(), ["ip", "name"]);
  });

  test("no log line carries the message body, even at debug level", () => {
    const { logs } = relay.gw;
    assert.ok(
      logs.some((l) => l.level === 20),
      "debug lines were written",
    );
    const leaking = logs.filter((l) => JSON.stringify(l).includes(MARKER));
    assert.deepEqual(leaking, []);
  });
});

test("a log module that is none of smtp, queue, state, plugin:NAME is refused with what is allowed", async () => {
  await assert.rejects(
    parsePolicy("version: 1\nobservability: { log: { levels: { sessions: debug } } }\n", "p.yaml"),
    /observability\.log\.levels\.sessions: a log module is smtp, queue, state or plugin:NAME/,
  );
});
