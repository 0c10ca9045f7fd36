/**
 * `npm run bench [-- options]`: the side-by-side relay benchmark. See test/bench/README.md.
 */
import { parseArgs } from "node:util";
import { ALL_CONFIGS, type BenchOptions, CONFIGS, type ConfigName, formatBench, runBench } from "./bench.js";
import { formatIdle, runIdle } from "./idle.js";
import { formatProfile } from "./profile.js";

const USAGE = `usage: npm run bench -- [options]
  --sessions N         concurrent SMTP sessions (default 20)
  --messages N         messages per configuration (default 5000)
  --size BYTES         message size, headers included (default 5120)
  --per-connection N   messages per connection before QUIT (default 1)
  --warmup N           messages sent before each measurement (default 500)
  --configs LIST       which of direct,relay,edge,rspamd to run (default direct,relay,edge;
                       rspamd: the edge policy with the rspamd plugin after it, against a private Rspamd)
  --load node|smtp-source   load generator (default node)
  --sink lean|smtp-server|smtp-sink   next-hop sink (default lean; smtp-sink is Postfix's)
  --log-level LEVEL    gateway log level (default info; the log goes to a file)
  --profile DIR        CPU-profile every gateway run into DIR and print its hot spots
  --quick              a small run (1000 messages, 200 warm-up)
  --json               print the result as JSON on stdout
  --idle N             instead: hold N idle connections and report RSS per connection
  --workers N          run the gateway with server.workers: N (default 1)
  --gateway-cpus LIST  pin the gateway (and the Postfix peer) to these CPUs (taskset -c, e.g. 1)
  --load-cpus LIST     pin the load generator and the sink to these CPUs (e.g. 0)
  --compiled           build the package (npm run build) and run the gateway from dist/
  --dashboard          run the gateway with observability.dashboard on
  --node-flags FLAGS   extra flags for the gateway's node, space-separated (e.g. "--max-semi-space-size=8")`;

const { values } = parseArgs({
  options: {
    sessions: { type: "string" },
    messages: { type: "string" },
    size: { type: "string" },
    "per-connection": { type: "string" },
    warmup: { type: "string" },
    configs: { type: "string" },
    load: { type: "string" },
    sink: { type: "string" },
    "log-level": { type: "string" },
    profile: { type: "string" },
    quick: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    idle: { type: "string" },
    workers: { type: "string" },
    "gateway-cpus": { type: "string" },
    "load-cpus": { type: "string" },
    compiled: { type: "boolean", default: false },
    dashboard: { type: "boolean", default: false },
    "node-flags": { type: "string" },
    help: { type: "boolean", default: false },
  },
});

function count(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0) usage(`--${name} needs a whole number, not "${text}"`);
  return value;
}

function oneOf<T extends string>(name: string, text: string | undefined, allowed: readonly T[], fallback: T): T {
  if (text === undefined) return fallback;
  if (!allowed.includes(text as T)) usage(`--${name} is one of ${allowed.join(", ")}, not "${text}"`);
  return text as T;
}

function cpuList(name: string, text: string | undefined): string | undefined {
  if (text !== undefined && !/^\d+([-,]\d+)*$/.test(text))
    usage(`--${name} needs a CPU list such as 1 or 0,1, not "${text}"`);
  return text;
}

function usage(problem: string): never {
  process.stderr.write(`bench: ${problem}\n${USAGE}\n`);
  process.exit(2);
}

if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

const progress = (line: string) => {
  if (!values.json) process.stderr.write(`${line}\n`);
};

if (values.idle !== undefined) {
  const result = await runIdle(count("idle", values.idle, 5000), progress);
  process.stdout.write(values.json ? `${JSON.stringify(result, null, 2)}\n` : `${formatIdle(result)}\n`);
} else {
  const configs = (values.configs ?? CONFIGS.join(","))
    .split(",")
    .map((name) => oneOf("configs", name, ALL_CONFIGS, "direct"));
  const options: BenchOptions = {
    sessions: Math.max(1, count("sessions", values.sessions, values.quick ? 10 : 20)),
    messages: Math.max(1, count("messages", values.messages, values.quick ? 1000 : 5000)),
    size: count("size", values.size, 5120),
    perConnection: Math.max(1, count("per-connection", values["per-connection"], 1)),
    warmup: count("warmup", values.warmup, values.quick ? 200 : 500),
    load: oneOf("load", values.load, ["node", "smtp-source"], "node"),
    sink: oneOf("sink", values.sink, ["lean", "smtp-server", "smtp-sink"], "lean"),
    configs: [...new Set<ConfigName>(configs)],
    logLevel: oneOf("log-level", values["log-level"], ["trace", "debug", "info", "warn", "error", "silent"], "info"),
    profileDir: values.profile,
    workers: Math.max(1, count("workers", values.workers, 1)),
    gatewayCpus: cpuList("gateway-cpus", values["gateway-cpus"]),
    loadCpus: cpuList("load-cpus", values["load-cpus"]),
    compiled: values.compiled,
    dashboard: values.dashboard,
    nodeFlags: values["node-flags"]?.split(/\s+/).filter(Boolean),
  };
  const result = await runBench(options, progress);
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    process.stdout.write(`\n${formatBench(result)}\n`);
    for (const run of Object.values(result.runs)) {
      if (run.profile) process.stdout.write(`\n${run.label}\n${formatProfile(run.profile)}\n`);
    }
  }
  const broken = Object.values(result.runs).some((run) => run.delivered !== run.messages || run.failed > 0);
  process.exitCode = broken ? 1 : 0;
}
