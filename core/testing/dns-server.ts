/**
 * An in-process authoritative DNS server over real UDP (and TCP on the same port), so tests and `portcullis test` exercise the
 * real resolver path (c-ares, wire format, error codes) without live DNS.
 *
 * @example
 * const dns = await startDnsServer({ "mx.example.test": { A: ["192.0.2.25"] }, "down.test": "servfail" });
 * const resolver = createResolver({ servers: [dns.address] });
 * // … then `await dns.close()`
 */
import { createSocket } from "node:dgram";
import { createServer, type Socket } from "node:net";
import * as packet from "dns-packet";
import type { RRType } from "../dns/resolver.js";

export type RecordData = string | string[] | { priority: number; exchange: string };

/** Per name: per type a list of answers, or a behaviour. TXT: a string or an array of chunks (each ≤255 bytes; split longer strings automatically). MX: {priority, exchange}. */
export type Behaviour = "servfail" | "timeout" | "refused" | "nxdomain";

export type ZoneData = Record<string, Partial<Record<RRType, RecordData[] | Behaviour>> | Behaviour>;

export interface TestDnsServer {
  /** "127.0.0.1:PORT", ready for `createResolver({ servers: [address] })`. */
  readonly address: string;
  readonly port: number;
  /** Adds or replaces records: a type given for a name replaces that type's answers; a behaviour replaces the name. */
  load(zone: ZoneData): void;
  /** Queries seen, in order; names lower-case without the trailing dot. */
  readonly queries: ReadonlyArray<{ name: string; type: string }>;
  count(name: string, type?: string): number;
  resetQueries(): void;
  close(): Promise<void>;
}

type Entry = Partial<Record<RRType, RecordData[] | Behaviour>> | Behaviour;

const RCODE = { servfail: 2, nxdomain: 3, refused: 5 } as const;

/** Longest CNAME chain followed inside one answer; beyond it the answer stops, like a loop would. */
const MAX_CNAME_HOPS = 8;

export interface DnsServerOptions {
  readonly ttl?: number;
  /**
   * Largest UDP answer in bytes (RFC 1035 §4.2.1 says 512); a longer one goes out truncated (TC set,
   * no records) and the client must ask again over TCP, which answers in full. Default: no limit.
   */
  readonly udpLimit?: number;
}

/** The same port for UDP and TCP; a port free for one may be taken for the other, so a few tries. */
const PORT_TRIES = 5;

