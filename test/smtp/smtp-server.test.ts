/**
 * core/smtp/smtp-server.ts reaches into smtp-server internals (the hard-coded 100 ms greeting delay, the
 * enhanced-status-code table, PROXY trust). smtp-server is pinned to an exact version; these tests
 * make an upgrade that moves those internals fail here, loudly, instead of silently changing timing
 * or replies.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { connect } from "node:net";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { SMTPServer } from "smtp-server";
import { SMTPConnection } from "smtp-server/lib/smtp-connection.js";
import { GatewayConnection } from "../../core/smtp/smtp-server.js";
import { startGateway } from "../fixtures/gateway.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

test("the smtp-server internals the gateway overrides are still there", () => {
  for (const name of ["_setListeners", "connectionReady", "init", "send"] as const) {
    assert.equal(typeof SMTPConnection.prototype[name], "function", `SMTPConnection#${name}`);
  }
  for (const name of ["_expectsProxyHeader", "_onError", "_onClientConnect", "connect"] as const) {
    assert.equal(typeof SMTPServer.prototype[name], "function", `SMTPServer#${name}`);
  }
  // What GatewayConnection#init replaces: the fixed pre-greeting timer.
  assert.match(SMTPConnection.prototype.init.toString(), /setTimeout\(\(\) => this\.connectionReady\(\), 100\)/);
  assert.notEqual(GatewayConnection.prototype.init, SMTPConnection.prototype.init);
  // What GatewayServer#_handleProxy does itself for a socket without a PROXY header: the session id
  // (80 random bits in base 32) and the ignoredHosts flag, answered on the next turn.
  const handleProxy = SMTPServer.prototype._handleProxy.toString();
  assert.match(handleProxy, /randomBytes\(10\)[\s\S]*toString\(32\)[\s\S]*padStart\(16, '0'\)/);
  assert.match(
    handleProxy,
    /ignore = this\.options\.ignoredHosts && this\.options\.ignoredHosts\.includes\(socket\.remoteAddress\)/,
  );
  assert.match(handleProxy, /setImmediate\(\(\) => callback\(null, socketOptions\)\)/);
});

test("the smtp-server internals the slow-client deadlines rely on are still there", () => {
  for (const name of ["_onCommand", "_onClose", "close", "handler_DATA"] as const) {
    assert.equal(typeof SMTPConnection.prototype[name], "function", `SMTPConnection#${name}`);
  }
  // The command callback runs once the command is answered (and its reply flushed): the wait for
  // the next command starts there.
  const onCommand = SMTPConnection.prototype._onCommand.toString();
  assert.match(
    onCommand,
    /const next = callback \|\| \(\(\) => false\);\s*const done = \(\) => this\._whenWritable\(next\);/,
  );
  // DATA calls back right after its 354 with _dataStream set, and clears it just before the
  // message's reply: GatewayConnection#send starts the next wait on that change.
  const data = SMTPConnection.prototype.handler_DATA.toString();
  assert.match(data, /this\._dataStream = parser\.startDataMode/);
  assert.match(data, /this\._dataStream = false;[\s\S]*this\.send\(250/);
  assert.match(data, /this\.send\(354, 'End data with <CR><LF>\.<CR><LF>'\);\s*callback\(\);/);
  // Stress follows connections.size, which close() and _onClose() shrink.
  assert.match(SMTPConnection.prototype.close.toString(), /this\._server\.connections\.delete\(this\)/);
  assert.match(SMTPConnection.prototype._onClose.toString(), /this\._server\.connections\.delete\(this\)/);
  // QUIT answers and half-closes; GatewayConnection#handler_QUIT then closes the socket outright.
  assert.match(SMTPConnection.prototype.handler_QUIT.toString(), /this\.send\(221, 'Bye'\);\s*this\.close\(\);/);
  // The idle timeout's reply, which the gateway logs as an "idle" cut.
  assert.match(SMTPConnection.prototype._onTimeout.toString(), /this\.send\(421, 'Timeout - closing connection'\)/);
});

test("sessions get distinct ids of smtp-server's form (16 base-32 digits), logged as cid", async () => {
  const gw = await startGateway("version: 1\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n");
  try {
    for (let i = 0; i < 30; i++) await (await SmtpTestClient.connect(gw.port)).quit();
    const ids = gw.logs.filter((line) => line.event === "connect").map((line) => String(line.cid));
    assert.equal(ids.length, 30);
    assert.equal(new Set(ids).size, 30);
    for (const id of ids) assert.match(id, /^[0-9a-v]{16}$/);
  } finally {
    await gw.stop();
  }
});

test("after QUIT's 221 the gateway closes the connection, also when the client keeps its own side open", async () => {
  const gw = await startGateway("version: 1\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n");
  try {
    const socket = connect({ port: gw.port, host: "127.0.0.1", allowHalfOpen: true });
    await once(socket, "connect");
    const client = SmtpTestClient.over(socket);
    assert.equal((await client.reply()).code, 220);
    const ended = once(socket, "end");
    // A command pipelined behind QUIT is not answered, and does not cost the client its 221.
    client.write("QUIT\r\nNOOP\r\n");
    assert.equal((await client.reply()).raw, "221 2.0.0 Bye");
    await ended;
    // smtp-server alone would half-close and keep the session until the client's FIN (or 5 s).
    for (let i = 0; i < 100 && gw.gateway.openSessions().sessions > 0; i++) await sleep(20);
    assert.deepEqual(gw.gateway.openSessions(), { sessions: 0, ipSlots: 0 });
    socket.end();
    await client.waitClosed();
    await assert.rejects(client.reply(), /unparsed: ""/, "nothing came after the 221");
    assert.equal(gw.logs.filter((line) => line.event === "close").length, 1, "the connection's close is logged once");
  } finally {
    await gw.stop();
  }
});

test("with a configured greeting delay a client that talks first is refused and closed; a polite one is greeted", async () => {
  const gw = await startGateway(
    "version: 1\nserver: { hostname: gw.test, greetingDelay: 300ms }\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n",
  );
  try {
    const early = await SmtpTestClient.connect(gw.port, { greeting: false });
    early.write("EHLO early.test\r\n");
    assert.equal((await early.reply()).raw, "421 4.0.0 gw.test You talk too soon");
    await early.waitClosed();
    const polite = await SmtpTestClient.connect(gw.port);
    assert.equal(polite.greeting.raw, "220 gw.test ESMTP Portcullis");
    await polite.quit();
  } finally {
    await gw.stop();
  }
});

test("our enhanced status codes are sent as they are, smtp-server's own replies get theirs", async () => {
  const gw = await startGateway(
    "version: 1\nserver: { hostname: gw.test }\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n",
  );
  try {
    const client = await SmtpTestClient.connect(gw.port);
    assert.match((await client.command("EHLO client.test")).lines.join("\n"), /ENHANCEDSTATUSCODES/);
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).raw, "250 2.1.0 Accepted");
    assert.equal((await client.command("RCPT TO:<u@other.test>")).raw, "550 5.7.1 Relaying denied");
    assert.equal((await client.command("RCPT TO:<u@example.test>")).raw, "250 2.1.5 Accepted");
    await client.quit();
  } finally {
    await gw.stop();
  }
});
