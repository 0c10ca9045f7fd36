/**
 * The exchange with a scanning daemon (clamd, spamd) over a real socket, for the ways a daemon ends
 * a request it will not take: a daemon that stops reading and resets the connection, with its
 * answer lost, is a DaemonClosedEarly (the plugin's "closed early" finding), not a broken daemon —
 * whether the reset hits one of our writes or comes after the whole request sat in the kernel.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { after, test } from "node:test";
import { DaemonClosedEarly, DaemonError, exchange } from "../../plugins/shared/scanner-daemon.js";

/** A daemon that reads `bytes` of a request (none: waits a moment) and then resets the connection without a word. */
async function resettingDaemon(bytes: number): Promise<{ server: Server; port: number }> {
  const server = createServer((socket: Socket) => {
    if (bytes === 0) {
      // After the client has heard the connection open (sooner, the reset would fail its connect).
      setTimeout(() => socket.resetAndDestroy(), 100);
      return;
    }
    let read = 0;
    socket.on("data", (chunk) => {
      read += chunk.length;
      if (read >= bytes) socket.resetAndDestroy();
    });
    socket.on("error", () => {});
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  assert.ok(address && typeof address === "object");
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { server, port: address.port };
}

const neverParsed = (): Error => new Error("no reply was expected");

test("a daemon that reads the whole request and resets without answering closed early", async () => {
  const request = Buffer.alloc(1000, 7);
  const { port } = await resettingDaemon(request.length);
  const daemon = { name: "clamd", address: { host: "127.0.0.1", port }, maxReplyBytes: 1024 };
  const failure = await exchange(
    daemon,
    AbortSignal.timeout(5_000),
    async (connection) => {
      // One write, taken whole by the kernel: the reset comes after it has succeeded.
      await connection.write(request);
    },
    neverParsed,
  ).then(
    () => assert.fail("the exchange succeeded"),
    (error: unknown) => error,
  );
  assert.ok(failure instanceof DaemonClosedEarly, String(failure));
  assert.match(failure.message, /^clamd at 127\.0\.0\.1:\d+: closed the connection after 1000 bytes of the request/);
});

test("a daemon that resets before any of the request is written failed, it did not close early", async () => {
  const { port } = await resettingDaemon(0);
  const daemon = { name: "spamd", address: { host: "127.0.0.1", port }, maxReplyBytes: 1024 };
  // No request was cut short: a request that writes nothing meets the reset alone.
  const failure = await exchange(daemon, AbortSignal.timeout(5_000), async () => {}, neverParsed).then(
    () => assert.fail("the exchange succeeded"),
    (error: unknown) => error,
  );
  assert.ok(failure instanceof DaemonError && !(failure instanceof DaemonClosedEarly), String(failure));
});
