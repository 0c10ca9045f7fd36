/**
 * Multi-core: `server.workers: auto | N`. The process started by `portcullis start` becomes a
 * supervisor that forks N node:cluster workers; each worker runs a whole gateway and the cluster
 * shares the listening sockets between them. The supervisor serves `observability.metrics` (the
 * workers' metrics summed, ready when every worker is) and passes SIGHUP / SIGTERM on.
 *
 * Spool correctness with several workers rests on one rule: a spool folder belongs to exactly one
 * process at a time (core/queue/spool.ts locks it). Worker slot 1 uses `delivery.spool` itself —
 * the same folder as a single-process gateway, so changing `workers` never strands its mail — and
 * slot K > 1 uses `delivery.spool/workers/K`. A message is therefore stored and delivered by one
 * worker only (never twice by two), and when a worker dies the supervisor forks a replacement for
 * the same slot, which takes the dead process's lock over and resumes its spool: nothing is
 * stranded and no restart of the gateway is needed. Lowering `workers` leaves the folders of the
 * slots above it; the supervisor warns about them (docs/operations.md says how to drain one).
 */
import cluster, { type Worker } from "node:cluster";
import { readdir } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import {
  type Check,
  gatewayEndpoints,
  gatewayReadiness,
  OpsListener,
  type Readiness,
  startOpsServer,
} from "../core/observability/http.js";
import type { LoadedPolicy } from "../core/policy/load.js";
import type { PolicyConfig } from "../core/policy/schema.js";
import type { Gateway } from "../core/smtp/gateway.js";
import { formatHostPort } from "../core/toolkit/netaddr.js";

/** The worker's slot (1…N), passed by the supervisor; a replacement gets the dead worker's slot. */
const SLOT_ENV = "PORTCULLIS_WORKER_SLOT";

/** A worker that has not answered a metrics or readiness request by then counts as not ready. */
const ANSWER_DEADLINE_MS = 2_000;

/** Crash-looping workers are forked again after a growing pause, up to this. */
const MAX_RESPAWN_DELAY_MS = 30_000;

export function workerCount(config: PolicyConfig): number {
  const { workers } = config.server;
  return workers === "auto" ? availableParallelism() : workers;
}

/** The slot of this process when it is a cluster worker, else null. */
function workerSlot(): number | null {
  if (!cluster.isWorker) return null;
  const slot = Number(process.env[SLOT_ENV]);
  return Number.isInteger(slot) && slot >= 1 ? slot : null;
}

/** The spool folder of a worker slot. */
export function slotSpool(spool: string, slot: number): string {
  return slot === 1 ? spool : join(spool, "workers", String(slot));
}

/**
 * The policy as this process runs it. In a worker: its slot's own spool, no ops listener (the
 * supervisor serves it) and no dashboard. Elsewhere the policy unchanged. Applied at start and at every reload.
 */
export function workerPolicy(policy: LoadedPolicy): LoadedPolicy {
  const slot = workerSlot();
  if (slot === null) return policy;
  const { config } = policy;
  return {
    ...policy,
    config: {
      ...config,
      delivery: { ...config.delivery, spool: slotSpool(config.delivery.spool, slot) },
      // The supervisor serves the summed metrics; a dashboard shows one process, so workers have none.
      observability: { ...config.observability, metrics: undefined, dashboard: undefined },
    },
  };
}

/** Whether this process is a worker whose supervisor serves the policy's metrics, so must count them for it. */
export function countsForSupervisor(policy: LoadedPolicy): boolean {
  return workerSlot() !== null && policy.config.observability.metrics !== undefined;
}

interface OpsRequest {
  readonly portcullis: "ops";
  readonly id: number;
}

interface OpsAnswer {
  readonly portcullis: "ops";
  readonly id: number;
  readonly metrics: Awaited<ReturnType<Registry["getMetricsAsJSON"]>>;
  readonly readiness: Readiness;
}

function isOpsMessage(message: unknown): message is OpsRequest & Partial<OpsAnswer> {
  return typeof message === "object" && message !== null && (message as OpsRequest).portcullis === "ops";
}

/**
 * Starts what operators reach from outside for a gateway in this process: in a worker, answers to
 * the supervisor's metrics and readiness requests; otherwise the HTTP endpoint when the policy has
 * `observability.metrics` (a worker's policy never has it: workerPolicy), which follows reloads.
 */
export async function startOperations(gateway: Gateway): Promise<OpsListener> {
  if (workerSlot() !== null) {
    process.on("message", (message: unknown) => {
      if (!isOpsMessage(message)) return;
      Promise.all([gateway.metrics?.registry.getMetricsAsJSON() ?? [], gatewayReadiness(gateway)]).then(
        ([metrics, readiness]) => process.send?.({ portcullis: "ops", id: message.id, metrics, readiness }),
        (error: Error) => gateway.log.error({ err: error.message }, "ops request failed"),
      );
    });
  }
  const ops = new OpsListener(gatewayEndpoints(gateway));
  await ops.follow(gateway.runtime.config.observability.metrics);
  return ops;
}

export interface SupervisorOptions {
  readonly policy: LoadedPolicy;
  readonly log: Logger;
}

