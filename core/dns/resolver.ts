/**
 * The one shared DNS resolver. Every lookup of the gateway (plugins, mailauth, delivery) goes through
 * it, so tests and the `try` command can point all of them at one server, and bursts of connections
 * from the same client cost one query.
 *
 * Invariants:
 * - answers are cached for their TTL (A/AAAA carry one; other types use `defaultTtlMs`), never less
 *   than `minTtlMs`;
 * - "no such name" (ENOTFOUND) and "no such record" (ENODATA) are cached for `negativeTtlMs` and
 *   re-thrown with the same code, because mailauth tells them apart from temporary errors by code;
 * - temporary errors are never cached, so the next lookup asks again;
 * - identical concurrent lookups share one query;
 * - no lookup waits longer than `timeoutMs`, whatever c-ares does with its own timeouts;
 * - a name that cannot exist in DNS (a label over 63 octets, over 253 octets in all, an empty
 *   label) is "no such name" (ENOTFOUND) without a query, as RFC 7208 §4.3 wants of SPF;
 * - a name DNS allows but c-ares refuses to send (`:`, spaces, `%`… in a label), and a TXT answer
 *   c-ares cannot decode only because a record in it has no strings, are asked again by our own
 *   query (wire-query.ts) to the same servers, under the same cache, deadline and de-duplication.
 */
import { promises as dns } from "node:dns";
import { isIP } from "node:net";
import { LRUCache } from "lru-cache";
import { type HostPort, normalizeIp, parseHostPort } from "../toolkit/netaddr.js";
import type { WireAnswer, WireType } from "./wire-query.js";

export type RRType = "A" | "AAAA" | "MX" | "TXT" | "PTR" | "CNAME" | "NS";

export interface MxRecord {
  exchange: string;
  priority: number;
}

/** Errors carry Node's DNS codes: ENOTFOUND (NXDOMAIN), ENODATA (no such record), ETIMEOUT, ESERVFAIL, EREFUSED, ECONNREFUSED, EBADRESP… */
export class DnsError extends Error {
  readonly code: string;
  readonly hostname: string;
  readonly rrtype: RRType;

  constructor(code: string, hostname: string, rrtype: RRType, options?: ErrorOptions & { detail?: string }) {
    // NXDOMAIN and "no such record" are answers, thrown again from the cache on every lookup (each
    // clean DNSBL check is one): a stack trace per throw cost ~1% of the edge policy's CPU and
    // never says anything the code and name do not.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`${options?.detail ?? rrtype} ${hostname}: ${code}`, options);
    Error.stackTraceLimit = stackTraceLimit;
    this.name = "DnsError";
    this.code = code;
    this.hostname = hostname;
    this.rrtype = rrtype;
  }
}

export interface DnsStats {
  /** Lookups asked of the resolver. */
  queries: number;
  /** Lookups answered without a new query: from the cache, or by joining an identical query in flight. */
  hits: number;
  /** Lookups that sent a query upstream. */
  misses: number;
  /** Upstream queries now waiting for an answer. */
  inflight: number;
  /** Failed upstream queries by code (ENOTFOUND and ENODATA included; cached negatives are not re-counted). */
  errors: Record<string, number>;
}

export interface DnsResolver {
  resolve4(name: string, signal?: AbortSignal): Promise<string[]>;
  resolve6(name: string, signal?: AbortSignal): Promise<string[]>;
  resolveMx(name: string, signal?: AbortSignal): Promise<MxRecord[]>;
  resolveTxt(name: string, signal?: AbortSignal): Promise<string[][]>;
  /** PTR names of an IP (IPv4 or IPv6; ::ffff: mapped handled as IPv4), lower-case, no trailing dot. */
  reverse(ip: string, signal?: AbortSignal): Promise<string[]>;
  /** mailauth's resolver contract: same results as dns.promises.resolve(name, type); errors with Node codes. */
  resolve(name: string, type: string): Promise<unknown>;
  stats(): DnsStats;
}

