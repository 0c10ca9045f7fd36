/**
 * The benchmark machinery, separate from the command line so the smoke test drives the same code.
 *
 * One run measures, under the same load and against the same sink:
 *   (a) client → sink, the ceiling (before each gateway run and after the last; the median counts);
 *   (b) client → gateway (plain relay, proxy mode) → sink;
 *   (c) client → gateway (the edge policy as far as it exists) → sink;
 *   (p) client → a private Postfix (postscreen, DNSBL, FCrDNS, its fsynced queue) → sink, when
 *       Postfix can run here (test/bench/postfix.ts): the peer (c) is measured against.
 * Throughput is end to end: the clock stops when the sink has counted every message, which also
 * holds once queue mode answers 250 before delivering.
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { startDnsServer } from "../../core/testing/dns-server.js";
import { startRspamd, type TestRspamd } from "../fixtures/rspamd.js";
import { type ProcessStats, processStats, startGatewayProcess } from "./gateway-process.js";
import { type LoadOptions, type LoadResult, runNodeLoad, runSmtpSource } from "./load.js";
import { BENCH, benchMail } from "./mail.js";
import { type EdgePart, edgePolicy, type PolicySettings, queuePart, relayPolicy } from "./policies.js";
import { type PostfixPeer, postfixAvailable, startPostfixPeer } from "./postfix.js";
import { type ProfileSummary, summarizeProfile } from "./profile.js";
import { findProgram, type SinkKind, type SinkProcess, startSinkProcess } from "./sink-process.js";

export type ConfigName = "direct" | "relay" | "edge" | "postfix" | "rspamd";
/** What a run measures unless told otherwise: (d) needs Rspamd installed, so it is asked for by name. */
export const CONFIGS: readonly ConfigName[] = ["direct", "relay", "edge", "postfix"];
export const ALL_CONFIGS: readonly ConfigName[] = [...CONFIGS, "rspamd"];

export interface BenchOptions {
  readonly sessions: number;
  readonly messages: number;
  /** Message size in bytes, headers included. */
  readonly size: number;
  readonly perConnection: number;
  /** Messages sent before each measurement (not counted), so JIT and caches are warm. */
  readonly warmup: number;
  readonly load: "node" | "smtp-source";
  readonly sink: SinkKind;
  readonly configs: readonly ConfigName[];
  /** The gateway's log level; its log goes to a file, as in production. */
  readonly logLevel: string;
  /** Write a CPU profile of each gateway run into this folder and summarise it. */
  readonly profileDir?: string;
  /** Gateway worker processes (`server.workers`); CPU and RSS are summed over all of them. */
  readonly workers: number;
  /**
   * CPUs (`taskset -c` lists) for the gateway (and the Postfix peer), and for everything else: the
   * bench process with its load generator, the sink and smtp-source. Unset: the OS schedules.
   */
  readonly gatewayCpus?: string;
  readonly loadCpus?: string;
  /** Build the package (`npm run build`) and run the gateway from dist/, as production does. */
  readonly compiled?: boolean;
  /** The gateway runs with its dashboard on (`observability.dashboard`). */
  readonly dashboard?: boolean;
  /** Extra flags on the gateway's `node` command line (e.g. `--max-semi-space-size=8`). */
  readonly nodeFlags?: readonly string[];
}

export interface LatencySummary {
  readonly p50: number;
  readonly p99: number;
}

