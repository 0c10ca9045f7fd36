/**
 * The two gateway policies the benchmark runs: (b) a plain relay, and (c) the full edge policy of
 * Built from whatever exists in the tree today. Plugins and queue mode are being written
 * while this benchmark already runs, so (c) takes each part that is present, leaves out what is not,
 * and says which is which.
 */
import { readdir } from "node:fs/promises";
import { stringify } from "yaml";
import { parsePolicy } from "../../app/catalogue.js";
import { PolicyError } from "../../core/policy/load.js";
import { builtinPluginNames } from "../../plugins/index.js";
import { BENCH } from "./mail.js";

export interface PolicySettings {
  readonly sinkPort: number;
  readonly dns: string;
  readonly spool: string;
  readonly logLevel: string;
  /** Room for this many simultaneous connections from 127.0.0.1. */
  readonly maxConnections: number;
  /** `server.workers`: gateway processes sharing the listener (1 = no cluster). */
  readonly workers: number;
  /** Turn on `observability.dashboard` (loopback, a free port), to measure what keeping its activity costs. */
  readonly dashboard?: boolean;
}

/** One part of the edge policy and whether this run has it. */
export interface EdgePart {
  readonly part: string;
  readonly present: boolean;
  /** How it is configured, or why it is missing. */
  readonly note: string;
}

export interface EdgePolicy {
  readonly text: string;
  readonly parts: EdgePart[];
}

const HUGE = 1_000_000_000;

export function relayPolicy(settings: PolicySettings, overrides: Record<string, unknown> = {}): string {
  return stringify({
    version: 1,
    server: {
      hostname: BENCH.gatewayName,
      listen: [{ address: "127.0.0.1:0" }],
      greetingDelay: 0,
      workers: settings.workers,
      limits: {
        maxClients: settings.maxConnections,
        maxConnectionsPerIp: settings.maxConnections,
        // Many-per-connection runs must not be cut off by a limit meant for real clients.
        maxTransactionsPerConnection: HUGE,
      },
    },
    dns: { servers: [settings.dns] },
    relay: { domains: [BENCH.recipientDomain], networks: ["127.0.0.0/8"] },
    pipeline: [],
    routes: [{ to: `smtp://127.0.0.1:${settings.sinkPort}` }],
    delivery: { mode: "proxy", spool: settings.spool },
    observability: {
      log: { level: settings.logLevel },
      ...(settings.dashboard ? { dashboard: { listen: "127.0.0.1:0" } } : {}),
    },
    ...overrides,
  });
}

/**
 * Each check with the options its issue documents, then bare as a fallback: a plugin whose option
 * schema differs from the documented one still runs with its defaults rather than being dropped.
 */
const EDGE_CHECKS: ReadonlyArray<{ name: string; candidates: Array<Record<string, unknown>> }> = [
  { name: "fcrdns", candidates: [{}] },
  {
    name: "dnsbl",
    candidates: [
      { zones: BENCH.dnsblZones.map((zone) => ({ zone, score: 10 })) },
      { zones: [...BENCH.dnsblZones] },
      {},
    ],
  },
  { name: "spf", candidates: [{}] },
  { name: "dkim", candidates: [{}] },
  { name: "dmarc", candidates: [{}] },
  {
    name: "rate-limit",
    // Generous enough never to defer the benchmark, but every message is still counted.
    candidates: [
      { limits: [{ key: "client.ip", count: "messages", rate: `${HUGE}/1m`, burst: HUGE, action: "defer" }] },
      { limits: [{ key: "client.ip", count: "messages", rate: `${HUGE}/1m` }] },
      {},
    ],
  },
];

/**
 * The edge policy with every part that the tree supports today; `file` is where it will be written.
 * `after` are pipeline entries added after the edge checks (the content scanners of (d)).
 */
export async function edgePolicy(
  settings: PolicySettings,
  file: string,
  after: ReadonlyArray<Record<string, unknown>> = [],
): Promise<EdgePolicy> {
  const builtin = new Set(builtinPluginNames());
  const parts: EdgePart[] = [];
  const pipeline: Array<Record<string, unknown>> = [];
  for (const check of EDGE_CHECKS) {
    if (!builtin.has(check.name)) {
      parts.push({ part: check.name, present: false, note: "not in plugins/index.ts yet" });
      continue;
    }
    let firstProblem = "";
    let chosen: Record<string, unknown> | undefined;
    for (const options of check.candidates) {
      const entry = { plugin: check.name, ...options };
      const problem = await policyProblem(relayPolicy(settings, { pipeline: [entry] }), file);
      if (problem === undefined) {
        chosen = entry;
        break;
      }
      firstProblem ||= problem;
    }
    if (chosen) {
      pipeline.push(chosen);
      const { plugin: _, ...options } = chosen;
      const shown = Object.keys(options).length > 0 ? JSON.stringify(options) : "its defaults";
      parts.push({ part: check.name, present: true, note: `with ${shown}` });
    } else {
      parts.push({ part: check.name, present: false, note: `options refused: ${firstProblem}` });
    }
  }
  for (const entry of after) {
    const { plugin, ...options } = entry;
    parts.push({ part: String(plugin), present: true, note: `with ${JSON.stringify(options)}` });
  }
  // Whether the gateway really queued shows only after the run (see `queuePart`); asking costs nothing.
  const text = relayPolicy(settings, {
    pipeline: [...pipeline, ...after],
    delivery: { mode: "queue", spool: settings.spool },
  });
  const problem = await policyProblem(text, file);
  if (problem !== undefined) throw new Error(`bench: the edge policy does not load: ${problem}`);
  return { text, parts };
}

/**
 * Queue mode shows in the spool: proxy mode writes there only for messages too big for memory
 * (into `tmp/`), so anything else in it after the run means the gateway stored what it accepted.
 */
export async function queuePart(spool: string): Promise<EdgePart> {
  const entries = (await readdir(spool, { recursive: true }).catch(() => [] as string[])).filter(
    (entry) => entry !== "tmp",
  );
  return entries.length > 0
    ? {
        part: "queue mode (fsynced spool)",
        present: true,
        note: `delivery.mode: queue (spool holds ${entries.join(", ")})`,
      }
    : {
        part: "queue mode (fsynced spool)",
        present: false,
        note: "delivery.mode: queue was asked for, but the spool stayed empty: the gateway relayed in proxy mode",
      };
}

/** The first problem the policy loader finds, or undefined when the policy loads. */
async function policyProblem(text: string, file: string): Promise<string | undefined> {
  try {
    await parsePolicy(text, file);
    return undefined;
  } catch (error) {
    if (error instanceof PolicyError) return error.problems[0]?.message ?? error.message;
    return error instanceof Error ? error.message : String(error);
  }
}
