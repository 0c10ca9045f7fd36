/**
 * `portcullis start | check | schema`. Exit codes: 0 success, 1 a problem the user can fix (the
 * message says what), 2 bad usage.
 */
import cluster from "node:cluster";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { parseArgs } from "node:util";

// Each command's module, and the policy loader with zod and yaml, is imported when a command needs
// it: `check` does not load the listener, `start` not the code of doctor, try, test and replay, and
// `--version` nothing. Only Node's own modules at the top (test/app/lazy-dependencies.test.ts).

/** The usage of every command; the modules that hold some of the lines load only to print it. */
async function usageText(): Promise<string> {
  const [{ DOCTOR_USAGE }, { REPLAY_USAGE }, { TRY_USAGE }, { INIT_USAGE }, { PLUGIN_NEW_USAGE }] = await Promise.all([
    import("./doctor/doctor.js"),
    import("./replay.js"),
    import("./try.js"),
    import("./init.js"),
    import("./plugin-new.js"),
  ]);
  return `usage:
  portcullis start --policy FILE [--listen HOST:PORT] [--dns HOST:PORT] [--shadow CANDIDATE] [--grace DURATION]
  portcullis check FILE [--strict]
  ${INIT_USAGE}
  ${PLUGIN_NEW_USAGE}
  ${TRY_USAGE}
  portcullis test FILE.test.yaml [FILE.test.yaml…]
  ${REPLAY_USAGE}
  portcullis limits show|reset KEY --policy FILE
  portcullis queue list|show ID|flush [ID]|delete ID|bounce ID --policy FILE [--json]
  portcullis passwd [NAME] < password
  portcullis schema
  portcullis --version
  ${DOCTOR_USAGE}`;
}

class UsageError extends Error {}

/** Rethrows a command's own usage error as the CLI's (usage printed, exit 2), anything else as is. */
const usageErrorsOf =
  (...kinds: Array<new (message: string) => Error>) =>
  (error: unknown): never => {
    throw kinds.some((kind) => error instanceof kind) ? new UsageError((error as Error).message) : error;
  };

async function start(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      policy: { type: "string" },
      listen: { type: "string" },
      dns: { type: "string", multiple: true },
      shadow: { type: "string" }, // A candidate policy evaluated beside this one (core/observability/shadow.ts)
      // How long the first SIGTERM waits for transactions in flight; a service manager's stop timeout
      // must be longer, so it never has to SIGKILL a gateway that is finishing a message.
      grace: { type: "string", default: "10s" },
    },
  });
  if (!values.policy) throw new UsageError("start needs --policy FILE");
  const { parseDuration } = await import("../core/toolkit/units.js");
  const graceMs = parseDuration(values.grace);
  if (graceMs === undefined) throw new UsageError(`--grace "${values.grace}" is not a duration, e.g. "10s"`);
  const policyFile = values.policy;
  // V8 sized for memory unless the operator chose (app/heap.ts); before the gateway allocates.
  const heap = (await import("./heap.js")).tuneHeap();
  // The listener and its services load only here, so `check` and the other commands start without them.
  const [
    { createLogger },
    { PolicyReloader },
    { Gateway },
    { formatHostPort },
    workers,
    { DashboardListener },
    { loadPolicy },
  ] = await Promise.all([
    import("../core/observability/log.js"),
    import("../core/policy/reload.js"),
    import("../core/smtp/gateway.js"),
    import("../core/toolkit/netaddr.js"),
    import("./workers.js"),
    import("../core/observability/dashboard/server.js"),
    import("./catalogue.js"),
  ]);
  const { countsForSupervisor, startOperations, superviseWorkers, workerCount, workerPolicy } = workers;
  const policy = await loadPolicy(policyFile);
  // With server.workers > 1 this process supervises; each worker runs the rest (app/workers.ts).
  if (cluster.isPrimary && workerCount(policy.config) > 1) {
    heap.serving();
    return superviseWorkers({ policy, log: createLogger(policy.config.observability.log.level) });
  }
  const gateway = await Gateway.create(workerPolicy(policy), {
    listen: values.listen,
    dnsServers: values.dns,
    shadow: values.shadow ? resolve(values.shadow) : undefined,
    countMetrics: countsForSupervisor(policy),
  });
  const addresses = await gateway.listen();
  const ops = await startOperations(gateway); // /metrics, /healthz, /readyz
  const dashboard = new DashboardListener(gateway); // observability.dashboard
  await dashboard.follow();
  // The first signal drains; a second one means the operator will not wait, so the process exits at
  // once (acknowledged mail is already on disk; a message still being received was not acknowledged).
  let stops = 0;
  const stop = () => {
    stops++;
    if (stops > 1) process.exit(0);
    gateway
      .stop(graceMs)
      .then(() => Promise.all([ops.close(), dashboard.close()]))
      .then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  // SIGHUP and a change to the policy file (or a list file it names) reload the same way: validated
  // first, one at a time, the running policy kept on any problem (core/policy/reload.ts).
  const reloader = new PolicyReloader(
    {
      file: policyFile,
      load: loadPolicy,
      log: gateway.log,
      apply: async (next) => {
        const changes = await gateway.reload(workerPolicy(next));
        // The gateway runs the new policy by now: an endpoint that cannot move is reported, not a refusal.
        const metrics = await ops
          .follow(gateway.runtime.config.observability.metrics)
          .catch((error: Error) => `not listening: ${error.message}`);
        const dashboardChange = await dashboard.follow().catch((error: Error) => `failed: ${error.message}`);
        return {
          ...changes,
          ...(metrics ? { metrics } : {}),
          ...(dashboardChange ? { dashboard: dashboardChange } : {}),
        };
      },
      onLoadRefused: () => gateway.observer.policyReload(false), // gateway.reload counts the rest
    },
    gateway.runtime.policy,
  );
  process.on("SIGHUP", () => void reloader.reload("SIGHUP"));
  if (ops.address) gateway.log.info({ metrics: formatHostPort(ops.address) }, "metrics endpoint listening");
  gateway.log.info({ event: "heap", flags: heap.flags }, "V8 heap flags");
  heap.serving();
  // Said last, when signals are handled and the policy files watched: from here on a change is seen.
  process.stderr.write(`portcullis: listening on ${addresses.map(formatHostPort).join(", ")}\n`);
  return new Promise<number>(() => {});
}

