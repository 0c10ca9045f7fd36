/**
 * What the dashboard shows of the gateway's recent past, kept in memory: a ring of the latest
 * transaction and connection summaries (with their findings), per-minute counts over the last hour,
 * and the policy reloads. It is fed the same summary lines the log gets, so the dashboard never
 * disagrees with the log; nothing here is written to disk.
 */
import { isIP } from "node:net";
import type { Clock } from "../../contract/api.js";
import type { ActivePlugin } from "../../engine/pipeline.js";
import { clientGroup, NetworkList, normalizeIp, parseCidr } from "../../toolkit/netaddr.js";
import { type DeclaredFindings, declaredFindings, type HookReport, hookReport } from "../hook-report.js";
import type { ConnectionSummary, TransactionSummary } from "../observe.js";

/** The four lines of the overview chart. */
export const CHARTED = ["accepted", "rejected", "deferred", "refusedAtConnect"] as const;
export type Charted = (typeof CHARTED)[number];

const MINUTE_MS = 60_000;
/** Minutes the chart covers. */
export const CHART_MINUTES = 60;

/** The authentication results shown per sender domain. */
const AUTH_CHECKS = ["spf", "dkim", "dmarc"] as const;
type AuthCheck = (typeof AUTH_CHECKS)[number];

/** One finished transaction, or a connection that started none. */
export interface ActivityEntry {
  /** Increasing per gateway: the entry's id in links and the order of the ring. */
  readonly seq: number;
  readonly at: number;
  readonly summary: TransactionSummary | ConnectionSummary;
  /** The findings the transaction (or connection) ended with, own and inherited. */
  readonly facts: Readonly<Record<string, unknown>>;
  /** Which pipeline entry declares which findings, under the policy the entry ran. */
  readonly declared: DeclaredFindings;
  /** Lower-cased: what filters match. */
  readonly recipients: readonly string[];
  readonly senderDomain: string | null;
  /** The client's /24 or /64, where refusals are counted. */
  readonly network: string;
  /** The DNSBL zone whose listing counted, when one did. */
  readonly zone: string | null;
  readonly auth: Readonly<Record<AuthCheck, string | null>>;
  readonly charted: Charted | null;
}

/** An entry as a list row: no trace, no findings. */
export interface ActivityRow {
  readonly seq: number;
  readonly at: string;
  readonly kind: "transaction" | "connection";
  readonly client: string;
  readonly clientName: string | null;
  readonly helo: string | null;
  readonly from: string | null;
  readonly to: readonly string[];
  readonly outcome: string;
  readonly decidedBy: string | null;
  readonly reply: string | null;
}

/** An entry in full: its row, its summary line and its steps as `portcullis try --json` shows them. */
export interface ActivityDetail extends ActivityRow, HookReport {
  readonly summary: TransactionSummary | ConnectionSummary;
  readonly score: number;
}

export interface ActivityFilter {
  /** An address or CIDR network (contains), or else a part of the address. */
  readonly client?: string;
  /** `@domain` for the sender's domain exactly, else a part of the address. */
  readonly sender?: string;
  readonly recipient?: string;
  readonly outcome?: string;
  readonly decider?: string;
  readonly zone?: string;
}

export const FILTER_KEYS = ["client", "sender", "recipient", "outcome", "decider", "zone"] as const;

export interface Counted {
  readonly key: string;
  readonly count: number;
}

export interface SenderDomainCount extends Counted {
  /** Per check, how often each result was seen (`{ pass: 3, none: 1 }`). */
  readonly results: Readonly<Record<AuthCheck, Readonly<Record<string, number>>>>;
}

export interface Decisions {
  readonly deciders: readonly Counted[];
  readonly networks: readonly Counted[];
  readonly zones: readonly Counted[];
  readonly senderDomains: readonly SenderDomainCount[];
}

export interface ReloadResult {
  readonly at: string;
  readonly ok: boolean;
}

/** Rows each top list shows. */
const TOP = 10;

const REFUSED = new Set(["rejected", "deferred", "refused"]);

/** Fed by the gateway's observer (core/smtp/gateway.ts) with what it reports to the metrics too. */
export class Activity {
  readonly #ring: Array<ActivityEntry | undefined>;
  /** Where the next entry goes. */
  #head = 0;
  #seq = 0;
  /** Per minute number (epoch minutes), the counts of that minute; only the last hour is kept. */
  readonly #minutes = new Map<number, Record<Charted, number>>();
  #loadedAt: number;
  #lastReload: ReloadResult | null = null;
  readonly #listeners = new Set<() => void>();
  /** The declarations of each pipeline, worked out once per policy version. */
  readonly #declarations = new WeakMap<readonly ActivePlugin[], DeclaredFindings>();

  constructor(
    readonly capacity: number,
    private readonly clock: Clock,
    /** The pipeline running now: a new entry ran under it. */
    private readonly plugins: () => readonly ActivePlugin[],
  ) {
    this.#ring = new Array(capacity);
    this.#loadedAt = clock.now();
  }

