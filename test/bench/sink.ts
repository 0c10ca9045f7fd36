/**
 * Next-hop sinks for the benchmark: they accept every message and count it.
 *
 * "lean" is a minimal SMTP server on node:net, so the sink costs as little as possible and never
 * becomes the bottleneck: it answers a whole pipelined group with one write and finds the end of
 * DATA with Buffer.indexOf instead of a per-line parser. "smtp-server" is the library the gateway
 * itself receives with (greeting delay 0), kept to compare against.
 */
import { once } from "node:events";
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { GatewaySMTPServer } from "../../core/smtp/smtp-server.js";

export type NodeSinkKind = "lean" | "smtp-server";

export interface Sink {
  readonly port: number;
  /** Messages accepted since the sink started. */
  count(): number;
  /** Resolves once `count()` has reached n. */
  waitFor(n: number): Promise<void>;
  close(): Promise<void>;
}

const END_OF_DATA = Buffer.from("\r\n.\r\n");
const EHLO_REPLY = "250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE\r\n";

export async function startSink(kind: NodeSinkKind): Promise<Sink> {
  let accepted = 0;
  const waiters: Array<{ n: number; wake: () => void }> = [];
  const counted = () => {
    accepted++;
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (accepted >= waiters[i].n) waiters.splice(i, 1)[0].wake();
    }
  };
  const server = kind === "lean" ? leanServer(counted) : libraryServer(counted);
  const sockets = new Set<Socket>();
  const netServer: Server = server instanceof GatewaySMTPServer ? server.server : server;
  netServer.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  netServer.listen(0, "127.0.0.1");
  await once(netServer, "listening");
  return {
    port: (netServer.address() as AddressInfo).port,
    count: () => accepted,
    waitFor: (n) =>
      accepted >= n ? Promise.resolve() : new Promise<void>((wake) => waiters.push({ n, wake: () => wake() })),
    close: () =>
      new Promise<void>((done) => {
        for (const socket of sockets) socket.destroy();
        netServer.close(() => done());
      }),
  };
}

function leanServer(counted: () => void): Server {
  return createServer((socket) => {
    let inData = false;
    let pending = "";
    // The last bytes of DATA seen so far, so an end marker split across two reads is still found.
    let tail: Buffer = Buffer.alloc(0);
    // Every reply is a small write the client waits for; Nagle would hold it back for an ACK.
    socket.setNoDelay(true);
    socket.on("error", () => {});
    socket.write("220 sink.bench.test ESMTP\r\n");
    socket.on("data", (chunk: Buffer) => {
      let out = "";
      let pos = 0;
      let quit = false;
      while (pos < chunk.length) {
        if (inData) {
          let end = -1;
          if (tail.length > 0) {
            const seam = Buffer.concat([tail, chunk.subarray(pos, pos + 4)]);
            const at = seam.indexOf(END_OF_DATA);
            if (at !== -1) end = pos + at + END_OF_DATA.length - tail.length;
          }
          if (end === -1) {
            const at = chunk.indexOf(END_OF_DATA, pos);
            if (at !== -1) end = at + END_OF_DATA.length;
          }
          if (end === -1) {
            const rest = chunk.subarray(pos);
            tail = rest.length >= 4 ? rest.subarray(rest.length - 4) : Buffer.concat([tail, rest]).subarray(-4);
            break;
          }
          inData = false;
          tail = Buffer.alloc(0);
          pos = end;
          counted();
          out += "250 2.0.0 Ok: queued\r\n";
          continue;
        }
        const newline = chunk.indexOf(10, pos);
        if (newline === -1) {
          pending += chunk.toString("latin1", pos);
          break;
        }
        const line = pending + chunk.toString("latin1", pos, newline);
        pending = "";
        pos = newline + 1;
        switch (line.slice(0, 4).toUpperCase()) {
          case "EHLO":
          case "LHLO":
            out += EHLO_REPLY;
            break;
          case "DATA":
            inData = true;
            // DATA may be empty: its end marker then follows the DATA line's own CRLF directly.
            tail = Buffer.from("\r\n");
            out += "354 End data with <CR><LF>.<CR><LF>\r\n";
            break;
          case "QUIT":
            out += "221 2.0.0 Bye\r\n";
            quit = true;
            break;
          case "HELO":
          case "MAIL":
          case "RCPT":
          case "RSET":
          case "NOOP":
            out += "250 2.0.0 Ok\r\n";
            break;
          default:
            out += "502 5.5.2 Command not implemented\r\n";
        }
        if (quit) break;
      }
      if (quit) socket.end(out);
      else if (out) socket.write(out);
    });
  });
}

function libraryServer(counted: () => void): GatewaySMTPServer {
  const server = new GatewaySMTPServer({
    name: "sink.bench.test",
    logger: false,
    disableReverseLookup: true,
    disabledCommands: ["AUTH", "STARTTLS"],
    maxClients: 100_000,
    greetingDelay: async () => ({ delayMs: 0, trace: [], failed: null }),
    onData(stream, _session, callback) {
      stream.on("data", () => {});
      stream.on("end", () => {
        counted();
        callback(null, "2.0.0 Ok: queued");
      });
    },
  });
  server.on("error", () => {});
  return server;
}
