/**
 * Prometheus metrics of one gateway: a GatewayObserver that counts events as the core reports them,
 * plus gauges and counters read from their components when scraped (DNS resolver, spool, AUTH,
 * state store), and the shadow policy's counters. A gateway has them only while something reads
 * them (`observability.metrics`, the dashboard, a supervisor): this module and prom-client are
 * imported then, not by a gateway that nobody scrapes. Each
 * gateway owns its Registry, so several gateways in one process (tests) never collide; under
 * `server.workers` the supervisor sums the workers' registries (app/workers.ts).
 *
 * docs/operations.md lists every metric with example alerts; a rename there is a breaking change.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { Clock, ConnectionContext, Facts, HookKind, TraceEntry } from "../contract/api.js";
import type { RefusingDecision } from "../contract/decision.js";
import type { RecipientOutcome } from "../delivery/result.js";
import type { DnsResolver, DnsStats } from "../dns/resolver.js";
import type { QueueEntry } from "../queue/spool.js";
import type { ConnectionSummary, GatewayObserver, TransactionSummary } from "./observe.js";
import type { Difference, ReplayOutcome } from "./replay.js";

export interface MetricSources {
  /** The resolver of the current policy; a reload builds a new one. */
  readonly dns: () => DnsResolver;
  /** The open spool's messages; null while the spool is not open. */
  readonly queue: () => { entries(): readonly QueueEntry[]; readonly bytes: number } | null;
  /** The submission AUTH checker (core/auth), null without `server.auth` or before listening. */
  readonly auth?: () => {
    readonly failed: number;
    /** AUTH attempts refused without a password check, by why (locked out, busy, store unavailable). */
    readonly refused: Readonly<Record<string, number>>;
  } | null;
  /**
   * The shared state store; one that can fail (RedisStore) counts its failed operations
   * in `failures`. The store lives as long as the gateway (reloads keep it).
   */
  readonly state?: () => object;
  readonly clock: Clock;
}

