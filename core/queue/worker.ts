/**
 * The delivery worker: takes due messages from the spool, delivers their pending recipients
 * (`deliverPlanned`, the same routing as proxy mode), records per-recipient outcomes, reschedules
 * deferrals on the policy's retry schedule, and when nothing is pending any more bounces the
 * failures with a DSN and deletes the message.
 *
 * Invariants: a message is deleted only after its DSN (if any) is stored; an attempt cut short by
 * `stop()` counts as a deferral and is retried after the restart; the null sender never gets a DSN.
 */
import type { Logger } from "pino";
import type { Clock } from "../contract/api.js";
import { formatReply, type Reply } from "../contract/decision.js";
import { type DeliveryOptions, deliverPlanned } from "../delivery/forward.js";
import type { RecipientOutcome } from "../delivery/result.js";
import type { Router } from "../delivery/routes.js";
import type { GatewayObserver } from "../observability/observe.js";
import { type BounceSettings, bouncePlan } from "./bounce-policy.js";
import { buildDsn, type DsnRecipient, headerSection } from "./dsn.js";
import { nextAttemptAt, type RetryPolicy } from "./retry.js";
import type { QueueEntry, RecipientState, Spool } from "./spool.js";

/** Settings read at each attempt, so a policy reload applies to messages already queued. */
export interface WorkerSettings {
  readonly hostname: string;
  readonly retry: RetryPolicy;
  readonly delivery: Omit<DeliveryOptions, "signal">;
  /** Routes DSNs to the original sender. */
  readonly router: Router;
  /** Who gets a DSN, with how much of the message. */
  readonly bounces: BounceSettings;
}

export interface WorkerOptions {
  readonly spool: Spool;
  readonly settings: () => WorkerSettings;
  readonly log: Logger;
  readonly clock: Clock;
  readonly random?: () => number;
  /** Messages in delivery at once. */
  readonly concurrency?: number;
  /** Told of every DSN the bounce policy kept from going out. */
  readonly observer?: Pick<GatewayObserver, "bounceSuppressed">;
}

export class DeliveryWorker {
  readonly #active = new Map<string, { controller: AbortController; done: Promise<void> }>();
  readonly #held = new Set<string>();
  #timer: NodeJS.Timeout | null = null;
  #stopped = true;

  constructor(private readonly options: WorkerOptions) {}

  start(): void {
    this.#stopped = false;
    this.wake();
  }

  /** Stops taking messages, aborts attempts in flight (their recipients stay pending) and waits for them. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    for (const { controller } of this.#active.values()) controller.abort();
    await Promise.all([...this.#active.values()].map((a) => a.done));
  }

  /** Messages in delivery now. */
  get busy(): number {
    return this.#active.size;
  }

  /**
   * Starts due messages (up to the concurrency), taken from the spool's schedule in due order, and
   * sets the timer for the next one. When every slot is busy the rest waits: each delivery that
   * ends calls wake() again.
   */
  wake(): void {
    if (this.#stopped) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const { spool } = this.options;
    const now = this.options.clock.now();
    const limit = this.options.concurrency ?? 20;
    while (this.#active.size < limit) {
      const entry = spool.takeDue(now);
      if (!entry) break;
      // In delivery (its attempt schedules it again when it ends) or held (hold() does).
      if (this.#active.has(entry.envelope.id) || this.#held.has(entry.envelope.id)) continue;
      this.#begin(entry);
    }
    const next = spool.nextDueAt();
    if (next !== undefined && this.#active.size < limit) {
      this.#timer = setTimeout(() => this.wake(), Math.max(0, next - now));
    }
  }

  #begin(entry: QueueEntry): void {
    const controller = new AbortController();
    const id = entry.envelope.id;
    const done = this.#attempt(entry, controller.signal)
      .catch((error: Error) => {
        // The spool failed under us (disk full…): try again later rather than lose track.
        this.options.log.error({ id, err: error.message }, "delivery bookkeeping failed");
        entry.nextAt = this.options.clock.now() + this.options.settings().retry.schedule[0];
      })
      .finally(() => {
        this.#active.delete(id);
        // Back on the schedule when still queued: a wake while this attempt was finishing may
        // have taken (and passed over) the place its deferral had just made.
        if (this.options.spool.get(id)) this.options.spool.schedule(entry);
        this.wake();
      });
    this.#active.set(id, { controller, done });
  }

  async #attempt(entry: QueueEntry, signal: AbortSignal): Promise<void> {
    const { spool, log, clock } = this.options;
    const settings = this.options.settings();
    const { envelope } = entry;
    const pending = envelope.recipients.filter((_, i) => entry.state[i].status === "pending");
    if (pending.length > 0) {
      const result = await deliverPlanned(envelope.from, pending, envelope.dsn, () => spool.content(entry), {
        ...settings.delivery,
        signal,
        onSettled: (settled) => this.#settled(entry, settled.recipients),
      });
      applyOutcomes(entry, result.outcomes, clock.now());
      if (!signal.aborted) entry.attempts++;
      log.info(
        {
          event: "delivery",
          id: envelope.id,
          attempt: entry.attempts,
          recipients: result.outcomes.map((o) => ({ to: o.recipient, status: o.status, reply: formatReply(o.reply) })),
        },
        "delivery attempt",
      );
    }
    if (entry.state.some((s) => s.status === "pending")) {
      const now = clock.now();
      const next = signal.aborted
        ? now
        : nextAttemptAt(entry.attempts, envelope.arrivedAt, now, settings.retry, this.options.random);
      if (next !== "expired") {
        entry.nextAt = next;
        await spool.update(entry);
        log.info({ event: "deferred", id: envelope.id, attempts: entry.attempts, at: now, nextAt: next }, "deferred");
        return;
      }
      entry.state = entry.state.map((s) =>
        s.status === "pending" ? { ...s, status: "failed", reply: expired(s.reply), at: now } : s,
      );
    }
    await this.finish(entry);
  }

