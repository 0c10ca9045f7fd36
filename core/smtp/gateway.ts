/**
 * The gateway: listeners (smtp-server) → sessions (phases) → next hop (forward). A connection keeps
 * the runtime it started with, so a reload never changes the rules under a transaction in flight.
 */
import { createHash } from "node:crypto";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Readable, Writable } from "node:stream";
import { finished } from "node:stream/promises";
import type { Logger } from "pino";
import type { SMTPServerAddress, SMTPServerDataStream, SMTPServerSession } from "smtp-server";
import { type Clock, type ConnectionContext, systemClock } from "../contract/api.js";
import type { RefusingDecision, Reply } from "../contract/decision.js";
import { composeMessage, tooManyHops } from "../delivery/forward.js";
import { receivedHeader } from "../delivery/received.js";
import { type PregreetRun, pregreetRefusal, runClose, runPregreet } from "../engine/pipeline.js";
import { buildRuntime, type Runtime } from "../engine/runtime.js";
import { connectionContext, Session } from "../engine/session.js";
import { Activity } from "../observability/dashboard/activity.js";
import { createLogger } from "../observability/log.js";
import type { GatewayMetrics } from "../observability/metrics.js";
import { moduleLogger } from "../observability/module-log.js";
import type { GatewayObserver } from "../observability/observe.js";
import { Rollout } from "../observability/shadow.js";
import type { LoadedPolicy } from "../policy/load.js";
import type { PolicyConfig } from "../policy/schema.js";
import { DeliveryQueue } from "../queue/queue.js";
import { createStore } from "../state/create.js";
import {
  clientGroup,
  formatHostPort,
  type HostPort,
  NetworkList,
  normalizeIp,
  parseHostPort,
} from "../toolkit/netaddr.js";
import { SubmissionAuth, submissionRefusal } from "./auth/index.js";
import { messageRefusal } from "./hardening.js";
import { MessageWriter } from "./message.js";
import { type GatewayConnection, GatewaySMTPServer, type ListenerEvent } from "./smtp-server.js";

/** Bodies up to this size stay in memory; larger ones are spooled to a temporary file. */
const SPILL_THRESHOLD = 256 * 1024;

/** How long a listener a reload removed lets its sessions finish, as stop() does by default. */
const RETIRE_GRACE_MS = 10_000;

/**
 * Settings the process reads once at start (the spool it locks, the state store it connects, the
 * worker processes it forks). A reload that changes one applies everything else and says that this
 * key waits for a restart.
 */
const RESTART_KEYS: Readonly<Record<string, (config: PolicyConfig) => unknown>> = {
  "server.workers": (config) => config.server.workers,
  "delivery.spool": (config) => config.delivery.spool,
  "delivery.spoolLimit": (config) => config.delivery.spoolLimit,
  state: (config) => config.state,
  "observability.log.levels.state": (config) => config.observability.log.levels?.state,
};

/** The key and certificate of `server.tls`, read from disk at start and again at every reload. */
interface TlsFiles {
  readonly key: Buffer;
  readonly cert: Buffer;
}

/** What a runtime's listeners read from disk. */
interface ListenerFiles {
  readonly tls?: TlsFiles;
  readonly auth: SubmissionAuth | null;
}

/** One listening socket; `closing` once a reload removed it and its sessions are finishing. */
interface Listener {
  readonly server: GatewaySMTPServer;
  readonly address: HostPort;
  readonly role: Role;
  /** The policy's address for it (port 0: any free port, which `address` then names). */
  readonly configured: HostPort;
  /** What the listener was made from: a policy listener with the same identity keeps this one. */
  readonly identity: string;
  closing: boolean;
}

type ListenerChanges = Pick<ReloadChanges, "listenersAdded" | "listenersRemoved">;

/** What a reload changed, for its one log line (core/policy/reload.ts). */
export type ReloadChanges = {
  listenersAdded?: string[];
  listenersRemoved?: string[];
  /** enabled, disabled, renewed (other bytes on disk) or unchanged — re-read at every reload. */
  certificate?: "enabled" | "disabled" | "renewed" | "unchanged";
  /** Keys whose new value waits for a restart (RESTART_KEYS); the running value stays. */
  restartNeeded?: string[];
};

export interface GatewayOptions {
  readonly log?: Logger;
  readonly clock?: Clock;
  /** Overrides the first listener (`--listen`). */
  readonly listen?: string;
  /** Overrides `dns.servers` (`--dns`). */
  readonly dnsServers?: readonly string[];
  /** Overrides `shadow:` (`--shadow`): an absolute path to a candidate policy. */
  readonly shadow?: string;
  /**
   * Count metrics from the start whatever the policy says: for a reader the policy does not name,
   * a supervisor summing its workers' metrics (a worker's own policy serves none).
   */
  readonly countMetrics?: boolean;
}

