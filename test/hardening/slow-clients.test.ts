/**
 * Slow clients (slowloris): a client trickling one byte at a time never trips the idle timeout, so
 * what bounds it is the per-command deadline, the connection lifetime, the per-client slot taken
 * before the greeting, and the short deadlines of stress mode near maxClients. Timeouts are tiny;
 * the bounds the tests wait under are several times the configured deadline, and the byte
 * interval is always shorter than idleTimeout, so only the deadline under test can end a session.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { clientGroup } from "../../core/toolkit/netaddr.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { connectAs, type SmtpReplyLine, SmtpTestClient } from "../fixtures/smtp-client.js";

const ROUTES = "relay: { domains: [example.test] }\nroutes: [{ to: discard }]\n";

/** The next reply, or null if none came within `ms` (a bound for a test that must not hang). */
async function replyWithin(client: SmtpTestClient, ms: number): Promise<SmtpReplyLine | null> {
  const timer = sleep(ms, null);
  return Promise.race([client.reply().catch(() => null), timer]);
}

/** Writes one byte of `text` (then "x" for ever) every `everyMs` until stopped. */
function trickle(socket: Socket, text: string, everyMs: number): () => void {
  let sent = 0;
  const timer = setInterval(() => {
    if (!socket.destroyed) socket.write(sent < text.length ? text[sent++] : "x");
  }, everyMs);
  return () => clearInterval(timer);
}

function cuts(gw: TestGateway, reason: string): Array<Record<string, unknown>> {
  return gw.logs.filter((line) => line.event === "cut" && line.reason === reason);
}

async function settled(gw: TestGateway): Promise<void> {
  await eventually(() => gw.gateway.openSessions().sessions === 0, "every session closed");
  await eventually(() => gw.gateway.openSessions().ipSlots === 0, "every client slot freed");
}

describe("per-command deadline", () => {
  test("a command trickled faster than idleTimeout is cut at commandTimeout with 421 4.4.2", async () => {
    const gw = await startGateway(
      `version: 1\nserver: { limits: { idleTimeout: 500ms, commandTimeout: 800ms } }\n${ROUTES}`,
    );
    try {
      const client = await SmtpTestClient.connect(gw.port);
      // 100 ms between bytes, a fifth of idleTimeout: the idle timeout alone would never fire.
      const stop = trickle(client.socket, "EHLO slow.client.test", 100);
      try {
        const reply = await replyWithin(client, 4000);
        assert.equal(reply?.raw, "421 4.4.2 Command timeout, closing connection");
      } finally {
        stop();
      }
      await client.waitClosed();
      assert.equal(cuts(gw, "command-timeout").length, 1);
      await settled(gw);
    } finally {
      await gw.stop();
    }
  });

  test("the deadline is per command: a session longer than commandTimeout goes through", async () => {
    const gw = await startGateway(
      `version: 1\nserver: { limits: { idleTimeout: 500ms, commandTimeout: 600ms } }\n${ROUTES}`,
    );
    try {
      const client = await SmtpTestClient.connect(gw.port);
      const pause = () => sleep(250);
      assert.equal((await client.command("EHLO client.test")).code, 250);
      await pause();
      assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
      await pause();
      assert.equal((await client.command("RCPT TO:<b@example.test>")).code, 250);
      await pause();
      assert.equal((await client.command("DATA")).code, 354);
      // The message phase has dataTimeout, not the command deadline.
      client.write("Subject: slow\r\n\r\n");
      for (const byte of "xyz") {
        await sleep(300);
        client.write(byte);
      }
      assert.equal((await client.command("\r\n.")).code, 250);
      await pause();
      assert.equal((await client.command("NOOP")).code, 250);
      await client.quit();
      assert.equal(cuts(gw, "command-timeout").length, 0);
    } finally {
      await gw.stop();
    }
  });
});