export interface RunResult {
  readonly config: ConfigName;
  readonly label: string;
  readonly messages: number;
  /** Counted at the sink during the measurement. */
  readonly delivered: number;
  readonly failed: number;
  readonly errors: string[];
  readonly elapsedMs: number;
  readonly msgPerSec: number;
  /** Milliseconds per message; null with smtp-source, which does not report them. */
  readonly latencyMs: LatencySummary | null;
  readonly gateway: {
    readonly peakRssMb: number;
    /** Gateway CPU time per message during the measurement. */
    readonly cpuMsPerMessage: number;
    /** Write system calls per message during the measurement (socket sends, spool and log writes). */
    readonly writesPerMessage: number;
  } | null;
  readonly edgePolicy?: EdgePart[];
  /** (p) only: the Postfix version and what it checks. */
  readonly peer?: string;
  /** (d) only: what Rspamd's processes spent during the measurement, per message. */
  readonly scanner?: { readonly peakRssMb: number; readonly cpuMsPerMessage: number };
  readonly profile?: ProfileSummary;
  /** (a) only: msg/s of each of its measurements, in order; the run shown is the median one. */
  readonly samples?: number[];
}

export interface BenchResult {
  /** The 1-minute load average before and after: other work on the machine skews every number. */
  readonly machine: {
    readonly cpus: number;
    readonly node: string;
    readonly loadAverage: { readonly start: number; readonly end: number };
  };
  readonly options: BenchOptions & { readonly messageBytes: number };
  readonly runs: Partial<Record<ConfigName, RunResult>>;
  /** Throughput of (b), (c), (p) and (d) as a share of (a), and of (c) as a multiple of (p). */
  readonly ratios: {
    readonly relay: number | null;
    readonly edge: number | null;
    readonly postfix: number | null;
    readonly edgeToPostfix: number | null;
    readonly rspamd: number | null;
  };
  /** Why the Postfix peer was left out of a run that asked for it by default. */
  readonly postfixSkipped?: string;
  /** Gateway runs' latency percentiles minus those of (a). */
  readonly addedLatencyMs: {
    readonly relay: LatencySummary | null;
    readonly edge: LatencySummary | null;
    readonly rspamd: LatencySummary | null;
  };
  /** What (d) costs per message beyond (c): the same edge policy, with the rspamd scan after it. */
  readonly rspamdCost: RspamdCost | null;
}

export interface RspamdCost {
  /** Gateway CPU per message in (d) minus that in (c). */
  readonly gatewayCpuMs: number;
  /** Rspamd's own CPU per message in (d). */
  readonly scannerCpuMs: number;
  /** Latency percentiles of (d) minus those of (c). */
  readonly latencyMs: LatencySummary | null;
  /** Throughput of (d) as a share of (c). */
  readonly throughput: number;
}

const LABELS: Record<ConfigName, string> = {
  direct: "(a) client → sink",
  relay: "(b) client → gateway (plain relay, proxy) → sink",
  edge: "(c) client → gateway (edge policy) → sink",
  postfix: "(p) client → Postfix peer → sink",
  rspamd: "(d) client → gateway (edge policy, then rspamd) → sink",
};

