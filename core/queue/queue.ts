/**
 * The gateway's side of delivery: what happens to a message after the data and queue hooks
 * accepted it, in both modes, plus the spool, the delivery worker, the next-hop connection pool and
 * the control socket of `portcullis queue`.
 *
 * - queue mode: the message and envelope are stored and fsynced, then 250; the worker delivers.
 *   A spool that is full or cannot be written gives 452 4.3.1: nothing is acknowledged unstored.
 * - proxy mode: delivered while the client waits (`proxyReply`); when some recipients got it and
 *   others did not, the rest is stored here — deferred ones retried, failed ones bounced with a DSN.
 */
import { rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import type { Clock, TransactionContext } from "../contract/api.js";
import { formatReply, type Reply } from "../contract/decision.js";
import {
  type DeliveryOptions,
  deliverPlanned,
  type EnvelopeDsn,
  envelopeAddress,
  envelopeDsn,
  type OutgoingMessage,
  type PlannedRecipient,
  planRecipients,
  proxyReply,
} from "../delivery/forward.js";
import { httpPolicyFetch, MtaStsCache } from "../delivery/mta-sts.js";
import { ConnectionPool } from "../delivery/pool.js";
import type { RecipientOutcome } from "../delivery/result.js";
import { NextHopVerifier } from "../delivery/verify.js";
import type { Runtime } from "../engine/runtime.js";
import type { GatewayObserver } from "../observability/observe.js";
import { type HostPort, normalizeIp } from "../toolkit/netaddr.js";
import { QueueAdmin, type QueueRequest, type QueueResponse } from "./admin.js";
import { senderEvidence } from "./bounce-policy.js";
import { nextAttemptAt } from "./retry.js";
import { type RecipientState, Spool, SpoolUnavailable } from "./spool.js";
import { DeliveryWorker, type WorkerSettings } from "./worker.js";

export interface QueueDependencies {
  /** The current policy: read at each use, so a reload applies to the next message and attempt. */
  readonly runtime: () => Runtime;
  readonly log: Logger;
  readonly clock: Clock;
  /** Where this gateway listens: an MX pointing at one of these is a loop. */
  readonly listeners: () => readonly HostPort[];
  readonly random?: () => number;
  /** The gateway's metrics, told every delivery attempt's outcomes. */
  readonly observer?: GatewayObserver;
}

export interface HandOff {
  readonly reply: Reply;
  readonly nextHops: string[];
  readonly recipients: Array<{ to: string; status: string; reply: string }>;
}

const SPOOL_UNAVAILABLE: Reply = {
  code: 452,
  enhanced: "4.3.1",
  text: "Insufficient system storage, try again later",
};

/** Connections kept per next hop (notes §12: about 4 is where the gain levels off). */
const POOL_SIZE = 4;
const POOL_IDLE_MS = 10_000;

export class DeliveryQueue {
  readonly pool = new ConnectionPool({ defaultLimit: POOL_SIZE, idleMs: POOL_IDLE_MS });
  /** Recipient verification at RCPT time, on the same connections as delivery. */
  readonly verifier: NextHopVerifier;
  #spool: Spool | null = null;
  #opening: Promise<Spool> | null = null;
  #worker: DeliveryWorker | null = null;
  #control: Server | null = null;
  #controlSockets = new Set<Socket>();
  #mtaSts: { url: string; cache: MtaStsCache } | null = null;
  /** Delivery settings per policy: built once per runtime, not per message or attempt. */
  readonly #settingsByRuntime = new WeakMap<Runtime, WorkerSettings>();
  #stopped = false;

  constructor(private readonly deps: QueueDependencies) {
    this.verifier = new NextHopVerifier(this.pool, deps.clock);
  }

  /** Opens the spool and starts the worker. An unusable spool is logged and tried again per message. */
  async start(): Promise<void> {
    await this.#ensureSpool().catch((error: Error) => {
      this.deps.log.error({ err: error.message }, "spool unavailable; mail that needs it gets 452 4.3.1");
    });
  }

  get spool(): Spool | null {
    return this.#spool;
  }

  get worker(): DeliveryWorker | null {
    return this.#worker;
  }

  /** After a policy reload: idle connections may follow old route settings, so they go. */
  reloaded(): void {
    this.pool.close(false);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#opening?.catch(() => undefined);
    for (const socket of this.#controlSockets) socket.destroy();
    await new Promise<void>((resolve) => (this.#control ? this.#control.close(() => resolve()) : resolve()));
    await this.#worker?.stop();
    this.pool.close();
    await this.#spool?.close();
  }

  /**
   * Delivery settings from the given policy, built once per runtime (not per message or attempt):
   * the loop test reads the interface addresses, so those are taken at the first delivery under a
   * policy and again after a reload.
   */
  deliveryOptions(runtime: Runtime): Omit<DeliveryOptions, "signal"> {
    return this.#settingsFor(runtime).delivery;
  }

  /** What happens to an accepted message: stored (queue mode) or forwarded now (proxy mode). */
  async handOff(tx: TransactionContext, message: OutgoingMessage, runtime: Runtime): Promise<HandOff> {
    const planned = planRecipients(tx, runtime.router);
    const from = envelopeAddress(tx.sender.local, tx.sender.domain);
    const dsn = envelopeDsn(tx.sender);
    const summary = (status: (i: number) => string, reply: (i: number) => Reply) =>
      planned.map((r, i) => ({ to: r.address, status: status(i), reply: formatReply(reply(i)) }));

    if (runtime.config.delivery.mode === "queue") {
      try {
        const entry = await this.#store(tx, message, planned, from, dsn);
        const reply: Reply = { code: 250, enhanced: "2.0.0", text: `Ok: queued as ${entry.envelope.id}` };
        return {
          reply,
          nextHops: ["queue"],
          recipients: summary(
            () => "queued",
            () => reply,
          ),
        };
      } catch (error) {
        return this.#unavailable(error, planned);
      }
    }

    const delivery = await deliverPlanned(from, planned, dsn, () => message.content(), this.deliveryOptions(runtime));
    const { reply, takeOver } = proxyReply(delivery.outcomes, tx.id);
    const byAddress = new Map<string, RecipientOutcome>(delivery.outcomes.map((o) => [o.recipient, o]));
    const outcomeOf = (i: number) => byAddress.get(planned[i].address)!;
    if (takeOver) {
      const state = planned.map((_, i): RecipientState => {
        const o = outcomeOf(i);
        const status = o.status === "deferred" ? "pending" : o.status;
        return { status, reply: o.reply, at: this.deps.clock.now(), ...(o.nextHop ? { remoteMta: o.nextHop } : {}) };
      });
      try {
        // Attempt 1 was the proxy attempt: retries follow the schedule from here. With nothing left
        // to retry the worker's only task is the DSN for the failed ones, due now, not at the first retry.
        const now = this.deps.clock.now();
        const next = nextAttemptAt(1, now, now, this.#settingsFor(runtime).retry, this.deps.random);
        const retrying = state.some((s) => s.status === "pending") && next !== "expired";
        await this.#store(tx, message, planned, from, dsn, {
          state,
          attempts: 1,
          nextAt: retrying ? next : now,
        });
      } catch (error) {
        // The client will resend to everyone: duplicates for the delivered, nothing lost.
        return this.#unavailable(error, planned);
      }
    }
    return {
      reply,
      nextHops: delivery.nextHops,
      recipients: summary(
        (i) => outcomeOf(i).status,
        (i) => outcomeOf(i).reply,
      ),
    };
  }

  /** Answers `portcullis queue` requests in this process. */
  async admin(request: QueueRequest): Promise<QueueResponse> {
    const spool = await this.#ensureSpool();
    return new QueueAdmin(spool, this.#worker!).handle(request);
  }

  async #store(
    tx: TransactionContext,
    message: OutgoingMessage,
    recipients: PlannedRecipient[],
    from: string,
    dsn: EnvelopeDsn,
    progress?: { state: RecipientState[]; attempts: number; nextAt: number },
  ) {
    const spool = await this.#ensureSpool();
    const now = this.deps.clock.now();
    const messageId = message.source.headers.find((h) => h.name.toLowerCase() === "message-id")?.value.trim();
    const entry = await spool.store({
      envelope: {
        origin: tx.id,
        from,
        dsn,
        recipients,
        arrivedAt: now,
        ...(messageId ? { messageId } : {}),
        evidence: senderEvidence(tx),
      },
      head: message.head,
      source: message.source,
      bodyStart: message.bodyStart,
      state: progress?.state,
      attempts: progress?.attempts,
      nextAt: progress?.nextAt ?? now,
    });
    this.#worker?.wake();
    return entry;
  }

  #unavailable(error: unknown, planned: PlannedRecipient[]): HandOff {
    this.deps.log.error({ err: (error as Error).message }, "message not stored");
    if (!(error instanceof SpoolUnavailable)) {
      // Not a spool problem: something is broken here; still nothing may be acknowledged.
      this.deps.log.error({ err: (error as Error).stack }, "unexpected error storing a message");
    }
    return {
      reply: SPOOL_UNAVAILABLE,
      nextHops: [],
      recipients: planned.map((r) => ({ to: r.address, status: "deferred", reply: formatReply(SPOOL_UNAVAILABLE) })),
    };
  }

  /** The spool, opened on first need; after a failure each new need tries again. */
  #ensureSpool(): Promise<Spool> {
    if (this.#spool) return Promise.resolve(this.#spool);
    if (this.#stopped) return Promise.reject(new SpoolUnavailable("the gateway is stopping"));
    this.#opening ??= this.#open().finally(() => {
      this.#opening = null;
    });
    return this.#opening;
  }

  async #open(): Promise<Spool> {
    const { config } = this.deps.runtime();
    const dir = config.delivery.spool;
    let spool: Spool;
    try {
      spool = await Spool.open(dir, { log: this.deps.log, limitBytes: config.delivery.spoolLimit });
    } catch (error) {
      throw error instanceof SpoolUnavailable
        ? error
        : new SpoolUnavailable(`cannot open the spool ${dir}: ${(error as Error).message}`);
    }
    const worker = new DeliveryWorker({
      spool,
      settings: () => this.#settings(),
      log: this.deps.log,
      clock: this.deps.clock,
      random: this.deps.random,
      observer: this.deps.observer,
    });
    this.#spool = spool;
    this.#worker = worker;
    await this.#listenControl(spool, worker).catch((error: Error) => {
      this.deps.log.warn(
        { err: error.message },
        "queue control socket unavailable; `portcullis queue` cannot reach us",
      );
    });
    worker.start();
    return spool;
  }

  #settings(): WorkerSettings {
    return this.#settingsFor(this.deps.runtime());
  }

  #settingsFor(runtime: Runtime): WorkerSettings {
    const known = this.#settingsByRuntime.get(runtime);
    if (known) return known;
    const { config, services } = runtime;
    const delivery = config.delivery;
    const settings: WorkerSettings = {
      hostname: config.server.hostname,
      retry: { schedule: delivery.retry.schedule, maxAgeMs: delivery.retry.maxAge },
      delivery: {
        hostname: config.server.hostname,
        timeoutMs: delivery.timeout,
        dns: services.dns,
        pool: this.pool,
        mxPort: delivery.mxPort,
        isSelf: this.#selfTest(config.server.hostname, delivery.mxPort),
        observer: this.deps.observer,
        ...(delivery.mtaSts.enabled ? { mtaSts: this.#mtaStsCache(runtime) } : {}),
      },
      router: runtime.router,
      bounces: delivery.bounces,
    };
    this.#settingsByRuntime.set(runtime, settings);
    return settings;
  }

  /** One JSON request line in, one JSON response line out. */
  async #listenControl(spool: Spool, worker: DeliveryWorker): Promise<void> {
    const path = join(spool.dir, "control.sock");
    // We hold the spool's lock, so a socket file left here belongs to a process that is gone.
    await rm(path, { force: true });
    const admin = new QueueAdmin(spool, worker);
    const server = createServer((socket) => {
      this.#controlSockets.add(socket);
      socket.on("close", () => this.#controlSockets.delete(socket));
      socket.on("error", () => undefined);
      let buffer = "";
      socket.setEncoding("utf8");
      socket.on("data", (chunk: string) => {
        buffer += chunk;
        const newline = buffer.indexOf("\n");
        if (newline < 0) return;
        const line = buffer.slice(0, newline);
        buffer = "";
        let request: QueueRequest;
        try {
          request = JSON.parse(line) as QueueRequest;
        } catch {
          socket.end(`${JSON.stringify({ ok: false, error: "bad request" })}\n`);
          return;
        }
        admin.handle(request).then(
          (response) => socket.end(`${JSON.stringify(response)}\n`),
          (error: Error) => socket.end(`${JSON.stringify({ ok: false, error: error.message })}\n`),
        );
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.unref();
    this.#control = server;
  }

  /**
   * Loop detection: an MX host is this gateway when it has our name, or is one of our listening
   * addresses (any local interface address for a wildcard listener) on the MX port.
   */
  #selfTest(hostname: string, mxPort: number): (exchange: string, address: string) => boolean {
    const name = hostname.toLowerCase();
    const addresses = new Set<string>();
    for (const listener of this.deps.listeners()) {
      if (listener.port !== mxPort) continue;
      const host = normalizeIp(listener.host);
      if (host === "0.0.0.0" || host === "::") {
        for (const list of Object.values(networkInterfaces())) {
          for (const info of list ?? []) addresses.add(normalizeIp(info.address));
        }
      } else {
        addresses.add(host);
      }
    }
    return (exchange, address) => exchange.toLowerCase() === name || addresses.has(normalizeIp(address));
  }

  /** One cache for the gateway's life; a reload that changes the policy URL starts a new one. */
  #mtaStsCache(runtime: Runtime): MtaStsCache {
    const url = runtime.config.delivery.mtaSts.policyUrl;
    if (this.#mtaSts?.url !== url) {
      this.#mtaSts = { url, cache: new MtaStsCache(runtime.services.dns, httpPolicyFetch(url), this.deps.clock) };
    }
    return this.#mtaSts.cache;
  }
}
