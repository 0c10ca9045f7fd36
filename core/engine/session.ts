/**
 * One client connection as a sequence of phases, with no socket in sight: the SMTP listener, the
 * test kit and `portcullis try` all drive this same engine, so what a dry run shows is what the
 * gateway does.
 */
import type { Logger } from "pino";
import type {
  Address,
  Clock,
  ConnectionContext,
  Message,
  Phase,
  Services,
  TraceEntry,
  TransactionContext,
} from "../contract/api.js";
import { type Decision, formatReply, type RefusingDecision, type Reply, reply } from "../contract/decision.js";
import { routeQuery } from "../delivery/forward.js";
import type { RouteQuery } from "../delivery/routes.js";
import { NO_VERIFIER, type RecipientVerifier } from "../delivery/verify.js";
import {
  type ConnectionSummary,
  type GatewayObserver,
  NO_OBSERVER,
  type TransactionOutcome,
  type TransactionSummary,
} from "../observability/observe.js";
import type { SessionRecorder } from "../observability/transaction-log.js";
import { isDomainlessPostmaster, userUnknown } from "../policy/relay.js";
import { applyRules, connectionRuleState, type RuleState, transactionRuleState } from "../policy/rules/apply.js";
import { parseEnvelopeAddress } from "../toolkit/address.js";
import { runPhase } from "./pipeline.js";
import type { Runtime } from "./runtime.js";

export interface DeliverySummary {
  readonly size: number;
  readonly reply: Reply;
  readonly nextHops: readonly string[];
  readonly recipients: ReadonlyArray<{ to: string; status: string; reply: string }>;
}

interface TransactionState {
  readonly context: TransactionContext;
  readonly startedAt: number;
  /** Each refused recipient with the decision that refused it; the last one decides a transaction none passed. */
  readonly rejectedRecipients: Array<{ address: string; decision: RefusingDecision }>;
  /** The services hooks see, made once per transaction: the logger is bound to the transaction id. */
  readonly services: Services;
  /** What the rules did in this transaction (fired rules, skipped plugins). */
  readonly rules: RuleState;
}

/** What is known of a connection when it opens; the listener and the test kit both start here. */
export function connectionContext(
  runtime: Runtime,
  opened: Pick<ConnectionContext, "id" | "local" | "role" | "openedAt" | "authUser" | "pregreet"> & {
    readonly ip: string;
    readonly port: number;
  },
): ConnectionContext {
  return new OpenConnection(runtime, opened);
}

/**
 * A connection's context as a class with a fixed shape: every hook, rule and template reads it,
 * and the literal with a spread and a getter it replaces was slow to build and to read.
 */
class OpenConnection implements ConnectionContext {
  readonly id: string;
  readonly client: ConnectionContext["client"];
  readonly local: ConnectionContext["local"];
  readonly role: ConnectionContext["role"];
  readonly openedAt: number;
  tls: ConnectionContext["tls"] = null;
  helo: string | null = null;
  authUser: string | null;
  verifiedName: string | null = null;
  iprev: ConnectionContext["iprev"] = null;
  readonly pregreet?: ConnectionContext["pregreet"];
  readonly facts: ConnectionContext["facts"] = {};
  score = 0;
  readonly #runtime: Runtime;

  constructor(runtime: Runtime, opened: Parameters<typeof connectionContext>[1]) {
    this.#runtime = runtime;
    this.id = opened.id;
    this.client = { ip: opened.ip, port: opened.port, family: opened.ip.includes(":") ? 6 : 4 };
    this.local = opened.local;
    this.role = opened.role;
    this.openedAt = opened.openedAt;
    this.authUser = opened.authUser;
    if (opened.pregreet) this.pregreet = opened.pregreet;
  }

  /** Follows authUser: AUTH may set it later in the connection. */
  get trusted(): boolean {
    return this.#runtime.relay.isTrustedClient({ ip: this.client.ip, authUser: this.authUser });
  }
}

function refusing(decision: Decision): RefusingDecision | null {
  return decision.kind === "reject" || decision.kind === "defer" || decision.kind === "disconnect" ? decision : null;
}

function core(name: string, kind: RefusingDecision["kind"], reply: Reply): RefusingDecision {
  return { kind, reply, by: { source: "core", name } };
}

