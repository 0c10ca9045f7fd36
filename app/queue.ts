/**
 * `portcullis queue list | show ID | flush [ID] | delete ID | bounce ID --policy FILE [--json]`.
 *
 * With a gateway running on the policy's spool the request goes to it over `<spool>/control.sock`,
 * so its worker acts at once; otherwise the CLI takes the spool's lock and acts on the files itself
 * (a flush then makes the messages due at the gateway's next start). Exit codes: 0 done, 1 a problem
 * (unknown id, spool unusable), 2 bad usage.
 */
import { connect } from "node:net";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { systemClock } from "../core/contract/api.js";
import { Router } from "../core/delivery/routes.js";
import { createResolver } from "../core/dns/resolver.js";
import { createLogger } from "../core/observability/log.js";
import type { PolicyConfig } from "../core/policy/schema.js";
import { QueueAdmin, type QueueRequest, type QueueResponse, type QueueSummary } from "../core/queue/admin.js";
import { Spool } from "../core/queue/spool.js";
import { DeliveryWorker } from "../core/queue/worker.js";
import { loadPolicy } from "./catalogue.js";

const USAGE = "usage: portcullis queue list|show ID|flush [ID]|delete ID|bounce ID --policy FILE [--json]";

export async function queueCommand(
  args: string[],
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream,
): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(args);
  } catch (error) {
    err.write(`portcullis queue: ${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { request, policyFile, json } = parsed;
  const { config } = await loadPolicy(policyFile);
  const response =
    (await ask(join(config.delivery.spool, "control.sock"), request)) ?? (await offline(config, request));
  if (!response.ok) {
    err.write(`portcullis queue: ${response.error}\n`);
    return 1;
  }
  out.write(json ? `${JSON.stringify(response, null, 2)}\n` : readable(request, response));
  return 0;
}

function parse(args: string[]): { request: QueueRequest; policyFile: string; json: boolean } {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { policy: { type: "string" }, json: { type: "boolean", default: false } },
  });
  if (!values.policy) throw new Error("needs --policy FILE");
  const [command, id, ...rest] = positionals;
  if (rest.length > 0) throw new Error(`unexpected "${rest[0]}"`);
  const needsId = (name: "show" | "delete" | "bounce"): QueueRequest => {
    if (!id) throw new Error(`${name} needs a message ID`);
    return { command: name, id };
  };
  let request: QueueRequest;
  switch (command) {
    case "list":
      if (id) throw new Error("list takes no ID");
      request = { command };
      break;
    case "flush":
      request = id ? { command, id } : { command };
      break;
    case "show":
    case "delete":
    case "bounce":
      request = needsId(command);
      break;
    default:
      throw new Error(command ? `unknown queue command "${command}"` : "no queue command given");
  }
  return { request, policyFile: values.policy, json: values.json === true };
}

/** Asks the running gateway; undefined when none listens on the socket. */
function ask(path: string, request: QueueRequest): Promise<QueueResponse | undefined> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let buffer = "";
    let connected = false;
    socket.setEncoding("utf8");
    socket.on("connect", () => {
      connected = true;
      socket.write(`${JSON.stringify(request)}\n`);
    });
    socket.on("data", (chunk: string) => {
      buffer += chunk;
    });
    socket.on("end", () => {
      try {
        resolve(JSON.parse(buffer) as QueueResponse);
      } catch {
        reject(new Error("the gateway gave no answer"));
      }
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (!connected && (error.code === "ENOENT" || error.code === "ECONNREFUSED")) resolve(undefined);
      else reject(error);
    });
  });
}

/** No gateway runs: act on the spool directly, under its lock. */
async function offline(config: PolicyConfig, request: QueueRequest): Promise<QueueResponse> {
  const log = createLogger("silent");
  const spool = await Spool.open(config.delivery.spool, { log });
  try {
    const worker = new DeliveryWorker({
      spool,
      log,
      clock: systemClock,
      // Only a bounce needs these (to build and route the DSN); nothing is delivered from here.
      settings: () => ({
        hostname: config.server.hostname,
        retry: { schedule: config.delivery.retry.schedule, maxAgeMs: config.delivery.retry.maxAge },
        delivery: {
          hostname: config.server.hostname,
          timeoutMs: config.delivery.timeout,
          dns: createResolver({ servers: config.dns.servers }),
        },
        router: new Router(config.routes),
        bounces: config.delivery.bounces,
      }),
    });
    return await new QueueAdmin(spool, worker).handle(request);
  } finally {
    await spool.close();
  }
}

function readable(request: QueueRequest, response: QueueResponse): string {
  if ("messages" in response) {
    const count = `${response.messages.length} message${response.messages.length === 1 ? "" : "s"} queued\n`;
    return response.messages.map(describe).join("") + count;
  }
  if ("message" in response) return `${describe(response.message)}\n${response.headers}\n`;
  if (!response.ok) return "";
  const id = "id" in request && request.id ? request.id : "";
  switch (request.command) {
    case "flush":
      return `${response.count} message${response.count === 1 ? "" : "s"} due now${id ? ` (${id})` : ""}\n`;
    case "delete":
      return `deleted ${id}\n`;
    case "bounce":
      return `bounced ${id} to its sender\n`;
    default:
      return "";
  }
}

function describe(m: QueueSummary): string {
  const head = `${m.id}  ${m.arrivedAt}  ${m.size} bytes  attempts ${m.attempts}  next ${m.nextAt}  from <${m.from}>${m.messageId ? `  ${m.messageId}` : ""}\n`;
  return (
    head +
    m.recipients.map((r) => `    ${r.to}  ${r.status}  via ${r.route}${r.reply ? `  (${r.reply})` : ""}\n`).join("")
  );
}