export async function startDnsServer(zone: ZoneData = {}, options: DnsServerOptions = {}): Promise<TestDnsServer> {
  const ttl = options.ttl ?? 300;
  const names = new Map<string, Entry>();
  const queries: { name: string; type: string }[] = [];
  let socket = createSocket("udp4");

  const load = (data: ZoneData) => {
    for (const [name, entry] of Object.entries(data)) {
      const key = canonical(name);
      // Bad record data fails here, at the test's own line, not later inside the socket handler.
      if (typeof entry === "object") {
        for (const [type, list] of Object.entries(entry)) {
          if (Array.isArray(list)) {
            packet.encode({ type: "response", answers: list.map((data) => record(key, type as RRType, data, ttl)) });
          }
        }
      }
      const existing = names.get(key);
      names.set(key, typeof entry === "string" || typeof existing !== "object" ? entry : { ...existing, ...entry });
    }
  };

  /** Exact name first, then the closest enclosing wildcard. */
  const find = (name: string): Entry | undefined => {
    const exact = names.get(name);
    if (exact !== undefined) return exact;
    const labels = name.split(".");
    for (let i = 1; i < labels.length; i++) {
      const wildcard = names.get(["*", ...labels.slice(i)].join("."));
      if (wildcard !== undefined) return wildcard;
    }
    return undefined;
  };

  /** The response to a query, or null to stay silent (a timeout). */
  const answer = (query: packet.DecodedPacket): Buffer | null => {
    const question = query.questions?.[0];
    if (!question) return null;
    const name = canonical(question.name);
    queries.push({ name, type: question.type });

    const answers: packet.Answer[] = [];
    let rcode = 0;
    let current = name;
    for (let hop = 0; hop <= MAX_CNAME_HOPS; hop++) {
      const entry = find(current);
      if (entry === undefined) {
        // After a CNAME the rcode describes the last name of the chain (RFC 6604), as BIND answers.
        rcode = RCODE.nxdomain;
        break;
      }
      const behaviour = typeof entry === "string" ? entry : lookupBehaviour(entry, question.type);
      if (behaviour === "timeout") return null;
      if (behaviour !== undefined) {
        rcode = RCODE[behaviour];
        break;
      }
      const records = entry as Partial<Record<RRType, RecordData[]>>;
      const direct = records[question.type as RRType];
      if (direct) {
        answers.push(...direct.map((data) => record(current, question.type as RRType, data, ttl)));
        break;
      }
      const target = records.CNAME?.[0];
      if (typeof target !== "string") break;
      answers.push(record(current, "CNAME", target, ttl));
      current = canonical(target);
    }

    return packet.encode({
      type: "response",
      id: query.id,
      flags: packet.AUTHORITATIVE_ANSWER | ((query.flags ?? 0) & packet.RECURSION_DESIRED) | rcode,
      questions: [question],
      answers,
    });
  };

  const decode = (message: Buffer): packet.DecodedPacket | null => {
    try {
      return packet.decode(message);
    } catch {
      return null; // garbage on a test port: nothing sensible to answer
    }
  };

  const onMessage = (message: Buffer, rinfo: { port: number; address: string }) => {
    const query = decode(message);
    const response = query && answer(query);
    if (!query || !response) return;
    const fits = options.udpLimit === undefined || response.length <= options.udpLimit;
    const sent = fits
      ? response
      : packet.encode({
          type: "response",
          id: query.id,
          flags: packet.TRUNCATED_RESPONSE | ((query.flags ?? 0) & packet.RECURSION_DESIRED),
          questions: query.questions,
        });
    socket.send(sent, rinfo.port, rinfo.address);
  };

  // TCP (RFC 1035 §4.2.2): each message with a two-byte length in front.
  const tcp = createServer((connection: Socket) => {
    let received = Buffer.alloc(0);
    connection.on("error", () => {});
    connection.on("data", (chunk) => {
      received = Buffer.concat([received, chunk]);
      while (received.length >= 2 && received.length >= 2 + received.readUInt16BE(0)) {
        const query = decode(received.subarray(2, 2 + received.readUInt16BE(0)));
        received = received.subarray(2 + received.readUInt16BE(0));
        const response = query && answer(query);
        if (!response) continue;
        const length = Buffer.alloc(2);
        length.writeUInt16BE(response.length);
        connection.write(Buffer.concat([length, response]));
      }
    });
  });

  for (let attempt = 1; ; attempt++) {
    socket.on("message", onMessage);
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(0, "127.0.0.1", () => {
        socket.off("error", reject);
        resolve();
      });
    });
    const udpPort = socket.address().port;
    const listening = await new Promise<boolean>((resolve) => {
      tcp.once("error", () => resolve(false));
      tcp.listen(udpPort, "127.0.0.1", () => resolve(true));
    });
    if (listening) break;
    await new Promise<void>((resolve) => socket.close(() => resolve()));
    socket = createSocket("udp4");
    if (attempt === PORT_TRIES) throw new Error(`no port free for both UDP and TCP after ${PORT_TRIES} tries`);
  }
  // A send error (e.g. the client went away) must not crash the test process.
  socket.on("error", () => {});
  load(zone);

  const port = socket.address().port;
  return {
    address: `127.0.0.1:${port}`,
    port,
    load,
    queries,
    count(name, type) {
      const key = canonical(name);
      return queries.filter((q) => q.name === key && (type === undefined || q.type === type.toUpperCase())).length;
    },
    resetQueries() {
      queries.length = 0;
    },
    close: () =>
      Promise.all([
        new Promise<void>((resolve) => socket.close(() => resolve())),
        new Promise<void>((resolve) => tcp.close(() => resolve())),
      ]).then(() => undefined),
  };
}

function lookupBehaviour(entry: Exclude<Entry, Behaviour>, type: string): Behaviour | undefined {
  const value = entry[type as RRType];
  return typeof value === "string" ? value : undefined;
}

function canonical(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

function record(name: string, type: RRType, data: RecordData, ttl: number): packet.Answer {
  switch (type) {
    case "MX": {
      if (typeof data !== "object" || Array.isArray(data)) throw new TypeError(`MX ${name}: want {priority, exchange}`);
      return { name, type, ttl, data: { preference: data.priority, exchange: data.exchange } };
    }
    case "TXT":
      return { name, type, ttl, data: (Array.isArray(data) ? data : [String(data)]).flatMap(chunk255) };
    default:
      if (typeof data !== "string") throw new TypeError(`${type} ${name}: want a string`);
      return { name, type, ttl, data };
  }
}

/** A TXT character-string holds at most 255 bytes; a longer one makes c-ares fail with EBADRESP. */
function chunk255(text: string): Buffer[] {
  const bytes = Buffer.from(text);
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < bytes.length; offset += 255) chunks.push(bytes.subarray(offset, offset + 255));
  return chunks.length > 0 ? chunks : [Buffer.alloc(0)];
}