export async function runBench(
  options: BenchOptions,
  progress: (line: string) => void = () => {},
): Promise<BenchResult> {
  const loadAtStart = loadavg()[0];
  // Every thread of this process; the sink, smtp-source and the gateway inherit it unless pinned themselves.
  if (options.loadCpus) execFileSync("taskset", ["-a", "-p", "-c", options.loadCpus, String(process.pid)]);
  if (options.compiled) {
    progress("building the package (npm run build) …");
    execFileSync("npm", ["run", "--silent", "build"], { cwd: fileURLToPath(new URL("../..", import.meta.url)) });
  }
  const dir = await mkdtemp(join(tmpdir(), "portcullis-bench-"));
  const mail = await benchMail(options.size);
  const smtpSource = options.load === "smtp-source" ? findProgram("smtp-source") : null;
  if (options.load === "smtp-source" && !smtpSource)
    throw new Error("bench: --load smtp-source, but smtp-source is not installed");
  const dns = await startDnsServer(mail.zone);
  const postfixSkipped = options.configs.includes("postfix") ? postfixAvailable() : null;
  if (postfixSkipped) progress(`(p) Postfix peer left out: ${postfixSkipped}`);
  const configs = postfixSkipped ? options.configs.filter((config) => config !== "postfix") : options.configs;
  let sink: SinkProcess | undefined;
  let rspamd: TestRspamd | undefined;
  const runs: Partial<Record<ConfigName, RunResult>> = {};
  try {
    sink = await startSinkProcess(options.sink);
    if (options.configs.includes("rspamd")) rspamd = await startRspamd({ dns: dns.address });
    const settings: PolicySettings = {
      sinkPort: sink.port,
      dns: dns.address,
      spool: join(dir, "spool"),
      logLevel: options.logLevel,
      maxConnections: Math.max(1000, options.sessions * 4),
      workers: options.workers,
      dashboard: options.dashboard,
    };
    await mkdir(settings.spool, { recursive: true });
    if (options.profileDir) await mkdir(options.profileDir, { recursive: true });
    const context: RunContext = { dir, settings, sink, message: mail.message, smtpSource, rspamd };
    const measure = async (config: ConfigName): Promise<RunResult> => {
      progress(`${LABELS[config]} …`);
      const result = await runConfig(config, options, context);
      progress(`  ${formatRun(result)}`);
      return result;
    };
    // (a) lasts about a second, so a passing disturbance moves it a lot: it is measured before each
    // gateway run and after the last, and the median is the baseline (the higher middle one of an
    // even count, which gives the smaller ratios).
    const gatewayConfigs = configs.filter((config) => config !== "direct");
    const baseline: RunResult[] = [];
    const withDirect = configs.includes("direct");
    for (const config of gatewayConfigs) {
      if (withDirect) baseline.push(await measure("direct"));
      runs[config] = await measure(config);
    }
    if (withDirect) {
      baseline.push(await measure("direct"));
      const sorted = [...baseline].sort((x, y) => x.msgPerSec - y.msgPerSec);
      const median = sorted[Math.floor(sorted.length / 2)];
      runs.direct = { ...median, samples: baseline.map((run) => run.msgPerSec) };
    }
  } finally {
    await sink?.close();
    await rspamd?.close();
    await dns.close();
    await rm(dir, { recursive: true, force: true });
  }
  const direct = runs.direct;
  const share = (run: RunResult | undefined, of: RunResult | undefined) =>
    of && run && of.msgPerSec > 0 ? round(run.msgPerSec / of.msgPerSec, 3) : null;
  const ratio = (run: RunResult | undefined) => share(run, direct);
  const added = (run: RunResult | undefined): LatencySummary | null =>
    direct?.latencyMs && run?.latencyMs
      ? {
          p50: round(run.latencyMs.p50 - direct.latencyMs.p50, 2),
          p99: round(run.latencyMs.p99 - direct.latencyMs.p99, 2),
        }
      : null;
  return {
    machine: {
      cpus: availableParallelism(),
      node: process.version,
      loadAverage: { start: round(loadAtStart, 2), end: round(loadavg()[0], 2) },
    },
    options: { ...options, messageBytes: mail.message.length },
    runs: Object.fromEntries(ALL_CONFIGS.filter((config) => runs[config]).map((config) => [config, runs[config]])),
    ratios: {
      relay: ratio(runs.relay),
      edge: ratio(runs.edge),
      postfix: ratio(runs.postfix),
      edgeToPostfix: share(runs.edge, runs.postfix),
      rspamd: ratio(runs.rspamd),
    },
    addedLatencyMs: { relay: added(runs.relay), edge: added(runs.edge), rspamd: added(runs.rspamd) },
    rspamdCost: rspamdCost(runs.edge, runs.rspamd),
    ...(postfixSkipped ? { postfixSkipped } : {}),
  };
}