  /** Called on every new entry; returns the function that stops it. */
  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  transaction(summary: TransactionSummary, facts: Readonly<Record<string, unknown>> = {}): void {
    const outcome = summary.outcome;
    const charted: Charted | null =
      outcome === "accepted" || outcome === "rejected" || outcome === "deferred"
        ? outcome
        : outcome === "refused"
          ? replyClass(summary.reply)
          : null;
    const at = summary.from.lastIndexOf("@");
    this.#add(summary, facts, {
      recipients: [...summary.to, ...summary.rejectedRecipients.map((r) => r.to)].map((r) => r.toLowerCase()),
      senderDomain: at < 0 ? null : summary.from.slice(at + 1).toLowerCase(),
      charted,
    });
  }

  connection(summary: ConnectionSummary): void {
    // A connection that left without being refused is not a decision: not shown.
    if (summary.outcome !== "refused") return;
    this.#add(summary, summary.findings, {
      recipients: [],
      senderDomain: null,
      charted: "refusedAtConnect",
    });
  }

  policyReload(ok: boolean): void {
    const now = this.clock.now();
    this.#lastReload = { at: new Date(now).toISOString(), ok };
    if (ok) this.#loadedAt = now;
  }

  /** When the running policy was loaded, and what the last reload came to (null: none tried). */
  policyState(): { loadedAt: string; lastReload: ReloadResult | null } {
    return { loadedAt: new Date(this.#loadedAt).toISOString(), lastReload: this.#lastReload };
  }

  #declared(): DeclaredFindings {
    const plugins = this.plugins();
    let declared = this.#declarations.get(plugins);
    if (!declared) {
      declared = declaredFindings(plugins);
      this.#declarations.set(plugins, declared);
    }
    return declared;
  }

  #add(
    summary: TransactionSummary | ConnectionSummary,
    facts: Readonly<Record<string, unknown>>,
    derived: Pick<ActivityEntry, "recipients" | "senderDomain" | "charted">,
  ): void {
    const now = this.clock.now();
    // Own and inherited findings: a transaction's facts inherit the connection's.
    const flat: Record<string, unknown> = {};
    for (const key in facts) flat[key] = facts[key];
    const entry: ActivityEntry = {
      seq: ++this.#seq,
      at: now,
      summary,
      facts: flat,
      declared: this.#declared(),
      zone: listedZone(flat),
      network: clientNetwork(summary.client.ip),
      auth: { spf: result(flat.spf), dkim: result(flat.dkim), dmarc: result(flat.dmarc) },
      ...derived,
    };
    this.#ring[this.#head] = entry;
    this.#head = (this.#head + 1) % this.capacity;
    if (entry.charted) this.#count(now, entry.charted);
    for (const listener of this.#listeners) listener();
  }

  #count(now: number, charted: Charted): void {
    const minute = Math.floor(now / MINUTE_MS);
    let counts = this.#minutes.get(minute);
    if (!counts) {
      counts = { accepted: 0, rejected: 0, deferred: 0, refusedAtConnect: 0 };
      this.#minutes.set(minute, counts);
      for (const old of this.#minutes.keys()) if (old <= minute - CHART_MINUTES) this.#minutes.delete(old);
    }
    counts[charted]++;
  }

  /** The last hour, a point a minute, oldest first: minute start times (seconds) and a series per line. */
  series(): { minutes: number[] } & Record<Charted, number[]> {
    const last = Math.floor(this.clock.now() / MINUTE_MS);
    const out = { minutes: [] as number[], accepted: [], rejected: [], deferred: [], refusedAtConnect: [] } as {
      minutes: number[];
    } & Record<Charted, number[]>;
    for (let minute = last - CHART_MINUTES + 1; minute <= last; minute++) {
      out.minutes.push((minute * MINUTE_MS) / 1000);
      const counts = this.#minutes.get(minute);
      for (const line of CHARTED) out[line].push(counts?.[line] ?? 0);
    }
    return out;
  }

  /** Totals of the last hour per line. */
  totals(): Record<Charted, number> {
    const series = this.series();
    return Object.fromEntries(CHARTED.map((line) => [line, series[line].reduce((a, b) => a + b, 0)])) as Record<
      Charted,
      number
    >;
  }

  /** Newest first. */
  *entries(): Generator<ActivityEntry> {
    for (let i = 1; i <= this.capacity; i++) {
      const entry = this.#ring[(this.#head - i + this.capacity) % this.capacity];
      if (!entry) return;
      yield entry;
    }
  }

  get size(): number {
    return Math.min(this.#seq, this.capacity);
  }

  /** The matching entries, newest first, one page of them. */
  query(filter: ActivityFilter, page: { offset: number; limit: number }): { total: number; rows: ActivityRow[] } {
    const matches = entryMatcher(filter);
    const rows: ActivityRow[] = [];
    let total = 0;
    for (const entry of this.entries()) {
      if (!matches(entry)) continue;
      if (total >= page.offset && rows.length < page.limit) rows.push(row(entry));
      total++;
    }
    return { total, rows };
  }

  detail(seq: number): ActivityDetail | null {
    for (const entry of this.entries()) {
      if (entry.seq === seq) {
        return {
          ...row(entry),
          summary: entry.summary,
          score: entry.summary.score,
          ...hookReport(entry.declared, entry.summary.trace, entry.facts),
        };
      }
      if (entry.seq < seq) break;
    }
    return null;
  }

  /** Who refused, whom, for which listing, and how senders' domains authenticate — over the ring. */
  decisions(): Decisions {
    const deciders = new Map<string, number>();
    const networks = new Map<string, number>();
    const zones = new Map<string, number>();
    const domains = new Map<string, { count: number; results: Record<AuthCheck, Record<string, number>> }>();
    for (const entry of this.entries()) {
      const { summary } = entry;
      if (REFUSED.has(summary.outcome)) {
        if (summary.decidedBy) bump(deciders, summary.decidedBy);
        bump(networks, entry.network);
      }
      if (entry.zone) bump(zones, entry.zone);
      if (entry.senderDomain !== null) {
        let domain = domains.get(entry.senderDomain);
        if (!domain) {
          domain = { count: 0, results: { spf: {}, dkim: {}, dmarc: {} } };
          domains.set(entry.senderDomain, domain);
        }
        domain.count++;
        for (const check of AUTH_CHECKS) {
          const value = entry.auth[check] ?? "none";
          domain.results[check][value] = (domain.results[check][value] ?? 0) + 1;
        }
      }
    }
    return {
      deciders: top(deciders),
      networks: top(networks),
      zones: top(zones),
      senderDomains: [...domains]
        .sort((a, b) => b[1].count - a[1].count || a[0].localeCompare(b[0]))
        .slice(0, TOP)
        .map(([key, { count, results }]) => ({ key, count, results })),
    };
  }
}

function bump(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

function top(map: Map<string, number>): Counted[] {
  return [...map]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, TOP)
    .map(([key, count]) => ({ key, count }));
}

/** A 4xx reply is deferred, anything else refused is rejected. */
function replyClass(reply: string | null): "rejected" | "deferred" {
  return reply?.startsWith("4") ? "deferred" : "rejected";
}

/** The network a refused client is counted in: its /24 (IPv4) or /64 (IPv6). */
export function clientNetwork(ip: string): string {
  const address = normalizeIp(ip);
  return isIP(address) === 4 ? `${address.split(".").slice(0, 3).join(".")}.0/24` : clientGroup(address);
}

/** A finding's `result` (SPF, DKIM, DMARC all have one), when it is text. */
function result(finding: unknown): string | null {
  const value = (finding as { result?: unknown } | undefined)?.result;
  return typeof value === "string" ? value : null;
}

/** The DNSBL zone whose listing counted (the dnsbl finding's `zone`). */
function listedZone(facts: Readonly<Record<string, unknown>>): string | null {
  const dnsbl = facts.dnsbl as { listed?: unknown; zone?: unknown } | undefined;
  return dnsbl?.listed === true && typeof dnsbl.zone === "string" ? dnsbl.zone : null;
}

function row(entry: ActivityEntry): ActivityRow {
  const { summary } = entry;
  const transaction = summary.event === "transaction" ? summary : null;
  return {
    seq: entry.seq,
    at: new Date(entry.at).toISOString(),
    kind: summary.event,
    client: summary.client.ip,
    clientName: summary.client.name,
    helo: summary.helo,
    from: summary.from,
    to: transaction ? [...transaction.to, ...transaction.rejectedRecipients.map((r) => r.to)] : [],
    outcome: summary.outcome,
    decidedBy: summary.decidedBy,
    reply: summary.reply,
  };
}

/** A predicate for the filter; empty fields match everything. */
function entryMatcher(filter: ActivityFilter): (entry: ActivityEntry) => boolean {
  const tests: Array<(entry: ActivityEntry) => boolean> = [];
  const client = filter.client?.trim().toLowerCase();
  if (client) {
    const network = parseCidr(client) ? new NetworkList([client]) : undefined;
    if (network) {
      tests.push((entry) => network.has(entry.summary.client.ip));
    } else {
      tests.push(
        (entry) =>
          entry.summary.client.ip.includes(client) || (entry.summary.client.name ?? "").toLowerCase().includes(client),
      );
    }
  }
  const sender = filter.sender?.trim().toLowerCase();
  if (sender) {
    if (sender.startsWith("@")) tests.push((entry) => entry.senderDomain === sender.slice(1));
    else tests.push((entry) => (entry.summary.from ?? "").toLowerCase().includes(sender));
  }
  const recipient = filter.recipient?.trim().toLowerCase();
  if (recipient) tests.push((entry) => entry.recipients.some((r) => r.includes(recipient)));
  if (filter.outcome) tests.push((entry) => entry.summary.outcome === filter.outcome);
  if (filter.decider) tests.push((entry) => entry.summary.decidedBy === filter.decider);
  if (filter.zone) tests.push((entry) => entry.zone === filter.zone);
  return (entry) => tests.every((test) => test(entry));
}