async function check(args: string[]): Promise<number> {
  // Validation, then the static checks of core/policy/static-checks.ts; --strict fails on warnings too.
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { strict: { type: "boolean" } } });
  if (positionals.length !== 1) throw new UsageError("check needs exactly one FILE");
  const { checkPolicy } = await import("./check.js");
  const result = await checkPolicy(positionals[0], { strict: values.strict });
  process.stdout.write(`${result.lines.join("\n")}\n`);
  return result.code;
}

/** The usage lines of one command (all of them for none or an unknown one). */
async function usageOf(command: string | undefined): Promise<string> {
  const usage = await usageText();
  const lines = usage
    .split("\n")
    .slice(1)
    .map((line) => line.trim())
    .filter((line) => command && (line === `portcullis ${command}` || line.startsWith(`portcullis ${command} `)));
  return lines.length > 0 ? `usage:\n  ${lines.join("\n  ")}` : usage;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  // --help or -h (before any "--") on any command: its usage on stdout, exit 0, nothing else done.
  const end = argv.indexOf("--");
  if ((end < 0 ? argv : argv.slice(0, end)).some((arg) => arg === "--help" || arg === "-h")) {
    process.stdout.write(`${await usageOf(command?.startsWith("-") ? undefined : command)}\n`);
    return 0;
  }
  try {
    switch (command) {
      case "--version": {
        // Through the package's own name, which finds its package.json from the sources and from dist/ alike.
        const { version } = createRequire(import.meta.url)("portcullis/package.json") as { version: string };
        process.stdout.write(`${version}\n`);
        return 0;
      }
      case "start":
        return await start(args);
      case "check":
        return await check(args);
      case "init": {
        // a commented starter policy (app/init.ts)
        const { initCommand, InitUsageError } = await import("./init.js");
        return await initCommand(args, process.stdout, process.stderr).catch(usageErrorsOf(InitUsageError));
      }
      case "plugin": {
        // a new plugin package (app/plugin-new.ts)
        const { pluginCommand, PluginUsageError } = await import("./plugin-new.js");
        return await pluginCommand(args, process.stdout).catch(usageErrorsOf(PluginUsageError));
      }
      case "try": {
        // a dry run of one transaction (app/try.ts)
        const { tryCommand, TryUsageError } = await import("./try.js");
        process.stdout.write(await tryCommand(args).catch(usageErrorsOf(TryUsageError)));
        return 0;
      }
      case "test": {
        // policy test files (app/policy-test.ts)
        if (args.length === 0) throw new UsageError("test needs at least one FILE.test.yaml");
        const { testCommand } = await import("./policy-test.js");
        const result = await testCommand(args);
        process.stdout.write(result.output);
        return result.code;
      }
      case "limits":
        return await (await import("./limits.js")).limitsCommand(args);
      case "queue": // the spool (app/queue.ts)
        return await (await import("./queue.js")).queueCommand(args, process.stdout, process.stderr);
      case "doctor": // deliverability self-check (app/doctor/doctor.ts)
        return await (await import("./doctor/doctor.js")).doctorCommand(args, process.stdout, process.stderr);
      case "passwd": // A users-file hash (app/passwd.ts)
        return await (await import("./passwd.js")).passwdCommand(args, process.stdin, process.stdout);
      case "replay": {
        // A candidate policy over the transaction log (core/observability/replay.ts)
        const { replayCommand, ReplayUsageError } = await import("./replay.js");
        return await replayCommand(args, process.stdout).catch(usageErrorsOf(ReplayUsageError));
      }
      case "schema": {
        const [{ policyJsonSchemaWith }, { builtinPlugins }] = await Promise.all([
          import("./schema.js"),
          import("../plugins/index.js"),
        ]);
        process.stdout.write(`${JSON.stringify(await policyJsonSchemaWith(builtinPlugins), null, 2)}\n`);
        return 0;
      }
      default:
        throw new UsageError(command ? `unknown command "${command}"` : "no command given");
    }
  } catch (err) {
    // PolicyError (core/policy/load.ts) by its code: an error path must not load the policy loader.
    if (err instanceof Error && "code" in err && err.code === "PORTCULLIS_ERR_POLICY") {
      process.stderr.write(`${err.message}\n`);
      return 1;
    }
    if (
      err instanceof UsageError ||
      (err instanceof Error && "code" in err && err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION")
    ) {
      process.stderr.write(`portcullis: ${err.message}\n${await usageText()}\n`);
      return 2;
    }
    process.stderr.write(`portcullis: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