  /**
   * A next hop has just answered for some recipients: what it took or refused is written down before
   * anything else happens, so a crash from here on cannot deliver them again.
   */
  #settled(entry: QueueEntry, outcomes: readonly RecipientOutcome[]): void {
    if (!outcomes.some((o) => o.status !== "deferred")) return;
    applyOutcomes(entry, outcomes, this.options.clock.now());
    try {
      this.options.spool.recordSettled(entry);
    } catch (error) {
      // The attempt's own bookkeeping writes the outcome again when it ends.
      this.options.log.error({ id: entry.envelope.id, err: (error as Error).message }, "delivery mark not written");
    }
  }

  /** Every recipient is final: the DSN for the failures (if any) is stored, then the message goes. */
  async finish(entry: QueueEntry): Promise<void> {
    await this.#bounce(entry, this.options.settings());
    await this.options.spool.complete(entry);
    this.options.log.info({ event: "done", id: entry.envelope.id, attempts: entry.attempts }, "message done");
  }

  /** Runs `action` on a message while the worker leaves it alone (an attempt in flight is aborted first). */
  async hold(id: string, action: () => Promise<void>): Promise<void> {
    this.#held.add(id);
    try {
      const active = this.#active.get(id);
      if (active) {
        active.controller.abort();
        await active.done;
      }
      await action();
    } finally {
      this.#held.delete(id);
      // Its place on the schedule may have come up while it was held.
      const entry = this.options.spool.get(id);
      if (entry) this.options.spool.schedule(entry);
      this.wake();
    }
  }

  /** Stores the DSN for the recipients that failed and asked for one (NOTIFY absent or with FAILURE). */
  async #bounce(entry: QueueEntry, settings: WorkerSettings): Promise<void> {
    const { envelope } = entry;
    if (envelope.from === "") return;
    const recipients: DsnRecipient[] = [];
    envelope.recipients.forEach((recipient, i) => {
      const state = entry.state[i];
      if (state.status !== "failed") return;
      if (recipient.notify && !recipient.notify.includes("FAILURE")) return;
      recipients.push({
        address: recipient.address,
        ...(recipient.orcpt ? { orcpt: recipient.orcpt } : {}),
        action: "failed",
        reply: state.reply ?? { code: 550, enhanced: "5.0.0", text: "Undeliverable" },
        ...(state.remoteMta ? { remoteMta: state.remoteMta } : {}),
        ...(state.at ? { lastAttempt: new Date(state.at) } : {}),
      });
    });
    if (recipients.length === 0) return;
    const { spool, clock, log } = this.options;
    const plan = bouncePlan(envelope.evidence, settings.bounces, { ret: envelope.dsn.ret, size: envelope.size });
    if (plan.kind === "suppress") {
      // Never silent: the sender loses its notification, so the operator must be able to see why.
      log.warn(
        {
          event: "bounce-suppressed",
          id: envelope.id,
          to: envelope.from,
          reason: plan.reason,
          recipients: recipients.map((r) => ({ to: r.address, reply: formatReply(r.reply) })),
        },
        "bounce suppressed",
      );
      this.options.observer?.bounceSuppressed(plan.reason);
      return;
    }
    const { ret } = plan;
    const original = await spool.readAll(entry, ret === "FULL" ? Number.POSITIVE_INFINITY : 64 * 1024);
    const now = clock.now();
    const dsn = buildDsn({
      reportingMta: settings.hostname,
      to: envelope.from,
      ...(envelope.dsn.envid !== undefined ? { envid: envelope.dsn.envid } : {}),
      arrivalDate: new Date(envelope.arrivedAt),
      date: new Date(now),
      recipients,
      returned:
        ret === "FULL" ? { kind: "full", content: original } : { kind: "headers", content: headerSection(original) },
    });
    const domain = envelope.from.slice(envelope.from.lastIndexOf("@") + 1).toLowerCase();
    const stored = await spool.store({
      envelope: {
        origin: envelope.id,
        from: "",
        dsn: {},
        recipients: [
          {
            address: envelope.from,
            route: settings.router.routeFor({ recipientDomain: domain, recipient: envelope.from, senderDomain: "" }),
          },
        ],
        arrivedAt: now,
        messageId: dsn.messageId,
      },
      head: Buffer.alloc(0),
      source: dsn.raw,
      bodyStart: 0,
      nextAt: now,
    });
    this.options.log.info({ event: "dsn", id: envelope.id, dsn: stored.envelope.id, to: envelope.from }, "DSN queued");
  }
}

/** The outcomes of an attempt on the recipients still pending: deferred ones stay pending. */
function applyOutcomes(entry: QueueEntry, outcomes: readonly RecipientOutcome[], now: number): void {
  const byAddress = new Map(outcomes.map((o) => [o.recipient, o]));
  entry.state = entry.envelope.recipients.map((recipient, i): RecipientState => {
    const outcome = entry.state[i].status === "pending" ? byAddress.get(recipient.address) : undefined;
    if (!outcome) return entry.state[i];
    const status = outcome.status === "deferred" ? "pending" : outcome.status;
    return { status, reply: outcome.reply, at: now, ...(outcome.nextHop ? { remoteMta: outcome.nextHop } : {}) };
  });
}

/** A deferral that ran out of time: the last reply stays the diagnosis, the status says why it ended. */
function expired(last: Reply | undefined): Reply {
  return {
    code: last?.code ?? 451,
    enhanced: "4.4.7",
    text: `Delivery time expired${last ? `; last reply: ${last.code} ${last.enhanced} ${last.text}` : ""}`,
  };
}