export interface ResolverOptions {
  /** "host:port" or "[v6]:port"; the system's servers when absent. */
  servers?: string[];
  /** Hard per-query deadline, default 3000. */
  timeoutMs?: number;
  /** Default 50000 entries. */
  cacheSize?: number;
  /** Default 1000. */
  minTtlMs?: number;
  /** Default 60000. */
  negativeTtlMs?: number;
  /** TTL for types Node gives no TTL for, default 300000. */
  defaultTtlMs?: number;
}

/** Cached negatives are a value, because lru-cache cannot store `undefined` and a rejected fetch is not kept. */
type Entry = { readonly value: unknown } | { readonly negative: string };

interface Answer {
  readonly value: unknown;
  /** Seconds, when the answer carries one. */
  readonly ttl?: number;
}

type Query = () => Promise<Answer>;

const NEGATIVE_CODES: ReadonlySet<string> = new Set(["ENOTFOUND", "ENODATA"]);

/** An error code that is an answer, "no such name" or "no such record", not a failure to get one. */
export function isNegativeAnswer(code: string | undefined): code is "ENOTFOUND" | "ENODATA" {
  return code !== undefined && NEGATIVE_CODES.has(code);
}

export function createResolver(options: ResolverOptions = {}): DnsResolver {
  const timeoutMs = options.timeoutMs ?? 3000;
  const minTtlMs = options.minTtlMs ?? 1000;
  const negativeTtlMs = Math.max(options.negativeTtlMs ?? 60_000, minTtlMs);
  const defaultTtlMs = Math.max(options.defaultTtlMs ?? 300_000, minTtlMs);

  // tries: 1 because our own deadline bounds the wait; a retry would only outlive it.
  const resolver = new dns.Resolver({ timeout: timeoutMs, tries: 1 });
  if (options.servers?.length) resolver.setServers(options.servers);

  const stats: DnsStats = { queries: 0, hits: 0, misses: 0, inflight: 0, errors: {} };

  let servers: HostPort[] | undefined;
  /**
   * c-ares's query, or ours when c-ares refuses the name (EBADNAME) or cannot decode a TXT answer
   * (EBADRESP: a record without strings, which RFC 1035 does not allow but servers send).
   */
  const withWireFallback =
    (type: WireType, name: string, cares: () => Promise<Answer>, fromWire: (answer: WireAnswer) => Answer): Query =>
    () =>
      cares().catch((error) => {
        const code = errorCode(error);
        if (code !== "EBADNAME" && !(type === "TXT" && code === "EBADRESP")) throw error;
        servers ??= resolver.getServers().map(serverAddress);
        const target = servers;
        // Our own query (and dns-packet with it) loads on the first name c-ares refuses, which most
        // processes never see: `check` and an idle gateway do without it.
        return import("./wire-query.js")
          .then(({ wireQuery }) => wireQuery(target, name, type, timeoutMs))
          .then(fromWire);
      });

  /** One query to the servers: the answer, or a negative to cache, each with how long it may be kept. */
  async function ask(query: Query): Promise<{ entry: Entry; ttlMs: number }> {
    stats.misses++;
    stats.inflight++;
    try {
      const answer = await withDeadline(query(), timeoutMs);
      const ttlMs = answer.ttl === undefined ? defaultTtlMs : Math.max(answer.ttl * 1000, minTtlMs);
      return { entry: { value: answer.value }, ttlMs };
    } catch (error) {
      const code = errorCode(error);
      stats.errors[code] = (stats.errors[code] ?? 0) + 1;
      if (isNegativeAnswer(code)) return { entry: { negative: code }, ttlMs: negativeTtlMs };
      throw error;
    } finally {
      stats.inflight--;
    }
  }

  // lru-cache reads a bound of 0 with a TTL as "no limit", so `cacheSize: 0` must not reach it.
  // The bound is a size of one per answer, not `max`, which allocates every slot up front
  // (megabytes of an idle gateway); sized this way the cache grows with the answers it holds.
  const cache =
    options.cacheSize === 0
      ? null
      : new LRUCache<string, Entry, Query>({
          maxSize: options.cacheSize ?? 50_000,
          sizeCalculation: () => 1,
          ttl: defaultTtlMs,
          fetchMethod: async (_key, _stale, { options: setOptions, context: query }) => {
            const { entry, ttlMs } = await ask(query);
            setOptions.ttl = ttlMs;
            return entry;
          },
        });

  async function lookup(rrtype: RRType, name: string, query: Query, signal?: AbortSignal): Promise<unknown> {
    stats.queries++;
    if (signal?.aborted) throw new DnsError("ECANCELLED", name, rrtype);
    if (!possibleName(name)) throw new DnsError("ENOTFOUND", name, rrtype, { detail: `${rrtype} (impossible name)` });
    const status: LRUCache.Status<string, Entry, Query> = {};
    const pending = cache
      ? cache.fetch(`${rrtype}:${canonicalName(name)}`, { context: query, status })
      : ask(query).then(({ entry }) => entry);
    if (status.fetch === "hit" || status.fetch === "inflight") stats.hits++;
    let entry: Entry;
    try {
      entry = (await (signal ? abortable(pending, signal, name, rrtype) : pending))!;
    } catch (error) {
      throw error instanceof DnsError ? error : new DnsError(errorCode(error), name, rrtype, { cause: error });
    }
    if ("negative" in entry) throw new DnsError(entry.negative, name, rrtype);
    return entry.value;
  }

  const wireAddresses = (answer: WireAnswer): Answer => ({ value: answer.records, ttl: answer.ttl });
  const wirePlain = (answer: WireAnswer): Answer => ({ value: answer.records });

  const resolve4 = (name: string, signal?: AbortSignal) =>
    lookup(
      "A",
      name,
      withWireFallback("A", name, () => resolver.resolve4(name, { ttl: true }).then(addressAnswer), wireAddresses),
      signal,
    ).then(copyStrings);
  const resolve6 = (name: string, signal?: AbortSignal) =>
    lookup(
      "AAAA",
      name,
      withWireFallback("AAAA", name, () => resolver.resolve6(name, { ttl: true }).then(addressAnswer), wireAddresses),
      signal,
    ).then(copyStrings);
  const resolveMx = (name: string, signal?: AbortSignal) =>
    lookup(
      "MX",
      name,
      withWireFallback("MX", name, () => resolver.resolveMx(name).then(plainAnswer), wirePlain),
      signal,
    ).then((value) => (value as MxRecord[]).map((mx) => ({ exchange: mx.exchange, priority: mx.priority })));
  const resolveTxt = (name: string, signal?: AbortSignal) =>
    lookup(
      "TXT",
      name,
      withWireFallback("TXT", name, () => resolver.resolveTxt(name).then(plainAnswer), wirePlain),
      signal,
    ).then((value) => (value as string[][]).map((chunks) => chunks.slice()));
  const ptrNames = (names: unknown[]): Answer => ({ value: (names as string[]).map(canonicalName) });
  const resolvePtr = (name: string, signal?: AbortSignal) =>
    lookup(
      "PTR",
      name,
      withWireFallback(
        "PTR",
        name,
        () => resolver.resolvePtr(name).then(ptrNames),
        (answer) => ptrNames(answer.records),
      ),
      signal,
    ).then(copyStrings);
  const resolveCname = (name: string) =>
    lookup(
      "CNAME",
      name,
      withWireFallback("CNAME", name, () => resolver.resolveCname(name).then(plainAnswer), wirePlain),
    ).then(copyStrings);
  const resolveNs = (name: string) =>
    lookup(
      "NS",
      name,
      withWireFallback("NS", name, () => resolver.resolveNs(name).then(plainAnswer), wirePlain),
    ).then(copyStrings);

  return {
    resolve4,
    resolve6,
    resolveMx,
    resolveTxt,
    reverse(ip, signal) {
      const address = normalizeIp(ip);
      const family = isIP(address);
      if (family === 0) return Promise.reject(new DnsError("EINVAL", ip, "PTR"));
      return resolvePtr(`${reverseIpLabels(address)}.${family === 4 ? "in-addr" : "ip6"}.arpa`, signal);
    },
    resolve(name, type) {
      switch (type.toUpperCase()) {
        case "A":
          return resolve4(name);
        case "AAAA":
          return resolve6(name);
        case "MX":
          return resolveMx(name);
        case "TXT":
          return resolveTxt(name);
        case "PTR":
          return resolvePtr(name);
        case "CNAME":
          return resolveCname(name);
        case "NS":
          return resolveNs(name);
        default:
          // rrtype must be one of ours, so the type asked for is named in the message instead.
          return Promise.reject(new DnsError("ENOTIMP", name, "A", { detail: `unsupported type ${type}` }));
      }
    },
    stats: () => ({ ...stats, errors: { ...stats.errors } }),
  };
}