function rspamdCost(edge: RunResult | undefined, scanned: RunResult | undefined): RspamdCost | null {
  if (!edge?.gateway || !scanned?.gateway || !scanned.scanner || edge.msgPerSec === 0) return null;
  return {
    gatewayCpuMs: round(scanned.gateway.cpuMsPerMessage - edge.gateway.cpuMsPerMessage, 3),
    scannerCpuMs: scanned.scanner.cpuMsPerMessage,
    latencyMs:
      edge.latencyMs && scanned.latencyMs
        ? {
            p50: round(scanned.latencyMs.p50 - edge.latencyMs.p50, 2),
            p99: round(scanned.latencyMs.p99 - edge.latencyMs.p99, 2),
          }
        : null,
    throughput: round(scanned.msgPerSec / edge.msgPerSec, 3),
  };
}

interface RunContext {
  readonly dir: string;
  readonly settings: PolicySettings;
  readonly sink: SinkProcess;
  readonly message: Buffer;
  readonly smtpSource: string | null;
  /** The private Rspamd of (d), when it runs. */
  readonly rspamd: TestRspamd | undefined;
}

async function runConfig(config: ConfigName, options: BenchOptions, context: RunContext): Promise<RunResult> {
  const { sink } = context;
  let edgeParts: EdgePart[] | undefined;
  let gateway: { stats(): ProcessStats; stop(): Promise<void> } | undefined;
  let postfixPeer: PostfixPeer | undefined;
  // One folder per run: every thread writes its own profile (tsx's loader runs in a worker).
  const profileDir = options.profileDir ? join(options.profileDir, `${config}-${process.pid}`) : undefined;
  const edgeSpool = join(context.dir, `spool-${config}`);
  try {
    let port = sink.port;
    if (config === "postfix") {
      const postfix = await startPostfixPeer({
        sinkPort: sink.port,
        dns: context.settings.dns,
        dnsblZones: BENCH.dnsblZones,
        relayDomain: BENCH.recipientDomain,
        cpus: options.gatewayCpus,
      });
      gateway = postfix;
      port = postfix.port;
      postfixPeer = postfix;
    } else if (config !== "direct") {
      const policyFile = join(context.dir, `${config}.yaml`);
      let text: string;
      if (config === "edge" || config === "rspamd") {
        const scanners = config === "rspamd" ? [{ plugin: "rspamd", url: rspamdOf(context).url }] : [];
        const edge = await edgePolicy({ ...context.settings, spool: edgeSpool }, policyFile, scanners);
        text = edge.text;
        edgeParts = edge.parts;
      } else {
        text = relayPolicy(context.settings);
      }
      await writeFile(policyFile, text);
      const started = await startGatewayProcess({
        policyFile,
        dns: context.settings.dns,
        logFile: join(context.dir, `${config}.log`),
        profileDir,
        cpus: options.gatewayCpus,
        compiled: options.compiled,
        nodeFlags: options.nodeFlags,
      });
      gateway = started;
      port = started.port;
    }
    const load = (messages: number): Promise<LoadResult> => {
      const loadOptions: LoadOptions = {
        host: "127.0.0.1",
        port,
        sessions: Math.min(options.sessions, messages),
        messages,
        perConnection: options.perConnection,
        message: context.message,
        helo: BENCH.clientName,
        from: BENCH.from,
        to: BENCH.to,
      };
      return context.smtpSource ? runSmtpSource(context.smtpSource, loadOptions) : runNodeLoad(loadOptions);
    };
    if (options.warmup > 0) {
      const before = await sink.count();
      const warm = await load(options.warmup);
      await settle(sink, before + warm.sent);
    }
    const before = await sink.count();
    const statsBefore = gateway?.stats();
    const scannerPid = config === "rspamd" ? rspamdOf(context).pid() : null;
    const scannerCpuBefore = scannerPid === null ? 0 : processStats(scannerPid).cpuMs;
    const started = performance.now();
    const result = await load(options.messages);
    await settle(sink, before + result.sent);
    const elapsedMs = performance.now() - started;
    const delivered = (await sink.count()) - before;
    const stats = gateway?.stats();
    const peer = postfixPeer?.description();
    const scannerStats = scannerPid === null ? null : processStats(scannerPid);
    return {
      config,
      label: LABELS[config],
      messages: options.messages,
      delivered,
      failed: result.failed,
      errors: result.errors,
      elapsedMs: round(elapsedMs, 1),
      msgPerSec: Math.round((delivered * 1000) / elapsedMs),
      latencyMs: result.latencies ? latencySummary(result.latencies) : null,
      gateway: stats
        ? {
            peakRssMb: round(stats.peakRssKb / 1024, 1),
            cpuMsPerMessage: round((stats.cpuMs - (statsBefore?.cpuMs ?? 0)) / Math.max(1, delivered), 3),
            writesPerMessage: round((stats.writes - (statsBefore?.writes ?? 0)) / Math.max(1, delivered), 2),
          }
        : null,
      ...(scannerStats
        ? {
            scanner: {
              peakRssMb: round(scannerStats.peakRssKb / 1024, 1),
              cpuMsPerMessage: round((scannerStats.cpuMs - scannerCpuBefore) / Math.max(1, delivered), 3),
            },
          }
        : {}),
      ...(await stopAndProfile(gateway, config === "postfix" ? undefined : profileDir)),
      ...(peer ? { peer } : {}),
      ...(edgeParts ? { edgePolicy: [...edgeParts, await queuePart(edgeSpool)] } : {}),
    };
  } finally {
    await gateway?.stop();
  }
}

