/**
 * `portcullis start | check | schema`. Exit codes: 0 success, 1 a problem the user can fix (the
 * message says what), 2 bad usage.
 */
import { parseArgs } from "node:util";
import { Gateway } from "./gateway.js";
import { limitsCommand } from "./limits-cli.js";
import { formatHostPort } from "./netaddr.js";
import { loadPolicy, PolicyError, policyJsonSchema } from "./policy/load.js";

const USAGE = `usage:
  portcullis start --policy FILE [--listen HOST:PORT] [--dns HOST:PORT]
  portcullis check FILE
  portcullis limits show|reset KEY --policy FILE
  portcullis schema`;

class UsageError extends Error {}

async function start(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      policy: { type: "string" },
      listen: { type: "string" },
      dns: { type: "string", multiple: true },
    },
  });
  if (!values.policy) throw new UsageError("start needs --policy FILE");
  const policyFile = values.policy;
  const gateway = await Gateway.create(await loadPolicy(policyFile), {
    listen: values.listen,
    dnsServers: values.dns,
  });
  const addresses = await gateway.listen();
  process.stderr.write(`portcullis: listening on ${addresses.map(formatHostPort).join(", ")}\n`);
  let stops = 0;
  const stop = () => {
    stops++;
    if (stops > 1) process.exit(0);
    gateway.stop(10_000).then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.on("SIGHUP", () => {
    loadPolicy(policyFile).then(
      (policy) => gateway.reload(policy),
      (err: Error) => gateway.log.error({ err: err.message }, "policy reload refused; the previous policy stays"),
    );
  });
  return new Promise<number>(() => {});
}

async function check(args: string[]): Promise<number> {
  if (args.length !== 1) throw new UsageError("check needs exactly one FILE");
  await loadPolicy(args[0]);
  process.stdout.write(`${args[0]}: ok\n`);
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  try {
    switch (command) {
      case "start":
        return await start(args);
      case "check":
        return await check(args);
      case "limits":
        return await limitsCommand(args);
      case "schema":
        process.stdout.write(`${JSON.stringify(policyJsonSchema(), null, 2)}\n`);
        return 0;
      default:
        throw new UsageError(command ? `unknown command "${command}"` : "no command given");
    }
  } catch (err) {
    if (err instanceof PolicyError) {
      process.stderr.write(`${err.message}\n`);
      return 1;
    }
    if (
      err instanceof UsageError ||
      (err instanceof Error && "code" in err && err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION")
    ) {
      process.stderr.write(`portcullis: ${err.message}\n${USAGE}\n`);
      return 2;
    }
    process.stderr.write(`portcullis: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