/** An error that carries the SMTP reply smtp-server sends for a refused command. */
class SmtpReply extends Error {
  readonly responseCode: number;
  constructor(reply: Reply) {
    super(`${reply.enhanced} ${reply.text}`.trimEnd());
    this.responseCode = reply.code;
  }
}

type Role = ConnectionContext["role"];

/**
 * `pipeline(stream, writer)` without its cost: Node 20's pipeline makes an AbortController per call
 * and aborts it when done, which builds a DOMException with a stack trace for every message (2 % of
 * the relay's CPU). Same outcome: resolves when the writer has finished; rejects when
 * either side fails or the client's stream closes before its end, and then destroys both.
 */
async function receive(stream: Readable, writer: Writable): Promise<void> {
  stream.pipe(writer);
  try {
    await Promise.all([finished(stream, { writable: false }), finished(writer)]);
  } catch (error) {
    stream.unpipe(writer);
    stream.destroy();
    writer.destroy();
    throw error;
  }
}

export class Gateway {
  readonly log: Logger;
  readonly clock: Clock;
  #runtime: Runtime;
  /** Open listeners, including ones a reload removed whose sessions are still finishing. */
  #servers: Listener[] = [];
  /** Listeners a reload removed, until their last session has ended. */
  #retiring = new Set<Promise<void>>();
  /** The running `server.tls` files; undefined without TLS. */
  #tls: TlsFiles | undefined;
  /** The configuration the process started with, for the keys only a restart changes. */
  readonly #startedWith: PolicyConfig;
  #sessions = new Map<string, Session>();
  /** Open connections per client (clientGroup: an IPv4 address or an IPv6 /64). */
  #perClient = new Map<string, number>();
  /** The client each open connection counts against, by session id. */
  #clientOf = new Map<string, string>();
  #stopping = false;
  /** The spool, delivery worker and next-hop connection pool, in both delivery modes. */
  readonly queue: DeliveryQueue;
  /** Users of submission listeners (`server.auth`); loaded by listen(). */
  #auth: SubmissionAuth | null = null;
  /**
   * What sessions, deliveries and reloads report, plus DNS and spool numbers read when scraped;
   * null until something reads them (#countMetrics).
   */
  #metrics: GatewayMetrics | null = null;
  /** The transaction log and the shadow policy, following the policy across reloads. */
  readonly #rollout: Rollout;
  /** The dashboard's memory of recent decisions; null while the policy has no `observability.dashboard`. */
  #activity: Activity | null = null;
  /** Where sessions, deliveries and reloads report: the metrics, and the dashboard's activity when there is one. */
  readonly observer: GatewayObserver;

  /** `--listen`/`--dns` from the command line: they hold for every policy version, reloads included. */
  readonly #overrides: GatewayOptions;

  /** The queue's logger, at `observability.log.levels.queue` (set again on reload). */
  readonly #queueLog: Logger;

  private constructor(runtime: Runtime, log: Logger, clock: Clock, overrides: GatewayOptions) {
    this.#overrides = overrides;
    this.#runtime = runtime;
    this.#startedWith = runtime.config;
    this.log = log;
    this.clock = clock;
    this.observer = {
      connectionOpened: (connection) => this.#metrics?.connectionOpened(connection),
      connectionClosed: (connection) => this.#metrics?.connectionClosed(connection),
      phase: (phase, runs, facts) => this.#metrics?.phase(phase, runs, facts),
      refused: (decision) => this.#metrics?.refused(decision),
      transaction: (summary, facts) => {
        this.#metrics?.transaction(summary);
        this.#activity?.transaction(summary, facts);
      },
      connection: (summary) => {
        this.#metrics?.connection(summary);
        this.#activity?.connection(summary);
      },
      delivery: (route, outcomes) => this.#metrics?.delivery(route, outcomes),
      policyReload: (ok) => {
        this.#metrics?.policyReload(ok);
        this.#activity?.policyReload(ok);
      },
      bounceSuppressed: (reason) => this.#metrics?.bounceSuppressed(reason),
    };
    this.#followDashboard(runtime);
    this.#queueLog = moduleLogger(log, "queue", runtime.config.observability.log.levels);
    this.queue = new DeliveryQueue({
      runtime: () => this.#runtime,
      log: this.#queueLog,
      clock,
      listeners: () => this.addresses(),
      observer: this.observer,
    });
    this.#rollout = new Rollout({ log, clock, metrics: () => this.#metrics });
  }