function rspamdOf(context: RunContext): TestRspamd {
  if (!context.rspamd) throw new Error("bench: (d) runs without its Rspamd");
  return context.rspamd;
}

/** How long the sink may lag behind the last 250 (queue mode delivers after answering). */
const DELIVERY_GRACE_MS = 30_000;

/** Waits until the sink has counted `n` messages, or gives up after the grace period so a lost message shows as a count. */
async function settle(sink: SinkProcess, n: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    sink.waitFor(n),
    new Promise<void>((done) => {
      timer = setTimeout(done, DELIVERY_GRACE_MS);
    }),
  ]);
  clearTimeout(timer);
}

async function stopAndProfile(
  gateway: { stop(): Promise<void> } | undefined,
  profileDir: string | undefined,
): Promise<{ profile?: ProfileSummary }> {
  if (!gateway) return {};
  await gateway.stop();
  if (!profileDir) return {};
  // The main thread is the busiest; the loader worker only compiles modules at start-up.
  const summaries = (await readdir(profileDir))
    .filter((name) => name.endsWith(".cpuprofile"))
    .map((name) => summarizeProfile(join(profileDir, name)));
  const busiest = summaries.sort((a, b) => b.busyMs - a.busyMs)[0];
  return busiest ? { profile: busiest } : {};
}

