/**
 * Safe roll-out at run time: the transaction log and the shadow policy.
 *
 * `shadow: FILE` (or `portcullis start --shadow FILE`) names a candidate policy whose rules are
 * evaluated on every finished transaction, over the same recorded findings replay uses
 * (core/observability/replay.ts), beside the live policy. The candidate never acts: it sees the record only after
 * the live answer was given. Each difference is logged (`"event":"shadow"`) and counted in
 * `portcullis_shadow_differences_total{live,candidate,rule}`; every evaluated transaction in
 * `portcullis_shadow_transactions_total{outcome}` (the candidate's outcome), while the gateway has
 * metrics.
 *
 * The candidate's pipeline is set up (its rules are compiled against the findings its plugins
 * declare) but its hooks never run, and its own `shadow`, `observability` and delivery settings are
 * ignored. It is read when the gateway starts and at every reload; a candidate that does not load
 * refuses the start or the reload like a problem in the policy itself.
 */
import { resolve } from "node:path";
import type { Logger } from "pino";
import type { Clock } from "../contract/api.js";
import { buildRuntime, type Runtime } from "../engine/runtime.js";
import { loadPolicy } from "../policy/load.js";
import type { GatewayMetrics } from "./metrics.js";
import { type Candidate, candidateOf, differences, recordedResult, replayRecord } from "./replay.js";
import {
  type RecordSink,
  SessionRecorder,
  TransactionLog,
  type TransactionLogOptions,
  type TransactionRecord,
} from "./transaction-log.js";

/** Where the shadow's counts go: the gateway's metrics, or nowhere while it has none. */
type ShadowMetrics = () => Pick<GatewayMetrics, "shadowEvaluated"> | null;

/** A candidate policy evaluated beside the live one. */
export class Shadow {
  private constructor(
    readonly file: string,
    private readonly candidate: Candidate,
    private readonly metrics: ShadowMetrics,
  ) {}

  /** Loads the candidate and compiles its rules; plugins are set up with the live runtime's services. */
  static async load(file: string, live: Runtime, metrics: ShadowMetrics, log: Logger): Promise<Shadow> {
    // The candidate may name the same plugins as the live policy.
    const policy = await loadPolicy(file, live.policy.catalogue);
    const { clock, state, dns } = live.services;
    const runtime = await buildRuntime(policy, { log: log.child({ shadow: policy.file }), clock, state, dns });
    return new Shadow(policy.file, candidateOf(runtime), metrics);
  }

  /** Compares the candidate's answer to the live one; logs and counts the differences. */
  async evaluate(record: TransactionRecord, log: Logger): Promise<void> {
    const live = recordedResult(record);
    const candidate = await replayRecord(record, this.candidate);
    const found = differences(live, candidate);
    this.metrics()?.shadowEvaluated(candidate.outcome, found);
    if (found.length === 0) return;
    log.info(
      { event: "shadow", candidate: this.file, live, shadow: candidate, differences: found },
      "shadow policy would answer differently",
    );
  }
}

/**
 * What a gateway records for roll-out: its transaction log and shadow, following the policy across
 * reloads. Sessions get a recorder from the policy version they started with.
 */
export class Rollout {
  #log: TransactionLog | null = null;
  #shadow: Shadow | null = null;
  constructor(
    private readonly deps: { readonly log: Logger; readonly clock: Clock; readonly metrics: ShadowMetrics },
  ) {}

  /** Follows `runtime`'s policy; on any problem nothing changes and the error is thrown. */
  async apply(runtime: Runtime): Promise<void> {
    const { config, policy } = runtime;
    const shadow = config.shadow
      ? await Shadow.load(resolve(policy.dir, config.shadow), runtime, this.deps.metrics, this.deps.log)
      : null;
    const wanted: TransactionLogOptions | null = config.observability.transactionLog ?? null;
    if (JSON.stringify(wanted) !== JSON.stringify(this.#log?.options ?? null)) {
      const opened = wanted ? new TransactionLog(wanted, this.deps.clock) : null;
      this.#log?.close();
      this.#log = opened;
    }
    this.#shadow = shadow;
    if (shadow) this.deps.log.info({ shadow: shadow.file }, "shadow policy loaded");
  }

  /** A recorder for a new session, or null when nothing is recorded (no log, no shadow). */
  recorder(): SessionRecorder | null {
    const file = this.#log;
    const shadow = this.#shadow;
    if (!file && !shadow) return null;
    const sink: RecordSink = (record, log) => {
      // Roll-out is observation: a failure here is logged and never reaches the client.
      try {
        file?.write(record);
      } catch (err) {
        log.error({ err: (err as Error).message, path: file?.options.path }, "transaction log write failed");
      }
      shadow?.evaluate(record, log).catch((err: Error) => {
        log.error({ err: err.message, candidate: shadow.file }, "shadow evaluation failed");
      });
    };
    return new SessionRecorder(sink, this.deps.clock);
  }

  close(): void {
    this.#log?.close();
    this.#log = null;
  }
}