describe("connection lifetime", () => {
  test("a busy connection is cut at maxConnectionTime with 421 4.4.2", async () => {
    const gw = await startGateway(
      `version: 1\nserver: { limits: { idleTimeout: 500ms, commandTimeout: 500ms, maxConnectionTime: 800ms } }\n${ROUTES}`,
    );
    try {
      const client = await SmtpTestClient.connect(gw.port);
      let last: SmtpReplyLine | null = null;
      // Every NOOP is answered at once, so neither the idle timeout nor the command deadline runs out.
      for (let i = 0; i < 40; i++) {
        if (!client.closed) client.write("NOOP\r\n");
        last = await replyWithin(client, 1000);
        if (last?.code !== 250) break;
        await sleep(100);
      }
      assert.equal(last?.raw, "421 4.4.2 Connection time limit reached, closing connection");
      await client.waitClosed();
      assert.equal(cuts(gw, "connection-time").length, 1);
    } finally {
      await gw.stop();
    }
  });

  test("a message in progress at the limit gets its reply first, then the cut", async () => {
    const gw = await startGateway(
      `version: 1\nserver: { limits: { idleTimeout: 500ms, maxConnectionTime: 400ms } }\n${ROUTES}`,
    );
    try {
      const client = await SmtpTestClient.connect(gw.port);
      await client.command("EHLO client.test");
      await client.command("MAIL FROM:<a@sender.test>");
      await client.command("RCPT TO:<b@example.test>");
      assert.equal((await client.command("DATA")).code, 354);
      const stop = trickle(client.socket, "Subject: slow", 50);
      await sleep(800);
      stop();
      assert.equal((await client.command("\r\n\r\nbody\r\n.")).code, 250);
      assert.equal((await client.reply()).raw, "421 4.4.2 Connection time limit reached, closing connection");
      await client.waitClosed();
    } finally {
      await gw.stop();
    }
  });
});

describe("per-client slots", () => {
  test("IPv4 clients count per address, IPv6 clients per /64", () => {
    const table: Array<[string, string]> = [
      ["192.0.2.1", "192.0.2.1"],
      ["::ffff:192.0.2.1", "192.0.2.1"],
      ["2001:db8:1:2::5", "2001:db8:1:2::/64"],
      ["2001:DB8:0001:0002:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"],
      ["2001:db8::1", "2001:db8:0:0::/64"],
      ["1:2:3:4:5:6:7:8", "1:2:3:4::/64"],
      ["::1", "0:0:0:0::/64"],
      ["fe80::1%eth0", "fe80:0:0:0::/64"],
      ["64:ff9b::192.0.2.1", "64:ff9b:0:0::/64"],
    ];
    for (const [ip, group] of table) assert.equal(clientGroup(ip), group, ip);
  });

  test("a client over maxConnectionsPerIp is refused before the greeting delay and before any session", async () => {
    const gw = await startGateway(
      `version: 1\nserver: { greetingDelay: 300ms, proxyProtocol: true, limits: { maxConnectionsPerIp: 2 } }\n${ROUTES}`,
    );
    try {
      const held = [
        await connectAs(gw.port, "2001:db8:1:2::1"),
        await connectAs(gw.port, "2001:db8:1:2::2"),
        await connectAs(gw.port, "192.0.2.1"),
        await connectAs(gw.port, "192.0.2.1"),
        // Another /64 and another IPv4 address are other clients.
        await connectAs(gw.port, "2001:db8:1:3::1"),
        await connectAs(gw.port, "192.0.2.2"),
      ];
      for (const client of held) assert.equal(client.greeting.code, 220);
      for (const ip of ["2001:db8:1:2::ffff", "192.0.2.1"]) {
        const extra = await connectAs(gw.port, ip);
        assert.equal(extra.greeting.raw, "421 4.7.0 Too many connections from your address");
        await extra.waitClosed();
      }
      const refused = cuts(gw, "per-client");
      assert.deepEqual(
        refused.map((line) => line.client),
        ["2001:db8:1:2::ffff", "192.0.2.1"],
      );
      // Refused at accept: no session was opened, so no connect hook ran for them.
      const opened = new Set(gw.logs.filter((line) => line.event === "connect").map((line) => line.cid));
      assert.equal(opened.size, held.length);
      for (const line of refused) assert.ok(!opened.has(line.cid), "a refused client got a session");
      await Promise.all(held.map((client) => client.quit()));
      await settled(gw);
    } finally {
      await gw.stop();
    }
  });

  test("on ::1 the limit holds for IPv6 clients too", async () => {
    const gw = await startGateway(`version: 1\nserver: { limits: { maxConnectionsPerIp: 2 } }\n${ROUTES}`, {
      listen: "[::1]:0",
    });
    try {
      const held = [await SmtpTestClient.connect(gw.port, { host: "::1" })];
      held.push(await SmtpTestClient.connect(gw.port, { host: "::1" }));
      const extra = await SmtpTestClient.connect(gw.port, { host: "::1" });
      assert.equal(extra.greeting.raw, "421 4.7.0 Too many connections from your address");
      await extra.waitClosed();
      assert.deepEqual(
        cuts(gw, "per-client").map((line) => line.client),
        ["::1"],
      );
      await Promise.all(held.map((client) => client.quit()));
      await settled(gw);
    } finally {
      await gw.stop();
    }
  });
});

