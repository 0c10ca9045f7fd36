/**
 * `portcullis limits show KEY` and `portcullis limits reset KEY`: one bucket (or greylist record,
 * or slot set) of the shared store named by the policy. KEY is what the plugins write, e.g.
 * `client.ip/messages/100/1m:192.0.2.1` for an unnamed rate limit, `NAME:VALUE` for a named one.
 */
import { parseArgs } from "node:util";
import { pino } from "pino";
import { RedisStore, redisTarget } from "../core/state/create.js";
import { loadPolicy } from "./catalogue.js";

const USAGE = "usage: portcullis limits show|reset KEY --policy FILE";

export async function limitsCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { policy: { type: "string" } } });
  const [action, key, ...extra] = positionals;
  if ((action !== "show" && action !== "reset") || !key || extra.length > 0 || !values.policy) {
    process.stderr.write(`portcullis: ${USAGE}\n`);
    return 2;
  }
  const { config } = await loadPolicy(values.policy);
  if (config.state.store === "memory") {
    process.stderr.write(
      `portcullis: ${values.policy} keeps limits in memory, inside each gateway process; ` +
        "`limits` reads a shared store (state.store: { redis: URL }, { cluster: … } or { sentinel: … })\n",
    );
    return 1;
  }
  const store = new RedisStore({
    ...redisTarget(config.state.store),
    log: pino({ level: "silent" }),
    commandTimeoutMs: config.state.timeout,
  });
  try {
    if (action === "reset") {
      const found = await store.reset(key);
      process.stdout.write(`${key}: ${found ? "cleared" : "nothing stored"}\n`);
    } else {
      const report = await store.inspect(key);
      process.stdout.write(
        Object.keys(report).length === 0
          ? `${key}: nothing stored\n`
          : `${JSON.stringify({ key, ...report }, null, 2)}\n`,
      );
    }
    return 0;
  } finally {
    await store.close();
  }
}