/** "192.0.2.1" → "1.2.0.192", IPv6 → 32 reversed nibbles dot-joined (for DNSBL and PTR names). */
export function reverseIpLabels(ip: string): string {
  const address = normalizeIp(ip);
  switch (isIP(address)) {
    case 4:
      return address.split(".").reverse().join(".");
    case 6:
      return expandIpv6(address).split("").reverse().join(".");
    default:
      throw new TypeError(`"${ip}" is not an IP address`);
  }
}

/** The 32 hex digits of an IPv6 address (already validated), embedded dotted IPv4 included. */
function expandIpv6(address: string): string {
  let text = address.toLowerCase();
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number);
    text = text.slice(0, dotted.index) + ((a << 8) | b).toString(16) + ":" + ((c << 8) | d).toString(16);
  }
  const [head, tail] = text.split("::");
  const headGroups = head ? head.split(":") : [];
  const tailGroups = tail ? tail.split(":") : [];
  const groups =
    tail === undefined
      ? headGroups
      : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill("0"), ...tailGroups];
  return groups.map((group) => group.padStart(4, "0")).join("");
}

function addressAnswer(records: { address: string; ttl: number }[]): Answer {
  return {
    value: records.map((record) => record.address),
    // A CNAME whose target has no address comes back as an empty list without a TTL of its own.
    ttl: records.length > 0 ? Math.min(...records.map((record) => record.ttl)) : undefined,
  };
}