/** Hook latencies run from sub-millisecond (facts in memory) to the hook timeout (DNS, Redis). */
const HOOK_BUCKETS = [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

const ZERO_DNS: DnsStats = { queries: 0, hits: 0, misses: 0, inflight: 0, errors: {} };

/** The phase in which dnsbl looks up each kind of name. */
const DNSBL_TARGET_PHASE = { ip: "connect", ptr: "connect", helo: "helo", sender: "mail" } as const;

export class GatewayMetrics implements GatewayObserver {
  readonly registry = new Registry();
  readonly #connections: Counter<"role" | "port">;
  readonly #activeConnections: Gauge<"role" | "port">;
  readonly #transactions: Counter<"outcome">;
  readonly #connectionOutcomes: Counter<"outcome" | "decided_by">;
  readonly #decisions: Counter<"decided_by" | "kind" | "code">;
  readonly #hookSeconds: Histogram<"plugin" | "phase">;
  readonly #hookErrors: Counter<"plugin" | "phase" | "error">;
  readonly #verdicts: Counter<"plugin" | "verdict">;
  readonly #ruleMatches: Counter<"rule" | "phase">;
  /** Matches of rules in `mode: observe`, which acted nowhere. */
  readonly #ruleObserved: Counter<"rule" | "phase">;
  readonly #dnsblListings: Counter<"zone">;
  readonly #dnsblBroken: Counter<"zone" | "reason">;
  readonly #rateLimitHits: Counter<"phase" | "kind">;
  readonly #deliveries: Counter<"route" | "status">;
  readonly #reloads: Counter<"result">;
  readonly #restartNeeded: Gauge<"key">;
  readonly #cuts: Counter<"reason">;
  readonly #stressChanges: Counter<"state">;
  readonly #underStress: Gauge<"role" | "port">;
  readonly #bouncesSuppressed: Counter<"reason">;
  readonly #shadowDifferences: Counter<"live" | "candidate" | "rule">;
  readonly #shadowTransactions: Counter<"outcome">;
  /** DNS counters of resolvers that earlier policies used, so the totals survive a reload. */
  #retiredDns: DnsStats = ZERO_DNS;
  #resolver: DnsResolver | null = null;

  constructor(private readonly sources: MetricSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    this.#connections = new Counter({
      name: "portcullis_connections_total",
      help: "SMTP connections accepted, by listener role and port",
      labelNames: ["role", "port"] as const,
      registers,
    });
    this.#activeConnections = new Gauge({
      name: "portcullis_connections_active",
      help: "SMTP connections open now, by listener role and port",
      labelNames: ["role", "port"] as const,
      registers,
    });
    this.#transactions = new Counter({
      name: "portcullis_transactions_total",
      help: "Transactions (MAIL FROM to end) by outcome: accepted, rejected (also every recipient refused), deferred, refused (at MAIL), aborted (the client left or reset, no refusal ended it)",
      labelNames: ["outcome"] as const,
      registers,
    });
    this.#connectionOutcomes = new Counter({
      name: "portcullis_connection_outcomes_total",
      help: "Connections that ended without a transaction, by outcome (refused, closed) and who refused (plugin:NAME, rule:NAME, core:NAME; empty when closed)",
      labelNames: ["outcome", "decided_by"] as const,
      registers,
    });
    this.#decisions = new Counter({
      name: "portcullis_decisions_total",
      help: "Refusals answered to clients, by who decided (plugin:NAME, rule:NAME, core:NAME), kind and reply code",
      labelNames: ["decided_by", "kind", "code"] as const,
      registers,
    });
    this.#hookSeconds = new Histogram({
      name: "portcullis_hook_duration_seconds",
      help: "Time a pipeline hook took, by plugin and phase",
      labelNames: ["plugin", "phase"] as const,
      buckets: HOOK_BUCKETS,
      registers,
    });
    this.#hookErrors = new Counter({
      name: "portcullis_hook_errors_total",
      help: "Hooks that threw or timed out (their onError action applied), by plugin, phase and error (timeout|error)",
      labelNames: ["plugin", "phase", "error"] as const,
      registers,
    });
    this.#verdicts = new Counter({
      name: "portcullis_hook_verdicts_total",
      help: "Named verdicts returned by hooks, whatever action the policy maps them to",
      labelNames: ["plugin", "verdict"] as const,
      registers,
    });
    this.#ruleMatches = new Counter({
      name: "portcullis_rule_matches_total",
      help: "Policy rules that matched, by rule and phase",
      labelNames: ["rule", "phase"] as const,
      registers,
    });
    this.#ruleObserved = new Counter({
      name: "portcullis_rule_observed_total",
      help: "Rules in mode: observe that matched and would have acted (they act nowhere), by rule and phase",
      labelNames: ["rule", "phase"] as const,
      registers,
    });
    this.#dnsblListings = new Counter({
      name: "portcullis_dnsbl_listings_total",
      help: "DNSBL listed verdicts, by the zone whose listing decided",
      labelNames: ["zone"] as const,
      registers,
    });
    this.#dnsblBroken = new Counter({
      name: "portcullis_dnsbl_broken_lookups_total",
      help: "DNSBL lookups ignored because the zone is broken, by zone and reason: refused (the zone refuses our resolver), test-point, listed-share",
      labelNames: ["zone", "reason"] as const,
      registers,
    });
    this.#rateLimitHits = new Counter({
      name: "portcullis_rate_limit_hits_total",
      help: "Rate-limit hooks that refused (a limit was exceeded), by phase and decision kind",
      labelNames: ["phase", "kind"] as const,
      registers,
    });
    this.#deliveries = new Counter({
      name: "portcullis_deliveries_total",
      help: "Recipients of delivery attempts by route and result: delivered, deferred (retried), failed (bounced)",
      labelNames: ["route", "status"] as const,
      registers,
    });
    this.#reloads = new Counter({
      name: "portcullis_policy_reloads_total",
      help: "Policy reloads by result: ok, or failed (the previous policy stayed)",
      labelNames: ["result"] as const,
      registers,
    });
    this.#restartNeeded = new Gauge({
      name: "portcullis_restart_needed",
      help: "1 per policy key whose new value waits for a restart (the running process keeps the value it started with)",
      labelNames: ["key"] as const,
      registers,
    });
    this.#cuts = new Counter({
      name: "portcullis_connections_cut_total",
      help: "Connections refused or closed on the gateway's own limits: max-clients, per-client (at connect), idle, command-timeout, connection-time, evicted (slot given to a new client at maxClients)",
      labelNames: ["reason"] as const,
      registers,
    });
    this.#stressChanges = new Counter({
      name: "portcullis_stress_changes_total",
      help: "Times a listener came under stress (near maxClients: short command deadlines) or left it, by state (on, off)",
      labelNames: ["state"] as const,
      registers,
    });
    this.#underStress = new Gauge({
      name: "portcullis_listener_stress",
      help: "1 while a listener is under stress (near maxClients), else 0",
      labelNames: ["role", "port"] as const,
      registers,
    });
    this.#bouncesSuppressed = new Counter({
      name: "portcullis_bounces_suppressed_total",
      help: "DSNs not sent because the original sender is likely forged, by reason: dnsbl-listed, spf-fail, dmarc-fail",
      labelNames: ["reason"] as const,
      registers,
    });
    this.#shadowDifferences = new Counter({
      name: "portcullis_shadow_differences_total",
      help: "Where the shadow policy would answer differently: live and candidate outcome (a transaction outcome, or recipient-accepted/recipient-rejected) and the rule that makes the difference",
      labelNames: ["live", "candidate", "rule"] as const,
      registers,
    });
    this.#shadowTransactions = new Counter({
      name: "portcullis_shadow_transactions_total",
      help: "Transactions the shadow policy evaluated, by the outcome it would have given",
      labelNames: ["outcome"] as const,
      registers,
    });
    this.#reloads.inc({ result: "ok" }, 0);
    this.#reloads.inc({ result: "failed" }, 0);
    this.#scrapedGauges();
  }

  /** The exposition text and its content type, for GET /metrics. */
  async expose(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  connectionOpened(connection: ConnectionContext): void {
    const labels = listenerLabels(connection);
    this.#connections.inc(labels);
    this.#activeConnections.inc(labels);
  }

  connectionClosed(connection: ConnectionContext): void {
    this.#activeConnections.dec(listenerLabels(connection));
  }

  /**
   * The labelled series of the two metrics every hook run touches, kept at hand: prom-client hashes
   * a label object on every call (1 % of the gateway's CPU under the edge policy).
   */
  readonly #hookTimers = new Map<string, { observe(seconds: number): void }>();
  readonly #verdictCounters = new Map<string, { inc(): void }>();

  phase(phase: HookKind, runs: readonly TraceEntry[], facts: Partial<Facts>): void {
    for (const run of runs) {
      if (run.source === "rule") {
        this.#ruleMatches.inc({ rule: run.plugin, phase });
        // core/policy/rules/apply.ts traces an observe-mode match with an "observe: …" verdict and no decision.
        if (run.verdict?.startsWith("observe: ")) this.#ruleObserved.inc({ rule: run.plugin, phase });
        continue;
      }
      seriesOf(this.#hookTimers, `${run.plugin}\0${phase}`, () =>
        this.#hookSeconds.labels({ plugin: run.plugin, phase }),
      ).observe(run.ms / 1000);
      if (run.error)
        this.#hookErrors.inc({ plugin: run.plugin, phase, error: run.error === "timeout" ? "timeout" : "error" });
      const { verdict } = run;
      if (verdict) {
        seriesOf(this.#verdictCounters, `${run.plugin}\0${verdict}`, () =>
          this.#verdicts.labels({ plugin: run.plugin, verdict }),
        ).inc();
      }
      // Entries are named as written in `plugin:`, so the built-in plugins are known by these names.
      if (run.plugin === "dnsbl" && run.verdict === "listed" && facts.dnsbl?.zone) {
        this.#dnsblListings.inc({ zone: facts.dnsbl.zone });
      }
      if (run.plugin === "dnsbl") {
        // The findings gather the earlier phases' lookups too; each is counted in the phase that made it.
        for (const finding of facts.dnsbl?.findings ?? []) {
          if (finding.broken && DNSBL_TARGET_PHASE[finding.target] === phase) {
            this.#dnsblBroken.inc({ zone: finding.zone, reason: finding.broken });
          }
        }
      }
      if (run.plugin === "rate-limit" && run.decision !== "continue" && run.decision !== "accept" && !run.error) {
        this.#rateLimitHits.inc({ phase, kind: run.decision });
      }
    }
  }

  refused(decision: RefusingDecision): void {
    this.#decisions.inc({
      decided_by: `${decision.by.source}:${decision.by.name}`,
      kind: decision.kind,
      code: String(decision.reply.code),
    });
  }

  connection(summary: ConnectionSummary): void {
    this.#connectionOutcomes.inc({ outcome: summary.outcome, decided_by: summary.decidedBy ?? "" });
  }

  transaction(summary: TransactionSummary): void {
    this.#transactions.inc({ outcome: summary.outcome });
  }

  delivery(route: string, outcomes: readonly RecipientOutcome[]): void {
    for (const outcome of outcomes) this.#deliveries.inc({ route, status: outcome.status });
  }

  connectionCut(reason: string): void {
    this.#cuts.inc({ reason });
  }

  stressChanged(on: boolean, listener: { role: string; port: string }): void {
    this.#stressChanges.inc({ state: on ? "on" : "off" });
    this.#underStress.set(listener, on ? 1 : 0);
  }

  policyReload(ok: boolean): void {
    this.#reloads.inc({ result: ok ? "ok" : "failed" });
  }

  /** The keys a reload could not apply; the gauge lists exactly these (none after a restart). */
  restartNeeded(keys: readonly string[]): void {
    this.#restartNeeded.reset();
    for (const key of keys) this.#restartNeeded.set({ key }, 1);
  }

  bounceSuppressed(reason: string): void {
    this.#bouncesSuppressed.inc({ reason });
  }

  /** A transaction the shadow policy evaluated: the outcome it would have given, and where that differs from the live answer. */
  shadowEvaluated(outcome: ReplayOutcome, found: readonly Difference[]): void {
    this.#shadowTransactions.inc({ outcome });
    for (const d of found) this.#shadowDifferences.inc({ live: d.live, candidate: d.candidate, rule: d.rule });
  }

  /** DNS counters over every resolver this gateway used; a replaced one's counts are kept. */
  #dnsStats(): DnsStats {
    const current = this.sources.dns();
    if (this.#resolver && this.#resolver !== current)
      this.#retiredDns = addStats(this.#retiredDns, this.#resolver.stats());
    this.#resolver = current;
    return addStats(this.#retiredDns, current.stats());
  }

  /** Metrics read from their components when scraped (prom-client calls `collect` with the metric as `this`). */
  #scrapedGauges(): void {
    const registers = [this.registry];
    const dns = () => this.#dnsStats();
    const resolver = () => this.sources.dns();
    const queue = () => this.sources.queue();
    const dnsCounter = (name: string, help: string, read: (stats: DnsStats) => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read(dns()));
        },
      });
    dnsCounter("portcullis_dns_queries_total", "Lookups asked of the shared resolver", (s) => s.queries);
    dnsCounter(
      "portcullis_dns_cache_hits_total",
      "Lookups answered from the cache or by joining an identical query in flight",
      (s) => s.hits,
    );
    dnsCounter("portcullis_dns_cache_misses_total", "Lookups that sent a query upstream", (s) => s.misses);
    new Counter({
      name: "portcullis_dns_errors_total",
      help: "Failed upstream DNS queries by code (ENOTFOUND and ENODATA are ordinary negative answers)",
      labelNames: ["code"] as const,
      registers,
      collect() {
        this.reset();
        for (const [code, count] of Object.entries(dns().errors)) this.inc({ code }, count);
      },
    });
    new Gauge({
      name: "portcullis_dns_inflight",
      help: "Upstream DNS queries waiting for an answer",
      registers,
      collect() {
        this.set(resolver().stats().inflight);
      },
    });
    new Gauge({
      name: "portcullis_queue_messages",
      help: "Messages in the spool not yet done",
      registers,
      collect() {
        this.set(queue()?.entries().length ?? 0);
      },
    });
    new Gauge({
      name: "portcullis_queue_bytes",
      help: "Bytes the spool holds",
      registers,
      collect() {
        this.set(queue()?.bytes ?? 0);
      },
    });
    // Failed AUTH attempts (wrong user or password; attempts refused while locked out are not checked).
    const auth = this.sources.auth;
    new Counter({
      name: "portcullis_auth_failures_total",
      help: "Failed AUTH attempts on submission listeners (unknown user or wrong password)",
      registers,
      collect() {
        this.reset();
        this.inc(auth?.()?.failed ?? 0);
      },
    });
    new Counter({
      name: "portcullis_auth_refused_total",
      help: "AUTH attempts refused with 454 without a password check, by reason: locked-ip, locked-user (too many failures), busy (too many at once), store-unavailable",
      labelNames: ["reason"] as const,
      registers,
      collect() {
        this.reset();
        for (const [reason, count] of Object.entries(auth?.()?.refused ?? {})) this.inc({ reason }, count);
      },
    });
    // State store operations that failed (store unreachable or too slow); onStoreError applied.
    const state = this.sources.state;
    new Counter({
      name: "portcullis_state_store_errors_total",
      help: "State store operations that failed because the store was unreachable or too slow (state.onStoreError applied)",
      registers,
      collect() {
        this.reset();
        const store = state?.();
        this.inc(store && "failures" in store && typeof store.failures === "number" ? store.failures : 0);
      },
    });
    const clock = this.sources.clock;
    new Gauge({
      name: "portcullis_queue_oldest_seconds",
      help: "Age of the oldest message in the spool (0 when empty)",
      registers,
      // Across workers the oldest message is the oldest of any worker, not a sum.
      aggregator: "max",
      collect() {
        const entries = queue()?.entries() ?? [];
        const arrived = Math.min(...entries.map((entry) => entry.envelope.arrivedAt));
        this.set(entries.length === 0 ? 0 : Math.max(0, (clock.now() - arrived) / 1000));
      },
    });
  }
}

function listenerLabels(connection: ConnectionContext): { role: string; port: string } {
  return { role: connection.role, port: String(connection.local.port) };
}

function addStats(a: DnsStats, b: DnsStats): DnsStats {
  const errors = { ...a.errors };
  for (const [code, count] of Object.entries(b.errors)) errors[code] = (errors[code] ?? 0) + count;
  return { queries: a.queries + b.queries, hits: a.hits + b.hits, misses: a.misses + b.misses, inflight: 0, errors };
}

/** The series under `key` in `cache`, made by `make` the first time. */
function seriesOf<T>(cache: Map<string, T>, key: string, make: () => T): T {
  let series = cache.get(key);
  if (series === undefined) {
    series = make();
    cache.set(key, series);
  }
  return series;
}
