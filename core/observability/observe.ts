/**
 * What the gateway tells its observers (metrics today) as things happen. The core calls these at
 * the few points where the facts already exist — a connection opens or closes, a phase's hooks ran,
 * a refusal is answered, a transaction's (or a connection's) summary line is written, a delivery attempt ends, a policy
 * reload is tried — and never waits for them: an observer only counts, it cannot change a decision.
 *
 * Numbers that live in a component (DNS cache, spool, state store failures, AUTH failures) are not
 * pushed through here;
 * the metrics read them when scraped (core/observability/metrics.ts).
 */
import type { ConnectionContext, Facts, HookKind, Phase, TraceEntry } from "../contract/api.js";
import type { RefusingDecision } from "../contract/decision.js";
import type { RecipientOutcome } from "../delivery/result.js";

/** How a transaction ended, as the summary line and the transaction log say it. */
export type TransactionOutcome = "accepted" | "rejected" | "deferred" | "refused" | "aborted";

/**
 * The per-transaction summary line (`event: "transaction"`), one per MAIL FROM. Its field set is a
 * contract with operators' log pipelines (docs/operations.md lists it): add fields, never rename or
 * drop one. Message bodies and header values never appear in it. The transaction id (`tx`) and
 * connection id (`cid`) come from the logger's bindings.
 */
export interface TransactionSummary {
  readonly event: "transaction";
  readonly client: { readonly ip: string; readonly name: string | null };
  readonly helo: string | null;
  /** TLS protocol version, null in clear. */
  readonly tls: string | null;
  readonly from: string;
  /** Accepted recipients. */
  readonly to: readonly string[];
  readonly rejectedRecipients: ReadonlyArray<{ readonly to: string; readonly reply: string }>;
  /** Bytes received, null when no message was accepted for delivery. */
  readonly size: number | null;
  readonly outcome: TransactionOutcome;
  /** The reply to the client that ended the transaction (`250 2.0.0 Ok: queued as …`, `554 5.7.1 …`). */
  readonly reply: string | null;
  /** `plugin:NAME`, `rule:NAME` or `core:NAME` when a decision refused the transaction. */
  readonly decidedBy: string | null;
  readonly reason?: string;
  /** The route a hook or rule chose (`smtp://host:port`…), null when `routes:` decides per recipient. */
  readonly route: string | null;
  /** Where the message went: `queue`, or the next hops of a proxy-mode delivery. */
  readonly nextHops: readonly string[];
  /** Per recipient: status and the next hop's reply (proxy mode) or the queue's. */
  readonly delivery: ReadonlyArray<{ readonly to: string; readonly status: string; readonly reply: string }>;
  readonly score: number;
  /** Every hook and matching rule in order, with its verdict, decision and duration (ms). */
  readonly trace: readonly TraceEntry[];
  /** Milliseconds from MAIL FROM to the end of the transaction. */
  readonly ms: number;
}

/**
 * How a connection that wrote no transaction line ended: `refused` when a decision refused the
 * client (at connect, at HELO, or at a MAIL that started no transaction), `closed` when the client
 * left without being refused and without a transaction.
 */
export type ConnectionOutcome = "refused" | "closed";

/**
 * The summary line of a connection that wrote no transaction line (`event: "connection"`), written
 * when it closes: a client refused for what it is (DNSBL listing, reverse DNS, HELO) is answered at
 * MAIL before any transaction starts, or disconnected at once, and this line is then the only one
 * that says who decided and what was answered. Same contract as the transaction line: add fields,
 * never rename or drop one (docs/operations.md). The connection id (`cid`) comes from the logger.
 */
export interface ConnectionSummary {
  readonly event: "connection";
  readonly client: { readonly ip: string; readonly name: string | null };
  readonly helo: string | null;
  readonly tls: string | null;
  readonly outcome: ConnectionOutcome;
  /** The phase whose decision refused the client (connect, helo, or mail for a core refusal there). */
  readonly phase: Phase | null;
  /** The reply that refused the client, null for `closed`. */
  readonly reply: string | null;
  readonly decidedBy: string | null;
  readonly reason?: string;
  /** The last MAIL FROM the client tried, null when it sent none. */
  readonly from: string | null;
  /** MAIL commands refused (a held connect or HELO refusal is answered at each). */
  readonly refusedMails: number;
  /** The connection's findings (connect and HELO phases), by plugin key. */
  readonly findings: Readonly<Record<string, unknown>>;
  readonly score: number;
  /** The connect and HELO hooks and rules, as in a transaction line. */
  readonly trace: readonly TraceEntry[];
  /** Milliseconds from the connection's start to its end. */
  readonly ms: number;
}

export interface GatewayObserver {
  connectionOpened(connection: ConnectionContext): void;
  connectionClosed(connection: ConnectionContext): void;
  /** The hooks (and matching rules) of one phase, or the pregreet or close hooks, ran; `facts` is the scope they wrote to. */
  phase(phase: HookKind, runs: readonly TraceEntry[], facts: Partial<Facts>): void;
  /** A refusal was answered to the client (a connect-phase refusal once per MAIL it answers). */
  refused(decision: RefusingDecision): void;
  /** `facts`: the findings the transaction ended with (its own and its connection's, by prototype). */
  transaction(summary: TransactionSummary, facts: Readonly<Partial<Facts>>): void;
  /** A connection that wrote no transaction line closed; its summary line was written. */
  connection(summary: ConnectionSummary): void;
  /** One delivery attempt to one route ended (queue worker or proxy mode), per recipient. */
  delivery(route: string, outcomes: readonly RecipientOutcome[]): void;
  /** A reload was tried: `ok` false when the new policy was refused and the old one stayed. */
  policyReload(ok: boolean): void;
  /** A DSN was not sent because its recipient, the original sender, is likely forged (`reason`). */
  bounceSuppressed(reason: string): void;
}

/** For engines that run without a gateway (the test kit, `portcullis try`): nothing is counted. */
export const NO_OBSERVER: GatewayObserver = Object.freeze({
  connectionOpened() {},
  connectionClosed() {},
  phase() {},
  refused() {},
  transaction() {},
  connection() {},
  delivery() {},
  policyReload() {},
  bounceSuppressed() {},
});