  static async create(policy: LoadedPolicy, options: GatewayOptions = {}): Promise<Gateway> {
    const config = applyOverrides(policy.config, options);
    const log = options.log ?? createLogger(config.observability.log.level);
    const clock = options.clock ?? systemClock;
    const state = createStore(config.state, {
      clock,
      log: moduleLogger(log, "state", config.observability.log.levels),
    });
    const runtime = await buildRuntime({ ...policy, config }, { log, clock, state });
    const gateway = new Gateway(runtime, log, clock, options);
    await gateway.#countMetrics(config);
    await gateway.#rollout.apply(runtime);
    return gateway;
  }

  get runtime(): Runtime {
    return this.#runtime;
  }

  /** The Prometheus metrics; null while neither the policy nor the gateway's options asked for them. */
  get metrics(): GatewayMetrics | null {
    return this.#metrics;
  }

  /**
   * Starts counting when `config` has a reader for the metrics (`observability.metrics`, or the
   * dashboard, which shows their shadow and observe-mode counts) or the options ask for them.
   * Once started they are kept for the gateway's life, so a later reload never resets a counter.
   */
  async #countMetrics(config: PolicyConfig): Promise<void> {
    if (this.#metrics) return;
    const { observability } = config;
    if (!observability.metrics && !observability.dashboard && !this.#overrides.countMetrics) return;
    const { GatewayMetrics } = await import("../observability/metrics.js");
    if (this.#metrics) return; // started by a reload that overtook this one during the import
    this.#metrics = new GatewayMetrics({
      dns: () => this.#runtime.services.dns,
      queue: () => this.queue.spool,
      auth: () => this.#auth, // failed AUTH attempts
      state: () => this.#runtime.services.state, // store outages
      clock: this.clock,
    });
    // Connections open already count as opened now, so that their close leaves the gauge of open ones true.
    for (const session of this.#sessions.values()) this.#metrics.connectionOpened(session.connection);
  }

  /** What the dashboard shows; null while the policy has no `observability.dashboard`. */
  get activity(): Activity | null {
    return this.#activity;
  }

  /**
   * Keeps recent activity while the policy has a dashboard: started when it gains one, dropped when
   * it loses it, started over empty when the number of entries kept changes.
   */
  #followDashboard(runtime: Runtime): void {
    const recent = runtime.config.observability.dashboard?.recent;
    if (recent === undefined) this.#activity = null;
    else if (this.#activity?.capacity !== recent) {
      this.#activity = new Activity(recent, this.clock, () => this.#runtime.plugins);
    }
  }

  /** Starts every listener of the policy; resolves with the bound addresses. */
  async listen(): Promise<HostPort[]> {
    const files = await this.#readListenerFiles(this.#runtime);
    this.#auth = files.auth;
    this.#tls = files.tls;
    await this.#syncListeners();
    await this.queue.start(); // opens the spool, resumes what it holds
    return this.addresses();
  }

