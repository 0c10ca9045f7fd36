/**
 * `npm run bench:startup [-- options]`: what the compiled CLI costs before it does any work, for the
 * shipped default and edge-mx policies — the wall and CPU time of `portcullis check FILE`, and the
 * RSS of `portcullis start` after it has listened and sat idle. With `--vs ROOT` (another checkout
 * with its own `npm run build`, e.g. the main branch's) both builds are measured in turn, run by run,
 * so that a machine whose load drifts during the call moves both alike; the ratio is taken of the
 * medians. See test/bench/README.md.
 *
 * The CLI runs as `node ROOT/dist/app/cli.js`: what an installed package's `bin` runs (a checkout's
 * `bin/portcullis.js` runs the TypeScript sources through tsx instead). CPU is the children's user +
 * system time as the shell's `times` reports it (bash's, else sh's); RSS is VmRSS from /proc (Linux only).
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startDnsServer } from "../../core/testing/dns-server.js";

const USAGE = `usage: npm run bench:startup -- [options]
  --vs ROOT        also measure the build in ROOT (a checkout after \`npm run build\`), in turn with this one
  --runs N         check runs per policy and build (default 7)
  --idle-runs N    idle gateways per policy and build (default 3)
  --settle SECONDS how long a gateway sits idle after it listens before its RSS is read (default 6)
  --policies LIST  which shipped policies (default default,edge-mx)`;

const { values } = parseArgs({
  options: {
    vs: { type: "string" },
    runs: { type: "string", default: "7" },
    "idle-runs": { type: "string", default: "3" },
    settle: { type: "string", default: "6" },
    policies: { type: "string", default: "default,edge-mx" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const count = (name: string, text: string): number => {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) {
    console.error(`--${name} needs a positive number, not "${text}"\n${USAGE}`);
    process.exit(2);
  }
  return value;
};
const runs = count("runs", values.runs);
const idleRuns = count("idle-runs", values["idle-runs"]);
const settleMs = count("settle", values.settle) * 1000;

const here = fileURLToPath(new URL("../..", import.meta.url));
const builds = [{ name: "this", root: here }, ...(values.vs ? [{ name: "vs", root: resolve(values.vs) }] : [])];
for (const build of builds) {
  if (!existsSync(join(build.root, "dist/app/cli.js"))) {
    console.error(`${build.root}: no dist/app/cli.js — run \`npm run build\` there first`);
    process.exit(2);
  }
}
// The same policy files for every build, this checkout's.
const policies = values.policies.split(",").map((name) => ({ name, file: join(here, "policies", `${name}.yaml`) }));

/** Wall and CPU seconds of one `check` run (of `node -e ""` without a root), through `sh -c '…; times'`. */
async function timeCheck(root: string | undefined, policy: string): Promise<{ wall: number; cpu: number }> {
  const command = root === undefined ? ["-e", ""] : [cliOf(root), "check", policy];
  const started = performance.now();
  const child = spawn(
    SHELL,
    ["-c", '"$@" >/dev/null || echo "exit $?" >&2; times', "sh", process.execPath, ...command],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (text: string) => {
    stdout += text;
  });
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  await once(child, "exit");
  const wall = (performance.now() - started) / 1000;
  if (stderr.trim()) throw new Error(`check ${policy} with ${root}: ${stderr.trim()}`);
  // The second line of `times` holds the children's user and system time, e.g. "0m0.412s 0m0.061s".
  const children = stdout.trim().split("\n").at(-1) ?? "";
  const seconds = [...children.matchAll(/(\d+)m([\d.]+)s/g)].map(([, m, s]) => Number(m) * 60 + Number(s));
  if (seconds.length !== 2) throw new Error(`cannot read the CPU time from "${stdout.trim()}"`);
  return { wall, cpu: seconds[0] + seconds[1] };
}