describe("stress mode", () => {
  test("at maxClients a new client takes the slot of the one keeping the gateway waiting longest", async () => {
    const gw = await startGateway(`version: 1\nserver: { limits: { maxClients: 2, idleTimeout: 5s } }\n${ROUTES}`);
    try {
      const slowest = await SmtpTestClient.connect(gw.port);
      const slow = await SmtpTestClient.connect(gw.port);
      slow.write("EH");
      await sleep(1200);
      const normal = await SmtpTestClient.connect(gw.port);
      assert.equal(normal.greeting.code, 220);
      assert.equal((await slowest.reply()).raw, "421 4.4.2 Too slow while the server is full, closing connection");
      await slowest.waitClosed();
      assert.equal((await normal.command("EHLO client.test")).code, 250);
      slow.destroy();
      await eventually(() => gw.gateway.openSessions().sessions === 1, "the slow client left");
      const fresh = await SmtpTestClient.connect(gw.port);
      // Nobody has kept the gateway waiting for long now: the next client is refused.
      const extra = await SmtpTestClient.connect(gw.port);
      assert.equal(extra.greeting.raw, "421 4.7.0 Too many connections, try again later");
      assert.deepEqual(
        ["evicted", "max-clients"].map((reason) => cuts(gw, reason).length),
        [1, 1],
      );
      await Promise.all([normal.quit(), fresh.quit()]);
      await settled(gw);
    } finally {
      await gw.stop();
    }
  });

  test("200 slow connections near maxClients are cut at stressTimeout while a normal client delivers", async () => {
    // commandTimeout is far beyond the test's bounds: only the stress deadline can end the slow ones.
    const gw = await startGateway(`
version: 1
server:
  limits:
    maxClients: 220
    maxConnectionsPerIp: 20
    idleTimeout: 3s
    commandTimeout: 10m
    stressThreshold: 0.8
    stressTimeout: 1s
${ROUTES}`);
    const slow: Array<{ socket: Socket; replies: string; closed: boolean; stop: () => void }> = [];
    try {
      // Ten loopback addresses, twenty connections each: every one fits its per-client limit.
      for (let i = 0; i < 200; i++) {
        const socket = connect({ port: gw.port, host: "127.0.0.1", localAddress: `127.0.0.${2 + (i % 10)}` });
        const entry = { socket, replies: "", closed: false, stop: () => {} };
        socket.setEncoding("latin1");
        socket.on("data", (chunk: string) => {
          entry.replies += chunk;
        });
        socket.on("close", () => {
          entry.closed = true;
        });
        socket.on("error", () => undefined);
        slow.push(entry);
      }
      await Promise.all(slow.map(({ socket }) => once(socket, "connect")));
      await eventually(() => slow.every((entry) => entry.replies.startsWith("220 ")), "every slow client greeted");
      // One byte every 2 s, well inside idleTimeout: a trickled EHLO that never ends.
      for (const entry of slow) entry.stop = trickle(entry.socket, "EHLO slow.client.test", 2000);

      const normal = await SmtpTestClient.connect(gw.port);
      const result = await normal.transaction({
        from: "a@sender.test",
        to: ["b@example.test"],
        data: "Subject: hi\r\n\r\nhi\r\n",
      });
      assert.equal(result.data?.code, 250);
      await normal.quit();

      await eventually(() => slow.every((entry) => entry.closed), "every slow connection cut");
      for (const entry of slow) assert.match(entry.replies, /\r\n421 4\.4\.2 Command timeout, closing connection\r\n$/);
      assert.equal(cuts(gw, "command-timeout").length, 200);
      assert.deepEqual(
        gw.logs.filter((line) => line.event === "stress").map((line) => line.on),
        [true, false],
        "stress began with the slow clients and ended when they were gone",
      );
      await settled(gw);
    } finally {
      for (const entry of slow) {
        entry.stop();
        entry.socket.destroy();
      }
      await gw.stop();
    }
  });
});