  /** The TLS key/cert and the submission users a runtime's listeners need, read from disk. */
  async #readListenerFiles({ config, policy, services }: Runtime): Promise<ListenerFiles> {
    const { tls, auth } = config.server;
    return {
      tls: tls
        ? { key: await readFile(resolve(policy.dir, tls.key)), cert: await readFile(resolve(policy.dir, tls.cert)) }
        : undefined,
      auth: auth ? await SubmissionAuth.load(resolve(policy.dir, auth.users), auth, services.state) : null,
    };
  }

  /**
   * Makes the open listeners those of the running policy: a listener whose address, role or
   * settings changed is replaced (the old one stops accepting and lets its sessions finish, like
   * stop(); the new one binds the same port), new ones listen, and the ones that stay switch to the
   * current certificate and STARTTLS offer for their next connections.
   */
  async #syncListeners(): Promise<ListenerChanges> {
    const { config } = this.#runtime;
    const open = this.#servers.filter((listener) => !listener.closing);
    const wanted = config.server.listen.map((listener) => ({
      address: parseHostPort(listener.address)!,
      role: (listener.submission ? "submission" : "mx") as Role,
      implicitTls: listener.implicitTls,
      identity: listenerIdentity(listener, config),
    }));
    const kept = new Set<Listener>();
    const added: typeof wanted = [];
    for (const want of wanted) {
      const match = open.find((listener) => !kept.has(listener) && listener.identity === want.identity);
      if (match) kept.add(match);
      else added.push(want);
    }
    const removed = open.filter((listener) => !kept.has(listener));
    for (const listener of removed) this.#retire(listener);
    for (const want of added) {
      // A replaced listener configured on port 0 keeps the port it had, so clients still find it.
      const previous = removed.find(
        ({ configured }) => configured.host === want.address.host && configured.port === want.address.port,
      );
      const address = want.address.port === 0 && previous ? previous.address : want.address;
      const server = this.#createServer(want.role, want.implicitTls);
      server.listen(address.port, address.host);
      await Promise.race([
        once(server.server, "listening"),
        once(server.server, "error").then(([error]) => {
          throw new Error(`cannot listen on ${formatHostPort(address)}: ${(error as Error).message}`);
        }),
      ]);
      const bound = server.server.address();
      const actual = typeof bound === "object" && bound ? { host: address.host, port: bound.port } : address;
      this.#servers.push({
        server,
        address: actual,
        configured: want.address,
        role: want.role,
        identity: want.identity,
        closing: false,
      });
      this.log.info({ listen: formatHostPort(actual), role: want.role }, "listening");
    }
    for (const listener of kept) this.#refreshTls(listener.server, listener.role);
    const describe = (list: Array<{ address: HostPort; role: Role }>) =>
      list.map(({ address, role }) => `${formatHostPort(address)} (${role})`);
    const listenersAdded = describe(this.#servers.filter((l) => !l.closing && !kept.has(l)));
    const listenersRemoved = describe(removed);
    return {
      ...(listenersAdded.length > 0 ? { listenersAdded } : {}),
      ...(listenersRemoved.length > 0 ? { listenersRemoved } : {}),
    };
  }

  /**
   * Stops a listener accepting. Unlike stop(), its sessions go on as if nothing happened (the rest
   * of the gateway keeps running) for up to RETIRE_GRACE_MS; those still open then get 421.
   */
  #retire(listener: Listener): void {
    listener.closing = true;
    const { server } = listener;
    // Only the listening socket closes; smtp-server's close() would answer every next command 421.
    const closed = new Promise<void>((done) => server.server.close(() => done()));
    for (const socket of server._pendingSockets.values()) socket.destroy(); // no session yet to finish
    const deadline = setTimeout(() => {
      for (const connection of server.connections) {
        connection.send(421, "4.3.2 Service shutting down this listener, try again");
        connection.close();
      }
    }, RETIRE_GRACE_MS);
    const retired = closed.then(() => {
      clearTimeout(deadline);
      this.#servers = this.#servers.filter((l) => l !== listener);
      this.#retiring.delete(retired);
    });
    this.#retiring.add(retired);
  }

  /** New handshakes on this listener use the current certificate; STARTTLS is offered when there is one. */
  #refreshTls(server: GatewaySMTPServer, role: Role): void {
    server.options.disabledCommands = disabledCommands(role, this.#tls);
    if (this.#tls) server.updateSecureContext({ key: this.#tls.key, cert: this.#tls.cert, minVersion: "TLSv1.2" });
  }

  addresses(): HostPort[] {
    return this.#servers.filter((s) => !s.closing).map((s) => s.address);
  }

  /** For /readyz: accepting connections, i.e. started and not stopping. */
  get listening(): boolean {
    return this.#servers.some((s) => !s.closing) && !this.#stopping;
  }

  /** Keys changed in the policy that the running process keeps until a restart (RESTART_KEYS). */
  get restartNeeded(): string[] {
    const config = this.#runtime.config;
    return Object.entries(RESTART_KEYS)
      .filter(([, read]) => JSON.stringify(read(config)) !== JSON.stringify(read(this.#startedWith)))
      .map(([key]) => key);
  }

  /**
   * Swaps in a new policy for new connections; connections in flight keep theirs. Listeners follow
   * the policy (#syncListeners) and the certificate is read again, so a renewed one is used by the
   * next handshake. Resolves with what changed; rejects, with the old policy running, when the new
   * one's plugins, files or listeners cannot be set up.
   */
  async reload(policy: LoadedPolicy): Promise<ReloadChanges> {
    const config = applyOverrides(policy.config, this.#overrides);
    const previous = this.#runtime;
    // Before this reload's outcome is counted, so that it is.
    await this.#countMetrics(config);
    let files: ListenerFiles;
    try {
      const runtime = await buildRuntime(
        { ...policy, config },
        { log: this.log, clock: this.clock, state: previous.services.state },
      );
      // A shadow candidate that does not load refuses the reload too (the old policy stays).
      await this.#rollout.apply(runtime);
      files = await this.#readListenerFiles(runtime);
      this.#runtime = runtime;
    } catch (error) {
      this.observer.policyReload(false); // A plugin, a shadow or a TLS/users file refused; the old policy stays
      throw error;
    }
    const running = { tls: this.#tls, auth: this.#auth };
    const certificate = certificateChange(this.#tls, files.tls);
    this.#tls = files.tls;
    this.#auth = files.auth;
    let listeners: ListenerChanges;
    try {
      listeners = await this.#syncListeners();
    } catch (error) {
      // A port that cannot be bound: the old policy, certificate and users stay; listeners the
      // reload removed before that stay removed (a port is only free for the new one once the old one closed).
      this.#runtime = previous;
      this.#tls = running.tls;
      this.#auth = running.auth;
      this.observer.policyReload(false);
      throw error;
    }
    // A logger the caller passed (GatewayOptions.log) keeps the caller's level; the gateway's own follows the policy.
    if (!this.#overrides.log) this.log.level = config.observability.log.level;
    this.#queueLog.level = config.observability.log.levels?.queue ?? this.log.level;
    const restartNeeded = this.restartNeeded;
    this.#metrics?.restartNeeded(restartNeeded);
    this.#followDashboard(this.#runtime);
    this.observer.policyReload(true);
    this.queue.reloaded(); // pooled connections may follow old route settings
    return {
      ...listeners,
      ...(certificate ? { certificate } : {}),
      ...(restartNeeded.length > 0 ? { restartNeeded } : {}),
    };
  }

  /** Stops accepting, lets sessions in flight finish for up to graceMs, then closes them. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    // Listeners a reload retired are closed the same way, so their sessions get graceMs, not more.
    await Promise.all(
      this.#servers.map(
        ({ server }) =>
          new Promise<void>((done) => {
            server.options.closeTimeout = graceMs;
            server.close(() => done());
          }),
      ),
    );
    await Promise.all(this.#retiring);
    await this.queue.stop(); // the worker ends its attempts, the spool is closed
    await this.#runtime.services.state.close();
    this.#rollout.close();
    this.log.info("stopped");
  }

  /** Open sessions and per-IP slots; both return to zero once every connection has ended. */
  openSessions(): { sessions: number; ipSlots: number } {
    return { sessions: this.#sessions.size, ipSlots: this.#perClient.size };
  }

  #createServer(role: Role, implicitTls: boolean): GatewaySMTPServer {
    const { config } = this.#runtime;
    const tls = this.#tls;
    const limits = config.server.limits;
    const server = new GatewaySMTPServer({
      name: config.server.hostname,
      banner: "Portcullis",
      logger: false,
      disableReverseLookup: true,
      hideENHANCEDSTATUSCODES: false,
      hideDSN: false,
      size: limits.maxMessageSize,
      maxClients: limits.maxClients,
      socketTimeout: limits.idleTimeout,
      closeTimeout: 30_000,
      disabledCommands: disabledCommands(role, tls),
      authMethods: ["PLAIN", "LOGIN"],
      secure: implicitTls,
      maxCommandLength: limits.maxCommandLength,
      maxErrors: limits.maxErrors,
      slowClients: limits,
      admit: (id, remoteAddress) => this.#takeClientSlot(id, remoteAddress),
      onLimit: (event) => {
        if (event.kind === "cut") this.#reportCut(event);
        else this.#reportStress(event, role, server);
      },
      xclientTrusted: config.server.xclient === false ? undefined : new NetworkList(config.server.xclient),
      ...(tls ? { key: tls.key, cert: tls.cert, minVersion: "TLSv1.2" as const } : {}),
      greetingDelay: (remoteAddress) => this.#greetingDelay(remoteAddress),
      holdEarlyTalk: () => this.#runtime.plugins.some(({ hooks }) => hooks.pregreet !== undefined),
      proxyTrusted: config.server.proxyProtocol === false ? undefined : new NetworkList(config.server.proxyProtocol),
      onConnect: (session, callback) => {
        this.#onConnect(session, role).then(() => callback(), callback);
      },
      onSecure: (_socket, session, callback) => {
        this.#onSecure(session);
        callback();
      },
      onAuth: (auth, session, callback) => {
        this.#onAuth(auth.username ?? "", auth.password ?? "", session).then((user) => callback(null, user), callback);
      },
      onMailFrom: (address, session, callback) => {
        this.#onMailFrom(address, session).then(() => callback(), callback);
      },
      onRcptTo: (address, session, callback) => {
        this.#onRcptTo(address, session).then(() => callback(), callback);
      },
      onData: (stream, session, callback) => {
        this.#onData(stream, session).then((text) => callback(null, text), callback);
      },
      onClose: (session) => this.#onClose(session),
    });
    server.on("error", (err: Error & { code?: string }) => {
      // A client reset mid-transaction surfaces here; it must never take the process down.
      this.log.debug({ err: err.message, code: err.code }, "connection error");
    });
    return server;
  }

  #session(session: SMTPServerSession): Session {
    const state = this.#sessions.get(session.id);
    if (!state) throw new Error(`no state for session ${session.id}`);
    return state;
  }

  /** Turns a refusing decision into the reply; a `disconnect` also closes the connection. */
  #refuse(decision: RefusingDecision | null, session: SMTPServerSession): void {
    if (decision) this.#refuseNow(decision, session);
  }

  #refuseNow(decision: RefusingDecision, session: SMTPServerSession): never {
    this.observer.refused(decision);
    if (decision.kind === "disconnect") {
      for (const { server } of this.#servers) server.closeSession(session.id);
    }
    throw new SmtpReply(decision.reply);
  }

  /**
   * The banner delay for a client: `server.greetingDelay`, or longer when a `pregreet` hook asks for
   * it. The hooks run through the one hook runner, under their entries' deadlines; a failed one is
   * judged by its entry's `onError` once the connection's session exists (#onConnect).
   */
  async #greetingDelay(remoteAddress: string): Promise<PregreetRun> {
    const { config, plugins, services } = this.#runtime;
    const ip = normalizeIp(remoteAddress);
    const run = await runPregreet(plugins, { ...services, client: { ip, family: ip.includes(":") ? 6 : 4 } });
    if (run.trace.length > 0) this.observer.phase("pregreet", run.trace, {});
    return { ...run, delayMs: Math.max(config.server.greetingDelay, run.delayMs) };
  }

  /** The listener's side of a connection (its wait for the banner, what the pregreet hooks came to). */
  #connectionOf(id: string): GatewayConnection | undefined {
    for (const { server } of this.#servers) {
      const connection = server.byId.get(id);
      if (connection) return connection;
    }
    return undefined;
  }

  async #onConnect(smtp: SMTPServerSession, role: Role): Promise<void> {
    const runtime = this.#runtime;
    const ip = normalizeIp(smtp.remoteAddress);
    const listener = this.#connectionOf(smtp.id);
    const connection = connectionContext(runtime, {
      id: smtp.id,
      ip,
      port: smtp.remotePort,
      local: { ip: normalizeIp(smtp.localAddress), port: smtp.localPort },
      role,
      openedAt: this.clock.now(),
      authUser: null,
      pregreet: listener?.pregreet,
    });
    const log = moduleLogger(this.log, "smtp", runtime.config.observability.log.levels, { cid: smtp.id });
    // The recorder of the policy version this connection runs under.
    const session = new Session(
      runtime,
      connection,
      log,
      this.clock,
      this.observer,
      this.#rollout.recorder(),
      this.queue.verifier,
    );
    this.#sessions.set(smtp.id, session);
    this.observer.connectionOpened(connection); // closed in #onClose or #rekey
    session.log.info({ event: "connect", client: ip, port: smtp.remotePort }, "connection");
    // A pregreet hook that failed is judged here, as the connect hooks' decisions are.
    const pregreet = listener?.pregreetRun;
    if (pregreet) session.connectionTrace.push(...pregreet.trace);
    const decision = await session.connect(undefined, pregreet ? pregreetRefusal(pregreet, connection) : null);
    if (decision) {
      this.observer.refused(decision);
      throw new SmtpReply(decision.reply);
    }
  }

  async #onMailFrom(address: SMTPServerAddress, smtp: SMTPServerSession): Promise<void> {
    let session = this.#session(smtp);
    // XCLIENT named another client: its connect phase runs now, so that its address drives every check.
    if (normalizeIp(smtp.remoteAddress) !== session.connection.client.ip) session = await this.#rekey(smtp, session);
    session.connection.tls = smtp.secure && smtp.tlsOptions ? tlsInfo(smtp.tlsOptions) : null;
    if (session.connection.role === "submission") {
      this.#refuse(submissionRefusal(this.#auth, session.connection, address.address), smtp);
    }
    if (typeof smtp.hostNameAppearsAs === "string") await session.helo(smtp.hostNameAppearsAs);
    this.#refuse(await session.mail(address.address, address.args || {}), smtp);
  }

  /** XCLIENT: the session is opened again for the forwarded address, in that address's per-IP slot. */
  async #rekey(smtp: SMTPServerSession, previous: Session): Promise<Session> {
    this.#sessions.delete(smtp.id);
    previous.finish("aborted", null);
    this.#releaseClientSlot(smtp.id);
    this.observer.connectionClosed(previous.connection); // #onConnect opens the forwarded client's
    try {
      if (!this.#takeClientSlot(smtp.id, smtp.remoteAddress)) {
        this.#reportCut({ kind: "cut", reason: "per-client", id: smtp.id, remoteAddress: smtp.remoteAddress });
        throw new SmtpReply({ code: 421, enhanced: "4.7.0", text: "Too many connections from your address" });
      }
      await this.#onConnect(smtp, previous.connection.role);
    } catch (err) {
      // Refused at connect: the connection ends, as it would have at the greeting.
      for (const { server } of this.#servers) server.closeSession(smtp.id);
      throw err;
    }
    return this.#session(smtp);
  }

  /** After STARTTLS the session starts over (RFC 3207): HELO, AUTH and any transaction are forgotten. */
  #onSecure(smtp: SMTPServerSession): void {
    const session = this.#sessions.get(smtp.id);
    if (!session) return;
    session.restart();
    session.connection.tls = smtp.tlsOptions ? tlsInfo(smtp.tlsOptions) : null;
  }

  async #onAuth(username: string, password: string, smtp: SMTPServerSession): Promise<{ user: string }> {
    const session = this.#session(smtp);
    const result = this.#auth
      ? await this.#auth.authenticate(session.connection.client.ip, username, password)
      : { reply: { code: 454, enhanced: "4.7.0", text: "Authentication not available" } };
    if ("reply" in result) {
      const refused = "refused" in result ? result.refused : undefined;
      const err = "error" in result ? result.error : undefined;
      // A store that cannot count attempts refuses every AUTH: operators must hear about it.
      session.log[err ? "warn" : "info"]({ event: "auth", user: username, ok: false, refused, err }, "authentication");
      throw new SmtpReply(result.reply);
    }
    session.log.info({ event: "auth", user: username, ok: true }, "authentication");
    session.connection.authUser = result.user;
    return { user: result.user };
  }

  async #onRcptTo(address: SMTPServerAddress, smtp: SMTPServerSession): Promise<void> {
    this.#refuse(await this.#session(smtp).rcpt(address.address, address.args || {}), smtp);
  }

  async #onData(stream: SMTPServerDataStream, smtp: SMTPServerSession): Promise<string> {
    const session = this.#session(smtp);
    const tx = session.transaction;
    if (!tx) throw new SmtpReply({ code: 503, enhanced: "5.5.1", text: "Error: need MAIL command" });
    const { config } = session.runtime;
    const limits = config.server.limits;
    const writer = new MessageWriter(
      join(config.delivery.spool, "tmp"),
      tx.id,
      { maxSize: limits.maxMessageSize, spillThreshold: SPILL_THRESHOLD, maxHeaderSize: limits.maxHeaderSize },
      { stripNul: config.server.nulBytes === "strip" },
    );
    // A sender trickling bytes never trips the idle timeout; this bounds the whole DATA phase.
    const dataTimer = setTimeout(() => {
      for (const { server } of this.#servers) server.abortSession(smtp.id, "4.4.2 DATA timeout, closing connection");
    }, limits.dataTimeout);
    try {
      await receive(stream, writer);
    } catch (err) {
      await writer.discard();
      session.finish("aborted", null);
      throw err;
    } finally {
      clearTimeout(dataTimer);
    }
    const refuse = (decision: RefusingDecision): never => {
      session.finish(decision.kind === "defer" ? "deferred" : "rejected", decision);
      return this.#refuseNow(decision, smtp);
    };
    if (writer.oversized || stream.sizeExceeded) {
      await writer.discard();
      return refuse({
        kind: "reject",
        reply: { code: 552, enhanced: "5.3.4", text: "Message size exceeds fixed maximum message size" },
        by: { source: "core", name: "limits" },
      });
    }
    const message = await writer.finish();
    try {
      // Smuggling attempts and header limits are refused before any data hook runs (core/smtp/hardening.ts).
      const refusal = messageRefusal(writer, message.headers.length, config.server);
      if (refusal) return refuse(refusal);
      // A message that went around too often is a loop (554 5.4.6).
      const loop = tooManyHops(message.headers, config.delivery.maxReceived);
      if (loop) return refuse(loop);
      const decision = await session.data(message);
      if (decision) return refuse(decision);
      const { connection } = session;
      const received = receivedHeader({
        heloName: connection.helo,
        clientIp: connection.client.ip,
        verifiedName: connection.verifiedName,
        byHost: config.server.hostname,
        protocol: protocolName(smtp),
        tls: connection.tls,
        id: tx.id,
        recipient: tx.recipients.length === 1 ? tx.recipients[0].address : undefined,
        date: new Date(this.clock.now()),
      });
      // Stored (queue mode) or forwarded now (proxy mode); see core/queue/queue.ts.
      const delivery = await this.queue.handOff(tx, composeMessage(message, tx, received), session.runtime);
      const { reply } = delivery;
      session.finish(reply.code < 300 ? "accepted" : reply.code < 500 ? "deferred" : "rejected", null, {
        size: message.size,
        reply,
        nextHops: delivery.nextHops,
        recipients: delivery.recipients,
      });
      if (reply.code >= 300) throw new SmtpReply(reply);
      return `${reply.enhanced} ${reply.text}`;
    } finally {
      await message.dispose();
    }
  }

  /**
   * Counts a new connection against its client (maxConnectionsPerIp); false when the client already
   * holds every slot it may, and then nothing is counted. Runs before the greeting, so a refused
   * client costs no lookup and no hook.
   */
  #takeClientSlot(id: string, remoteAddress: string): boolean {
    const client = clientGroup(remoteAddress);
    const count = this.#perClient.get(client) ?? 0;
    if (count >= this.#runtime.config.server.limits.maxConnectionsPerIp) return false;
    this.#perClient.set(client, count + 1);
    this.#clientOf.set(id, client);
    return true;
  }

  #releaseClientSlot(id: string): void {
    const client = this.#clientOf.get(id);
    if (client === undefined) return;
    this.#clientOf.delete(id);
    const remaining = (this.#perClient.get(client) ?? 1) - 1;
    if (remaining <= 0) this.#perClient.delete(client);
    else this.#perClient.set(client, remaining);
  }

  /** A connection the gateway refused or closed on a limit of its own, with no hook deciding. */
  #reportCut(event: Extract<ListenerEvent, { kind: "cut" }>): void {
    this.#metrics?.connectionCut(event.reason);
    this.log.info(
      { event: "cut", cid: event.id, client: normalizeIp(event.remoteAddress), reason: event.reason },
      "connection cut",
    );
  }

  #reportStress(event: Extract<ListenerEvent, { kind: "stress" }>, role: Role, server: GatewaySMTPServer): void {
    const bound = server.server.address();
    const port = String(typeof bound === "object" && bound ? bound.port : "");
    this.#metrics?.stressChanged(event.on, { role, port });
    this.log.warn(
      { event: "stress", on: event.on, connections: event.connections, maxClients: event.maxClients, role, port },
      event.on ? "listener under stress: short command deadlines" : "listener stress ended",
    );
  }

  #onClose(smtp: SMTPServerSession): void {
    this.#releaseClientSlot(smtp.id);
    const session = this.#sessions.get(smtp.id);
    // smtp-server also reports connections it refused before onConnect (maxClients): no state then.
    if (!session) return;
    this.#sessions.delete(smtp.id);
    session.close();
    this.observer.connectionClosed(session.connection);
    for (const { server } of this.#servers) server.byId.delete(smtp.id);
    session.log.info({ event: "close", transactions: session.transactions }, "connection closed");
    const { plugins, services } = session.runtime;
    // The session is already gone: a close hook that hangs holds nothing but itself, until its deadline.
    void runClose(plugins, { ...services, log: session.log, connection: session.connection }).then((trace) => {
      if (trace.length > 0) this.observer.phase("close", trace, {});
    });
  }
}