/** VmRSS in MiB of `start` under `policy`, `settleMs` after it said it listens. */
async function idleRss(root: string, policy: string, dns: string): Promise<number> {
  // A copy in a folder of its own, so that its relative paths (spool, maildir) land in the scratch folder.
  const dir = await mkdtemp(join(tmpdir(), "portcullis-startup-"));
  const file = join(dir, "policies", "policy.yaml");
  await mkdir(join(dir, "policies"));
  await copyFile(policy, file);
  const args = [cliOf(root), "start", "--policy", file, "--listen", "127.0.0.1:0", "--dns", dns];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
  try {
    let stderr = "";
    await new Promise<void>((listening, failed) => {
      child.stderr.setEncoding("utf8").on("data", (text: string) => {
        stderr += text;
        if (stderr.includes("portcullis: listening on")) listening();
      });
      child.once("exit", (code) => failed(new Error(`start ${policy} with ${root} exited ${code}: ${stderr}`)));
    });
    await sleep(settleMs);
    const status = await readFile(`/proc/${child.pid}/status`, "utf8");
    const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
    return kb / 1024;
  } finally {
    child.kill("SIGTERM");
    if (child.exitCode === null) await once(child, "exit");
    await rm(dir, { recursive: true, force: true });
  }
}

const cliOf = (root: string) => join(root, "dist/app/cli.js");
/** bash's `times` reads getrusage (milliseconds); a plain POSIX sh may count clock ticks (10 ms). */
const SHELL = existsSync("/bin/bash") ? "/bin/bash" : "/bin/sh";
const median = (samples: number[]) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
const spread = (samples: number[], digits: number) =>
  `${median(samples).toFixed(digits)} (${Math.min(...samples).toFixed(digits)}–${Math.max(...samples).toFixed(digits)})`;
const load = () =>
  loadavg()
    .map((value) => value.toFixed(2))
    .join(" ");

type Samples = Record<string, { wall: number[]; cpu: number[]; rss: number[] }>;
const samples: Samples = {};
const key = (build: string, policy: string) => `${build} ${policy}`;
for (const build of builds) {
  for (const policy of policies) samples[key(build.name, policy.name)] = { wall: [], cpu: [], rss: [] };
}

const loadBefore = load();
process.stderr.write(`load average ${loadBefore}; ${runs} check runs and ${idleRuns} idle gateways each …\n`);
// One warm-up run each (the file cache), not counted.
for (const policy of policies) for (const build of builds) await timeCheck(build.root, policy.file);
// Node itself, for a machine whose speed differs from the one the figures were taken on.
const bare: { wall: number[]; cpu: number[] } = { wall: [], cpu: [] };
for (let run = 0; run < runs; run++) {
  const { wall, cpu } = await timeCheck(undefined, "");
  bare.wall.push(wall);
  bare.cpu.push(cpu);
  for (const policy of policies) {
    for (const build of builds) {
      const { wall, cpu } = await timeCheck(build.root, policy.file);
      samples[key(build.name, policy.name)].wall.push(wall);
      samples[key(build.name, policy.name)].cpu.push(cpu);
    }
  }
}
if (process.platform === "linux") {
  const dns = await startDnsServer({});
  try {
    for (let run = 0; run < idleRuns; run++) {
      for (const policy of policies) {
        for (const build of builds) {
          process.stderr.write(`idle ${policy.name} (${build.name}) ${run + 1}/${idleRuns} …\n`);
          samples[key(build.name, policy.name)].rss.push(await idleRss(build.root, policy.file, dns.address));
        }
      }
    }
  } finally {
    await dns.close();
  }
}

const lines = [`node ${process.version}; load average before ${loadBefore}, after ${load()}`];
for (const build of builds) lines.push(`${build.name}: ${build.root}`);
lines.push(
  `median (min–max) of ${runs} check runs and ${idleRuns} idle gateways (RSS ${settleMs / 1000} s after listening)`,
);
lines.push(`  node -e ""      wall ${spread(bare.wall, 3)} s  cpu ${spread(bare.cpu, 3)} s`);
for (const policy of policies) {
  for (const build of builds) {
    const s = samples[key(build.name, policy.name)];
    const rss = s.rss.length > 0 ? `${spread(s.rss, 1)} MiB` : "n/a (Linux only)";
    lines.push(
      `  ${policy.name.padEnd(8)} ${build.name.padEnd(4)}  check wall ${spread(s.wall, 3)} s  cpu ${spread(s.cpu, 3)} s  idle RSS ${rss}`,
    );
  }
  if (builds.length === 2) {
    const [a, b] = builds.map((build) => samples[key(build.name, policy.name)]);
    const ratio = (x: number[], y: number[]) => (y.length > 0 ? (median(x) / median(y)).toFixed(2) : "n/a");
    lines.push(
      `  ${policy.name.padEnd(8)} this/vs  check wall ${ratio(a.wall, b.wall)}  cpu ${ratio(a.cpu, b.cpu)}  idle RSS ${ratio(a.rss, b.rss)}`,
    );
  }
}
console.log(lines.join("\n"));
