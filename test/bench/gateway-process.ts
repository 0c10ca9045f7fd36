/**
 * The gateway under test, as a child process started through the real CLI: its memory and CPU are
 * its own, and the load generator never shares its event loop.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, openSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const CLI = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));
/** The CLI as the published package runs it: compiled by `npm run build`, no tsx in the process. */
export const COMPILED_CLI = fileURLToPath(new URL("../../dist/app/cli.js", import.meta.url));
const LISTENING = /^portcullis: listening on (\S+):(\d+)/m;
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;

export interface GatewayProcessOptions {
  readonly policyFile: string;
  readonly dns: string;
  /** The gateway's log (JSON lines on its stdout) goes here. */
  readonly logFile: string;
  /** Write V8 CPU profiles (one per thread) into this folder when the gateway exits. */
  readonly profileDir?: string;
  /** Extra environment, e.g. a larger libuv thread pool. */
  readonly env?: Record<string, string>;
  /** Run on these CPUs only (`taskset -c`, e.g. "1" or "0,1"); its workers inherit them. */
  readonly cpus?: string;
  /** Run the compiled CLI (`COMPILED_CLI`) instead of the sources through tsx. */
  readonly compiled?: boolean;
  /** Extra flags for the gateway's `node` (V8 heap sizing, say), before the script. */
  readonly nodeFlags?: readonly string[];
}

export interface ProcessStats {
  /** Resident set size now, in KiB. */
  readonly rssKb: number;
  /** Highest resident set size since the process started (VmHWM), in KiB. */
  readonly peakRssKb: number;
  /** User plus system CPU time so far, in milliseconds. */
  readonly cpuMs: number;
  /** Write system calls so far (write, writev, pwrite…: socket sends, file appends, log lines). */
  readonly writes: number;
}

export interface GatewayProcess {
  readonly pid: number;
  readonly port: number;
  stats(): ProcessStats;
  /** SIGTERM (the CLI drains and exits, writing the CPU profile), SIGKILL if that takes too long. */
  stop(): Promise<void>;
}

export async function startGatewayProcess(options: GatewayProcessOptions): Promise<GatewayProcess> {
  const profile = options.profileDir ? ["--cpu-prof", "--cpu-prof-dir", options.profileDir] : [];
  const log = openSync(options.logFile, "a");
  const command = [
    process.execPath,
    ...(options.nodeFlags ?? []),
    ...profile,
    options.compiled ? COMPILED_CLI : CLI,
    "start",
    "--policy",
    options.policyFile,
    "--listen",
    "127.0.0.1:0",
    "--dns",
    options.dns,
  ];
  // taskset execs the command, so the child's pid is the gateway's.
  const [program, ...args] = options.cpus ? ["taskset", "-c", options.cpus, ...command] : command;
  const child = spawn(program, args, { stdio: ["ignore", log, "pipe"], env: { ...process.env, ...options.env } });
  closeSync(log);
  let stderr = "";
  const exited = once(child, "exit");
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => fail(`did not listen within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`gateway ${why}\n${stderr.trim()}`));
    };
    child.stderr!.setEncoding("utf8").on("data", (text: string) => {
      stderr += text;
      const match = LISTENING.exec(stderr);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[2]));
      }
    });
    child.once("exit", (code, signal) => fail(`exited (${signal ?? code}) before listening`));
  });
  const pid = child.pid!;
  return {
    pid,
    port,
    stats: () => processStats(pid),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * Linux only: /proc holds the numbers without asking the process (which would cost it CPU). With
 * `server.workers` the gateway is a process tree (a supervisor and its workers): the numbers are
 * summed over it, so CPU per message stays comparable with a single process.
 */
export function processStats(pid: number): ProcessStats {
  const totals = [pid, ...descendants(pid)].map(ownStats).filter((stats) => stats !== null);
  return {
    rssKb: totals.reduce((sum, s) => sum + s.rssKb, 0),
    peakRssKb: totals.reduce((sum, s) => sum + s.peakRssKb, 0),
    cpuMs: totals.reduce((sum, s) => sum + s.cpuMs, 0),
    writes: totals.reduce((sum, s) => sum + s.writes, 0),
  };
}

function descendants(pid: number): number[] {
  let children: number[];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").split(" ").filter(Boolean).map(Number);
  } catch {
    return [];
  }
  return children.flatMap((child) => [child, ...descendants(child)]);
}

/** One process's own numbers; null when it has just exited. */
function ownStats(pid: number): ProcessStats | null {
  try {
    return readStats(pid);
  } catch {
    return null;
  }
}

function readStats(pid: number): ProcessStats {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN);
  // Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the command name.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  // syscw counts every write-like system call, sockets included; /proc/PID/io needs the same user (or root).
  const writes = Number(/^syscw:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, "utf8"))?.[1] ?? Number.NaN);
  return { rssKb: kb("VmRSS"), peakRssKb: kb("VmHWM"), cpuMs: (ticks * 1000) / CLOCK_TICKS, writes };
}

/** USER_HZ is 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100;