function tlsInfo(cipher: { name: string; version?: string; standardName?: string }) {
  return { protocol: cipher.version ?? "TLS", cipher: cipher.standardName ?? cipher.name };
}

function protocolName(session: SMTPServerSession): "SMTP" | "ESMTP" | "ESMTPS" | "ESMTPA" | "ESMTPSA" {
  const type = session.transmissionType;
  return type === "SMTP" || type === "ESMTPS" || type === "ESMTPA" || type === "ESMTPSA" ? type : "ESMTP";
}

/** AUTH only on submission listeners, and only after TLS (GatewayConnection._isDisabled); STARTTLS only with a certificate. */
function disabledCommands(role: Role, tls: TlsFiles | undefined): string[] {
  return [...(role === "submission" ? [] : ["AUTH"]), ...(tls ? [] : ["STARTTLS"])];
}

/**
 * What makes a listener: its place and role, plus the `server` settings smtp-server reads when the
 * listener is made. A change to any of them replaces the listener, so new connections get them.
 */
function listenerIdentity(listener: PolicyConfig["server"]["listen"][number], config: PolicyConfig): string {
  const { hostname, limits, xclient, proxyProtocol } = config.server;
  return JSON.stringify([
    listener.address,
    listener.submission,
    listener.implicitTls,
    hostname,
    limits,
    xclient,
    proxyProtocol,
  ]);
}

function certificateChange(before: TlsFiles | undefined, after: TlsFiles | undefined): ReloadChanges["certificate"] {
  if (!before && !after) return undefined;
  if (!before) return "enabled";
  if (!after) return "disabled";
  const digest = (files: TlsFiles) => createHash("sha256").update(files.cert).update(files.key).digest("hex");
  return digest(before) === digest(after) ? "unchanged" : "renewed";
}

function applyOverrides(config: PolicyConfig, options: GatewayOptions): PolicyConfig {
  const listen = options.listen
    ? [{ ...config.server.listen[0], address: options.listen }, ...config.server.listen.slice(1)]
    : config.server.listen;
  const dns = options.dnsServers ? { ...config.dns, servers: [...options.dnsServers] } : config.dns;
  return {
    ...config,
    server: { ...config.server, listen },
    dns,
    ...(options.shadow ? { shadow: options.shadow } : {}),
  };
}