function latencySummary(sorted: Float64Array): LatencySummary {
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { p50: round(at(0.5), 2), p99: round(at(0.99), 2) };
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

export function formatRun(run: RunResult): string {
  const parts = [`${String(run.msgPerSec).padStart(6)} msg/s`];
  if (run.samples && run.samples.length > 1) parts.push(`(median of ${run.samples.join(", ")})`);
  if (run.latencyMs) parts.push(`p50 ${run.latencyMs.p50} ms, p99 ${run.latencyMs.p99} ms`);
  if (run.gateway) {
    const rss = run.config === "postfix" ? "RSS summed over its processes" : "gateway peak RSS";
    const writes = Number.isFinite(run.gateway.writesPerMessage) ? `, ${run.gateway.writesPerMessage} writes/msg` : "";
    parts.push(`${rss} ${run.gateway.peakRssMb} MB, CPU ${run.gateway.cpuMsPerMessage} ms/msg${writes}`);
  }
  if (run.scanner) parts.push(`rspamd peak RSS ${run.scanner.peakRssMb} MB, CPU ${run.scanner.cpuMsPerMessage} ms/msg`);
  if (run.delivered !== run.messages || run.failed > 0) {
    parts.push(`PROBLEM: ${run.delivered}/${run.messages} delivered, ${run.failed} failed: ${run.errors.join("; ")}`);
  }
  return parts.join("  ");
}

export function formatBench(result: BenchResult): string {
  const o = result.options;
  const lines = [
    `Portcullis relay benchmark: ${o.sessions} sessions, ${o.messages} messages of ${o.messageBytes} bytes, ` +
      `${o.perConnection === 1 ? "one message per connection" : `${o.perConnection} messages per connection`}, ` +
      `load: ${o.load}, sink: ${o.sink}, gateway log: ${o.logLevel}` +
      (o.workers > 1 ? `, gateway workers: ${o.workers} (CPU and RSS summed over the process tree)` : "") +
      (o.gatewayCpus ? `, gateway on CPUs ${o.gatewayCpus}` : "") +
      (o.loadCpus ? `, load generator and sink on CPUs ${o.loadCpus}` : "") +
      `, gateway ${o.compiled ? "compiled (dist/)" : "from the sources through tsx"}` +
      (o.dashboard ? ", dashboard on" : "") +
      (o.nodeFlags?.length ? `, gateway node flags: ${o.nodeFlags.join(" ")}` : ""),
    `machine: ${result.machine.cpus} CPUs, Node ${result.machine.node}, load average ${result.machine.loadAverage.start} → ${result.machine.loadAverage.end}`,
    "",
  ];
  for (const config of ALL_CONFIGS) {
    const run = result.runs[config];
    if (run) lines.push(run.label, `    ${formatRun(run)}`);
  }
  lines.push("");
  const ratio = (value: number | null, target?: number) =>
    value === null ? "n/a" : `${value.toFixed(3)}${target === undefined ? "" : ` (target ≥ ${target})`}`;
  lines.push(
    `ratios: b/a ${ratio(result.ratios.relay, 0.25)}, c/a ${ratio(result.ratios.edge, 0.1)}` +
      (result.ratios.rspamd === null ? "" : `, d/a ${ratio(result.ratios.rspamd)}`),
  );
  if (result.runs.postfix) {
    lines.push(
      `Postfix peer: ${result.runs.postfix.peer}; p/a ${ratio(result.ratios.postfix)}, c/p ${ratio(result.ratios.edgeToPostfix, 1.5)}`,
    );
  } else if (result.postfixSkipped) {
    lines.push(`Postfix peer: left out (${result.postfixSkipped})`);
  }
  const added = (value: LatencySummary | null) => (value ? `p50 +${value.p50} ms, p99 +${value.p99} ms` : "n/a");
  lines.push(
    `latency added by the gateway: (b) ${added(result.addedLatencyMs.relay)}; (c) ${added(result.addedLatencyMs.edge)}`,
  );
  const cost = result.rspamdCost;
  if (cost) {
    lines.push(
      `rspamd per message, (d) beside (c): gateway CPU ${signed(cost.gatewayCpuMs)} ms, rspamd CPU ` +
        `${cost.scannerCpuMs} ms, latency ${cost.latencyMs ? `p50 ${signed(cost.latencyMs.p50)} ms, p99 ${signed(cost.latencyMs.p99)} ms` : "n/a"}, ` +
        `throughput d/c ${cost.throughput.toFixed(3)}`,
    );
  }
  for (const config of ["edge", "rspamd"] as const) {
    const parts = result.runs[config]?.edgePolicy;
    if (!parts) continue;
    lines.push(`edge policy of ${config === "edge" ? "(c)" : "(d)"}:`);
    for (const part of parts) lines.push(`  ${part.present ? "present" : "ABSENT "}  ${part.part}: ${part.note}`);
  }
  return lines.join("\n");
}

function signed(value: number): string {
  return value >= 0 ? `+${value}` : String(value);
}