function plainAnswer(value: unknown): Answer {
  return { value };
}

function copyStrings(value: unknown): string[] {
  return (value as string[]).slice();
}

/** Longest name in text form without the final dot, longest label (RFC 1035 §2.3.4). */
const MAX_NAME_OCTETS = 253;
const MAX_LABEL_OCTETS = 63;

/** False for a name no DNS zone can hold: a label over 63 octets, over 253 in all, an empty label. */
function possibleName(name: string): boolean {
  const text = name.endsWith(".") ? name.slice(0, -1) : name;
  if (text === "") return true; // the root
  if (Buffer.byteLength(text) > MAX_NAME_OCTETS) return false;
  return text.split(".").every((label) => label.length > 0 && Buffer.byteLength(label) <= MAX_LABEL_OCTETS);
}

/** A server as c-ares lists it ("192.0.2.53", "127.0.0.1:5353", "[::1]:53", "::1") → host and port. */
function serverAddress(text: string): HostPort {
  return parseHostPort(text) ?? { host: text.replace(/^\[|\]$/g, ""), port: 53 };
}

function canonicalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : "EUNKNOWN";
}

/** c-ares stretches its own timeouts (backoff, adaptive) and `cancel()` would abort every query, so the deadline is ours. */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(Object.assign(new Error("DNS deadline"), { code: "ETIMEOUT" })), ms);
    timer.unref();
    promise.then(resolve, reject).finally(() => clearTimeout(timer));
  });
}

/** Abandons the caller's wait only: the shared query goes on and still fills the cache for others. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal, name: string, rrtype: RRType): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new DnsError("ECANCELLED", name, rrtype, { cause: signal.reason }));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