export class Session {
  /** A connect-phase reject/defer, answered at every MAIL FROM (smtpd_delay_reject style). */
  #connectDecision: RefusingDecision | null = null;
  /** What the rules did at connection level (connect and helo phases); transactions start from it. */
  #connectionRules = connectionRuleState();
  #heloChecked: string | null = null;
  #heloDecision: RefusingDecision | null = null;
  /** Hook runs of the connect and helo phases; every transaction's summary line starts with them. */
  readonly connectionTrace: TraceEntry[] = [];
  #transaction: TransactionState | null = null;
  #transactions = 0;
  #last: TransactionContext | null = null;
  /** The phase whose decision was last answered to the client (the connect and helo phases answer at MAIL). */
  refusedIn: Phase | null = null;
  /** The last refusal answered outside a transaction, for the connection line. */
  #answered: RefusingDecision | null = null;
  #refusedMails = 0;
  #triedFrom: string | null = null;
  /** Transaction lines written; a connection that wrote none writes a connection line when it closes. */
  #summaries = 0;

  constructor(
    readonly runtime: Runtime,
    readonly connection: ConnectionContext,
    readonly log: Logger,
    private readonly clock: Clock,
    /** The gateway's metrics; engines without a gateway count nothing. */
    private readonly observer: GatewayObserver = NO_OBSERVER,
    /**
     * Told of each phase (before its hooks, after them, at its end) and of each finished transaction:
     * the transaction log's recorder, or replay's recorded answers (core/observability/replay.ts).
     * Null tells no one.
     */
    private readonly recorder:
      | (Pick<SessionRecorder, "step" | "finish"> & Partial<Pick<SessionRecorder, "connection">>)
      | null = null,
    /** Asks next hops about recipients of routes with `verify: rcpt`. */
    private readonly verifier: RecipientVerifier = NO_VERIFIER,
  ) {
    this.#services = { ...runtime.services, log };
  }

  get transaction(): TransactionContext | null {
    return this.#transaction?.context ?? null;
  }

  /** The latest transaction, also after it finished (for dry runs that report its findings). */
  get lastTransaction(): TransactionContext | null {
    return this.#last;
  }

  get transactions(): number {
    return this.#transactions;
  }

