/**
 * One DNS query sent by us instead of c-ares, for the two cases where c-ares cannot: names legal
 * in DNS but refused by c-ares as host names (`:`, `/` after expansion, spaces, `%`, `[`… — DNS
 * labels are any octets, RFC 2181 §11; SPF macros build such names, RFC 7208 §7), and a TXT
 * answer holding a record with no strings, which c-ares rejects whole (EBADRESP) though every
 * other record in it is fine. Over UDP, then TCP when the answer is truncated (RFC 7766), to the
 * resolver's own servers; the resolver's cache, deadline and de-duplication apply as to c-ares.
 */
import { randomInt } from "node:crypto";
import { createSocket } from "node:dgram";
import { isIP, Socket } from "node:net";
import * as packet from "dns-packet";
import type { HostPort } from "../toolkit/netaddr.js";

export type WireType = "A" | "AAAA" | "MX" | "TXT" | "PTR" | "CNAME" | "NS";

/** The records of one type in an answer (CNAMEs leading to them skipped), with their smallest TTL. */
export interface WireAnswer {
  readonly records: unknown[];
  readonly ttl: number;
}

/** The parts of a decoded resource record read here (dns-packet types each kind apart). */
interface RecordAnswer {
  readonly type: string;
  readonly ttl?: number;
  readonly data: unknown;
}

/** Node's codes for the DNS response codes (as c-ares reports them). */
const RCODE_ERRORS: Record<string, string> = {
  NXDOMAIN: "ENOTFOUND",
  SERVFAIL: "ESERVFAIL",
  REFUSED: "EREFUSED",
  NOTIMP: "ENOTIMP",
  FORMERR: "EFORMERR",
};

function dnsError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * Asks `servers` in turn (the next one on a network error or timeout) until one answers; throws
 * with Node's DNS codes: ENOTFOUND, ENODATA, ESERVFAIL, EREFUSED, ETIMEOUT, ECONNREFUSED…
 */
export async function wireQuery(
  servers: readonly HostPort[],
  name: string,
  type: WireType,
  timeoutMs: number,
): Promise<WireAnswer> {
  let lastError: Error = dnsError("ECONNREFUSED", `no DNS server for ${type} ${name}`);
  for (const server of servers) {
    let response: packet.DecodedPacket;
    try {
      response = await exchange(server, name, type, timeoutMs);
    } catch (error) {
      lastError = error as Error;
      continue;
    }
    // dns-packet decodes the response code as a name; its types omit it.
    const rcode = (response as { rcode?: string }).rcode ?? "NOERROR";
    if (rcode !== "NOERROR") {
      throw dnsError(RCODE_ERRORS[rcode] ?? "EBADRESP", `${type} ${name}: ${rcode}`);
    }
    const answers = ((response.answers ?? []) as RecordAnswer[]).filter((answer) => answer.type === type);
    if (answers.length === 0) throw dnsError("ENODATA", `${type} ${name}: no data`);
    return {
      records: answers.map(recordValue),
      ttl: Math.min(...answers.map((answer) => answer.ttl ?? 0)),
    };
  }
  throw lastError;
}

/** Each record as node:dns gives it: addresses and names as strings, MX as {exchange, priority}, TXT as its strings. */
/**
 * A TXT string as c-ares hands it to Node (one character per byte), so an answer reads the same
 * whichever path asked. This decodes what a server sent; nothing is written with it.
 */
function txtString(chunk: Uint8Array): string {
  const bytes = Buffer.from(chunk);
  return bytes.toString("latin1");
}

function recordValue(answer: RecordAnswer): unknown {
  switch (answer.type) {
    case "MX": {
      const mx = answer.data as { exchange: string; preference: number };
      return { exchange: mx.exchange, priority: mx.preference };
    }
    case "TXT": {
      const strings = (Array.isArray(answer.data) ? answer.data : [answer.data]) as Array<string | Uint8Array>;
      return strings.map((chunk) => (typeof chunk === "string" ? chunk : txtString(chunk)));
    }
    default:
      return answer.data;
  }
}

function query(name: string, type: WireType): { id: number; bytes: Buffer } {
  const id = randomInt(0, 0x10000);
  const bytes = packet.encode({
    type: "query",
    id,
    flags: packet.RECURSION_DESIRED,
    questions: [{ type, name, class: "IN" }],
  });
  return { id, bytes };
}

/** One question to one server: UDP, and TCP again when the UDP answer comes back truncated. */
async function exchange(
  server: HostPort,
  name: string,
  type: WireType,
  timeoutMs: number,
): Promise<packet.DecodedPacket> {
  const { id, bytes } = query(name, type);
  const udp = await overUdp(server, id, bytes, timeoutMs);
  if (!udp.flag_tc) return udp;
  return overTcp(server, id, bytes, timeoutMs);
}

function overUdp(server: HostPort, id: number, bytes: Buffer, timeoutMs: number): Promise<packet.DecodedPacket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(isIP(server.host) === 6 ? "udp6" : "udp4");
    const timer = setTimeout(() => finish(dnsError("ETIMEOUT", "DNS query timed out")), timeoutMs);
    timer.unref();
    const finish = (error: Error | null, response?: packet.DecodedPacket) => {
      clearTimeout(timer);
      socket.close();
      if (error) reject(error);
      else resolve(response!);
    };
    socket.on("error", (error) => finish(error));
    socket.on("message", (message, remote) => {
      if (remote.port !== server.port) return;
      let response: packet.DecodedPacket;
      try {
        response = packet.decode(message);
      } catch {
        return; // not an answer to us: keep waiting, the deadline still holds
      }
      if (response.id === id) finish(null, response);
    });
    socket.send(bytes, server.port, server.host);
  });
}

function overTcp(server: HostPort, id: number, bytes: Buffer, timeoutMs: number): Promise<packet.DecodedPacket> {
  return new Promise((resolve, reject) => {
    const socket = new Socket();
    const timer = setTimeout(() => finish(dnsError("ETIMEOUT", "DNS query over TCP timed out")), timeoutMs);
    timer.unref();
    let received = Buffer.alloc(0);
    const finish = (error: Error | null, response?: packet.DecodedPacket) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(response!);
    };
    socket.on("error", (error) => finish(error));
    socket.on("data", (chunk) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 2 || received.length < 2 + received.readUInt16BE(0)) return;
      try {
        const response = packet.decode(received.subarray(2, 2 + received.readUInt16BE(0)));
        if (response.id !== id) throw new Error("answer to another query");
        finish(null, response);
      } catch (error) {
        finish(dnsError("EBADRESP", (error as Error).message));
      }
    });
    socket.connect(server.port, server.host, () => {
      const length = Buffer.alloc(2);
      length.writeUInt16BE(bytes.length);
      socket.write(Buffer.concat([length, bytes]));
    });
  });
}
