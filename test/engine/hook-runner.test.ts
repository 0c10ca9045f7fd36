/**
 * The one hook runner, through the wire: `pregreet` and `close` hooks run under the same deadline
 * and error handling as the phase hooks. A pregreet hook that throws or hangs yields its entry's
 * onError (never a client let past unjudged); a close hook that hangs is cut at its deadline and
 * holds no slot of the connection it ran for.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const plugin = fileURLToPath(new URL("../fixtures/plugins/around-connection.ts", import.meta.url));

const gateways: TestGateway[] = [];
after(() => Promise.all(gateways.map((gw) => gw.stop())));

async function gateway(entry: string, limits = ""): Promise<TestGateway> {
  const gw = await startGateway(`
version: 1
server: { hostname: gw.test${limits} }
relay: { domains: [example.test] }
pipeline:
  - plugin: ${plugin}
${entry}
routes: [{ to: discard }]
`);
  gateways.push(gw);
  return gw;
}

const hookFailures = (gw: TestGateway, phase: string) =>
  gw.logs.filter((line) => line.msg === "hook failed; applying onError" && line.phase === phase);

describe("pregreet hooks", () => {
  test("a throwing pregreet hook yields the default onError: 451 4.3.0 at MAIL, as a connect hook's would", async () => {
    const gw = await gateway("    pregreet: throw");
    const client = await SmtpTestClient.connect(gw.port);
    assert.equal(client.greeting.code, 220);
    await client.command("EHLO client.test");
    const mail = await client.command("MAIL FROM:<a@sender.test>");
    assert.match(mail.raw, /^451 4\.3\.0 /);
    await client.quit();
    assert.deepEqual(
      hookFailures(gw, "pregreet").map((line) => line.err),
      ["pregreet broke"],
    );
  });

  test("a throwing pregreet hook yields its entry's onError: a disconnect instead of the banner", async () => {
    const gw = await gateway(
      '    pregreet: throw\n    onError: { disconnect: "421 4.3.0 Pregreet check unavailable" }',
    );
    const client = await SmtpTestClient.connect(gw.port, { greeting: false });
    assert.equal((await client.reply()).raw, "421 4.3.0 Pregreet check unavailable");
    await client.waitClosed();
  });

  test("a hanging pregreet hook is cut at its entry's timeout and yields onError", async () => {
    const gw = await gateway(
      '    pregreet: hang\n    timeout: 200ms\n    onError: { disconnect: "421 4.3.0 Too slow" }',
    );
    const client = await SmtpTestClient.connect(gw.port, { greeting: false });
    assert.equal((await client.reply()).raw, "421 4.3.0 Too slow");
    assert.deepEqual(
      hookFailures(gw, "pregreet").map((line) => line.err),
      ["timeout"],
    );
  });

  test("onError: ignore lets a client past a failed pregreet hook, and the failure is still traced", async () => {
    const gw = await gateway("    pregreet: throw\n    onError: ignore");
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
    assert.equal((await client.command("RCPT TO:<b@example.test>")).code, 250);
    await client.command("QUIT");
    await eventually(() => gw.transactions().length === 1, "the transaction's summary line");
    const [summary] = gw.transactions() as Array<{ trace: Array<{ phase: string; plugin: string; error?: string }> }>;
    assert.deepEqual(
      summary.trace.filter((entry) => entry.phase === "pregreet").map((entry) => entry.error),
      ["pregreet broke"],
    );
  });
});

describe("close hooks", () => {
  test("a hanging close hook is cut at its deadline and does not hold the connection's slot", async () => {
    const gw = await gateway("    close: hang\n    timeout: 300ms", ", limits: { maxConnectionsPerIp: 1 }");
    const first = await SmtpTestClient.connect(gw.port);
    await first.quit();
    await eventually(() => gw.gateway.openSessions().sessions === 0, "the first session to end");
    assert.deepEqual(gw.gateway.openSessions(), { sessions: 0, ipSlots: 0 });
    // The only slot of this address is free again while the first connection's close hook still hangs.
    const second = await SmtpTestClient.connect(gw.port);
    assert.equal(second.greeting.code, 220);
    await second.quit();
    await eventually(() => hookFailures(gw, "close").length === 2, "both close hooks cut at their deadline");
    assert.deepEqual(
      hookFailures(gw, "close").map((line) => line.err),
      ["timeout", "timeout"],
    );
  });

  test("a throwing close hook is logged with its plugin and phase, and the gateway keeps serving", async () => {
    const gw = await gateway("    close: throw");
    const first = await SmtpTestClient.connect(gw.port);
    await first.quit();
    await eventually(() => hookFailures(gw, "close").length === 1, "the close hook's failure");
    assert.equal(hookFailures(gw, "close")[0].plugin, plugin);
    const second = await SmtpTestClient.connect(gw.port);
    assert.equal(second.greeting.code, 220);
    await second.quit();
  });
});