  /** A refusal answered at MAIL (none of which leaves a transaction open). */
  #refused(phase: Phase, decision: RefusingDecision): RefusingDecision {
    this.refusedIn = phase;
    this.#answered = decision;
    this.#refusedMails++;
    return decision;
  }

  /** The connect or HELO phase's refusal, held to be answered at MAIL; null when the client may go on. */
  get held(): RefusingDecision | null {
    return this.#connectDecision ?? this.#heloDecision;
  }

  /** The services hooks see, with the logger of this connection (and transaction, once there is one). */
  #services: Services;

  async #run(phase: Phase, input: Parameters<typeof runPhase>[2], trace: TraceEntry[]): Promise<Decision> {
    const services = this.#transaction?.services ?? this.#services;
    const rules = this.#transaction?.rules ?? this.#connectionRules;
    const from = trace.length;
    // What this phase's hooks find is recorded apart from what its rules then do (core/observability/transaction-log.ts).
    const step = this.recorder?.step(phase, input, this.runtime.plugins, rules.skip);
    const decision = await runPhase(phase, this.runtime.plugins, input, services, trace, rules.skip);
    step?.hooksRan();
    // The policy's rules act after the hooks of every phase that no hook ended (core/policy/rules/apply.ts).
    const final =
      decision.kind !== "continue"
        ? decision
        : await applyRules(this.runtime.rules, phase, input, rules, services, trace);
    const ran = trace.slice(from);
    // This phase's hook timings, verdicts and rule matches, for the metrics.
    this.observer.phase(phase, ran, input.transaction?.facts ?? input.connection.facts);
    step?.end(final, ran);
    return final;
  }

  /**
   * Runs the connect hooks, unless a decision came before them (a failed pregreet hook's onError),
   * which then stands for them. Returns a decision to apply now (disconnect); reject/defer wait for MAIL.
   */
  async connect(
    trace: TraceEntry[] = this.connectionTrace,
    before: RefusingDecision | null = null,
  ): Promise<RefusingDecision | null> {
    const decision = before ?? refusing(await this.#run("connect", { connection: this.connection }, trace));
    if (decision?.kind === "disconnect") {
      this.refusedIn = "connect";
      this.#answered = decision;
      return decision;
    }
    this.#connectDecision = decision;
    return null;
  }

  /**
   * After STARTTLS (RFC 3207): whatever the client said in clear is forgotten (HELO, AUTH, a
   * transaction in progress); what we found out about the client itself (connect phase) stays.
   */
  restart(): void {
    this.finish("aborted", null);
    this.#heloChecked = null;
    this.#heloDecision = null;
    this.connection.helo = null;
    this.connection.authUser = null;
  }

  /** Runs the helo hooks once per distinct HELO name. */
  async helo(name: string, trace: TraceEntry[] = this.connectionTrace): Promise<void> {
    if (name === this.#heloChecked) return;
    this.#heloChecked = name;
    this.connection.helo = name;
    // The connect phase already refused this client: its reply stands, and the HELO checks'
    // lookups would be spent for nothing.
    if (this.#connectDecision) return;
    this.#heloDecision = refusing(await this.#run("helo", { connection: this.connection, helo: name }, trace));
  }

  async mail(address: string, args: Record<string, string | boolean>): Promise<RefusingDecision | null> {
    // A MAIL after RSET (which smtp-server handles itself) starts over; log what was abandoned.
    this.finish("aborted", null);
    this.#triedFrom = address;
    if (this.#connectDecision) return this.#refused("connect", this.#connectDecision);
    if (this.#heloDecision) return this.#refused("helo", this.#heloDecision);
    const limits = this.runtime.config.server.limits;
    if (this.#transactions >= limits.maxTransactionsPerConnection) {
      return this.#refused(
        "mail",
        core("limits", "disconnect", { code: 421, enhanced: "4.7.0", text: "Too many transactions, reconnect" }),
      );
    }
    const sender = parseEnvelopeAddress(address, args, { nullAllowed: true });
    if ("reply" in sender) return this.#refused("mail", core("syntax", "reject", sender.reply));
    this.#transactions++;
    const context: TransactionContext = {
      id: `${this.connection.id}.${this.#transactions}`,
      connection: this.connection,
      sender,
      recipients: [],
      facts: Object.create(this.connection.facts),
      score: this.connection.score,
      tags: new Set(),
      headers: { prepend: [], remove: [] },
      route: null,
      trace: [],
    };
    this.#transaction = {
      context,
      startedAt: this.clock.now(),
      rejectedRecipients: [],
      services: { ...this.#services, log: this.log.child({ tx: context.id }) },
      rules: transactionRuleState(this.#connectionRules),
    };
    this.#last = context;
    const decision = refusing(
      await this.#run("mail", { connection: this.connection, transaction: context }, context.trace),
    );
    if (!decision) return null;
    this.finish("refused", decision);
    return this.#refused("mail", decision);
  }

  async rcpt(address: string, args: Record<string, string | boolean>): Promise<RefusingDecision | null> {
    const tx = this.#transaction;
    if (!tx) return core("sequence", "reject", { code: 503, enhanced: "5.5.1", text: "Error: need MAIL command" });
    const refuse = (decision: RefusingDecision): RefusingDecision => {
      tx.rejectedRecipients.push({ address, decision });
      return decision;
    };
    const recipient = parseEnvelopeAddress(address, args, { nullAllowed: false });
    if ("reply" in recipient) return refuse(core("syntax", "reject", recipient.reply));
    if (tx.context.recipients.length >= this.runtime.config.server.limits.maxRecipients) {
      return refuse(core("limits", "defer", { code: 452, enhanced: "4.5.3", text: "Too many recipients" }));
    }
    const relayRefusal = this.runtime.relay.check(recipient, {
      ip: this.connection.client.ip,
      authUser: this.connection.authUser,
    });
    if (relayRefusal) return refuse(core("relay-access", "reject", relayRefusal));
    const unknown = this.runtime.relay.unknownRecipient(recipient);
    if (unknown) return refuse(core("recipients", "reject", unknown));
    const query = routeQuery(tx.context, recipient);
    if (isDomainlessPostmaster(recipient) && this.runtime.router.destinationFor(query) === null) {
      const refusal = userUnknown(query.recipient, "no postmaster mailbox here; write to postmaster@ the domain");
      return refuse(core("postmaster", "reject", refusal));
    }
    const decision = refusing(
      await this.#run("rcpt", { connection: this.connection, transaction: tx.context, recipient }, tx.context.trace),
    );
    if (decision) return refuse(decision);
    // Last, after the cheaper checks: asking the next hop costs a round trip there.
    const verification = await this.#verify(recipient, query);
    if (verification) return refuse(verification);
    tx.context.recipients.push(recipient);
    return null;
  }

  /**
   * A recipient of one of our domains whose route says `verify: rcpt` is accepted only when its
   * next hop accepts it. No answer means 450: the client retries later, nothing is taken unverified.
   */
  async #verify(recipient: Address, query: RouteQuery & { recipient: string }): Promise<RefusingDecision | null> {
    if (recipient.local.toLowerCase() === "postmaster" || !this.runtime.relay.isLocalDomain(recipient.domain)) {
      return null;
    }
    const route = this.runtime.router.verifyingRoute(query);
    if (!route) return null;
    const { config } = this.runtime;
    const answer = await this.verifier.verify(route, query.recipient, {
      hostname: config.server.hostname,
      timeoutMs: config.relay.verify.timeout,
      positiveTtlMs: config.relay.verify.positiveTtl,
      negativeTtlMs: config.relay.verify.negativeTtl,
      cacheSize: config.relay.verify.cacheSize,
    });
    switch (answer.kind) {
      case "exists":
        return null;
      case "unknown":
        return core("verify", "reject", userUnknown(query.recipient, answer.reply.text));
      case "unverified":
        this.#transaction?.services.log.warn(
          { event: "verify", to: query.recipient, reason: answer.reason },
          "recipient could not be verified",
        );
        return {
          ...core(
            "verify",
            "defer",
            reply(
              450,
              "4.1.1",
              `<${query.recipient}>: Recipient address rejected: unverified address, try again later`,
            ),
          ),
          reason: answer.reason,
        };
    }
  }

  /** Runs the data and queue hooks over the received message. */
  async data(message: Message): Promise<RefusingDecision | null> {
    const tx = this.#transaction;
    if (!tx) return core("sequence", "reject", { code: 503, enhanced: "5.5.1", text: "Error: need MAIL command" });
    if (tx.context.recipients.length === 0) {
      return core("sequence", "reject", { code: 554, enhanced: "5.5.1", text: "Error: no valid recipients" });
    }
    const input = { connection: this.connection, transaction: tx.context, message };
    for (const phase of ["data", "queue"] as const) {
      const decision = refusing(await this.#run(phase, input, tx.context.trace));
      if (decision) return decision;
    }
    return null;
  }

  /**
   * Writes the one summary line of the transaction and forgets it. A transaction that ends
   * `aborted` with every recipient refused was ended by those refusals, not by the client: it is
   * `rejected` (or `deferred` when the last refusal was temporary) by the last one.
   */
  finish(ended: TransactionOutcome, ending: RefusingDecision | null, delivery?: DeliverySummary): void {
    const tx = this.#transaction;
    if (!tx) return;
    this.#transaction = null;
    const { context } = tx;
    const lastRefusal = tx.rejectedRecipients.at(-1)?.decision;
    const refusedAll = ended === "aborted" && !ending && context.recipients.length === 0 && lastRefusal;
    const outcome: TransactionOutcome = refusedAll ? (lastRefusal.kind === "defer" ? "deferred" : "rejected") : ended;
    const decision = refusedAll ? lastRefusal : ending;
    const reply = delivery?.reply ?? decision?.reply ?? null;
    // The field set is documented (TransactionSummary, docs/operations.md) and counted.
    const summary: TransactionSummary = {
      event: "transaction",
      client: { ip: this.connection.client.ip, name: this.connection.verifiedName },
      helo: this.connection.helo,
      tls: this.connection.tls?.protocol ?? null,
      from: context.sender.address,
      to: context.recipients.map((r) => r.address),
      rejectedRecipients: tx.rejectedRecipients.map((r) => ({ to: r.address, reply: formatReply(r.decision.reply) })),
      size: delivery?.size ?? null,
      outcome,
      reply: reply ? formatReply(reply) : null,
      decidedBy: decision ? `${decision.by.source}:${decision.by.name}` : null,
      reason: decision?.reason,
      route: context.route,
      nextHops: delivery?.nextHops ?? [],
      delivery: delivery?.recipients ?? [],
      score: context.score,
      trace: [...this.connectionTrace, ...context.trace],
      ms: this.clock.now() - tx.startedAt,
    };
    this.#summaries++;
    tx.services.log.info(summary, "transaction");
    this.observer.transaction(summary, context.facts);
    this.recorder?.finish(context, summary, tx.services.log);
  }

  /**
   * Ends the connection: a transaction still open ends aborted, and a connection that wrote no
   * transaction line writes its connection line instead, so that a client refused for what it is
   * (answered at MAIL before any transaction starts, or disconnected) is logged, recorded for
   * replay and counted like a transaction.
   */
  close(): void {
    this.finish("aborted", null);
    if (this.#summaries > 0) return;
    const decision = this.#answered;
    const { connection } = this;
    const summary: ConnectionSummary = {
      event: "connection",
      client: { ip: connection.client.ip, name: connection.verifiedName },
      helo: connection.helo,
      tls: connection.tls?.protocol ?? null,
      outcome: decision ? "refused" : "closed",
      phase: decision ? this.refusedIn : null,
      reply: decision ? formatReply(decision.reply) : null,
      decidedBy: decision ? `${decision.by.source}:${decision.by.name}` : null,
      reason: decision?.reason,
      from: this.#triedFrom,
      refusedMails: this.#refusedMails,
      findings: { ...connection.facts },
      score: connection.score,
      trace: this.connectionTrace,
      ms: this.clock.now() - connection.openedAt,
    };
    this.log.info(summary, "connection summary");
    this.observer.connection(summary);
    this.recorder?.connection?.(connection, summary, this.log);
  }
}