/** Runs the supervisor until SIGTERM/SIGINT; resolves with the exit code. */
export async function superviseWorkers({ policy, log }: SupervisorOptions): Promise<number> {
  const count = workerCount(policy.config);
  const slots = new Map<number, Worker>();
  const crashes = new Map<number, number>();
  let stopping = false;
  let nextId = 1;
  const pending = new Map<number, (answer: OpsAnswer) => void>();

  const fork = (slot: number) => {
    const worker = cluster.fork({ [SLOT_ENV]: String(slot) });
    slots.set(slot, worker);
    worker.on("message", (message: unknown) => {
      if (isOpsMessage(message) && message.metrics) pending.get(message.id)?.(message as OpsAnswer);
    });
    worker.on("listening", () => crashes.delete(slot));
    log.info({ event: "worker", slot, pid: worker.process.pid }, "worker started");
  };

  cluster.on("exit", (worker, code, signal) => {
    const slot = [...slots].find(([, w]) => w === worker)?.[0];
    if (slot === undefined) return;
    slots.delete(slot);
    if (stopping) return;
    // A replacement for the same slot takes over the dead worker's spool (and its lock).
    const crashCount = (crashes.get(slot) ?? 0) + 1;
    crashes.set(slot, crashCount);
    const delay = Math.min(MAX_RESPAWN_DELAY_MS, 100 * 2 ** (crashCount - 1));
    log.error({ event: "worker", slot, pid: worker.process.pid, code, signal, respawnInMs: delay }, "worker died");
    setTimeout(() => {
      if (!stopping) fork(slot);
    }, delay);
  });

  await warnAboutOrphanSpools(policy.config.delivery.spool, count, log);
  if (policy.config.observability.dashboard) {
    log.warn("observability.dashboard is not served with server.workers above 1: each worker sees only its share");
  }
  if (policy.config.state.store === "memory") {
    log.warn("state store is memory: each worker keeps its own rate limits and greylist; use Redis to share them");
  }
  for (let slot = 1; slot <= count; slot++) fork(slot);

  /** Asks every live worker; a worker that does not answer in time is left out (and not ready). */
  const ask = async (): Promise<Map<number, OpsAnswer | null>> => {
    const answers = await Promise.all(
      [...slots].map(async ([slot, worker]) => {
        const id = nextId++;
        const answer = new Promise<OpsAnswer | null>((resolve) => {
          const timer = setTimeout(() => {
            pending.delete(id);
            resolve(null);
          }, ANSWER_DEADLINE_MS);
          pending.set(id, (reply) => {
            clearTimeout(timer);
            pending.delete(id);
            resolve(reply);
          });
        });
        if (!worker.isConnected()) return [slot, null] as const;
        worker.send({ portcullis: "ops", id } satisfies OpsRequest);
        return [slot, await answer] as const;
      }),
    );
    return new Map(answers);
  };

  const address = policy.config.observability.metrics;
  const ops = address
    ? await startOpsServer(address, {
        async metrics() {
          const answers = [...(await ask()).values()].filter((answer) => answer !== null);
          const { AggregatorRegistry } = await import("prom-client");
          const registry = AggregatorRegistry.aggregate(answers.map((answer) => answer.metrics));
          return { contentType: registry.contentType, body: await registry.metrics() };
        },
        async ready() {
          const answers = await ask();
          const checks: Record<string, Check> = {};
          for (let slot = 1; slot <= count; slot++) {
            const answer = answers.get(slot);
            if (!answer) {
              checks[`worker${slot}`] = { ok: false, detail: slots.has(slot) ? "no answer" : "not running" };
              continue;
            }
            for (const [name, check] of Object.entries(answer.readiness.checks))
              checks[`worker${slot}.${name}`] = check;
          }
          return { ready: Object.values(checks).every((check) => check.ok), checks };
        },
      })
    : null;
  if (ops) log.info({ metrics: formatHostPort(ops.address) }, "metrics endpoint listening");

  return new Promise<number>((resolve) => {
    let signals = 0;
    const stop = (signal: NodeJS.Signals) => {
      signals++;
      stopping = true;
      // Each worker drains (first signal) or exits at once (second), like a single gateway.
      for (const worker of slots.values()) worker.process.kill(signal);
      if (signals > 1) process.exit(0);
      if (signals === 1) {
        const done = () => {
          if (slots.size > 0) return;
          cluster.off("exit", done);
          (ops?.close() ?? Promise.resolve()).then(() => resolve(0));
        };
        cluster.on("exit", done);
        done();
      }
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGTERM"));
    process.on("SIGHUP", () => {
      for (const worker of slots.values()) worker.process.kill("SIGHUP");
    });
  });
}

/** Spool folders of slots above the worker count hold mail no worker delivers. */
async function warnAboutOrphanSpools(spool: string, count: number, log: Logger): Promise<void> {
  const names = await readdir(join(spool, "workers")).catch(() => [] as string[]);
  const orphans = names.filter((name) => Number(name) > count);
  if (orphans.length > 0) {
    log.warn(
      { spools: orphans.map((name) => join(spool, "workers", name)) },
      "spool folders of worker slots above server.workers: their messages wait until a worker with that slot runs again",
    );
  }
}
