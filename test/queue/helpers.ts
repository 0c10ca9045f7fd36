/**
 * Shared pieces of the queue tests: a gateway process in queue mode, sending through the wire, and
 * reading DSNs back.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type GatewayProcess, startGatewayProcess } from "../fixtures/gateway-process.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

export interface QueuePolicy {
  /** The port on 127.0.0.1 every message for example.test is routed to. */
  readonly nextHopPort: number;
  /** How many connections that route may hold at once (the gateway's default when unset). */
  readonly connections?: number;
  /** By default every 200 ms for an hour: a restarted gateway delivers what it recovered at once. */
  readonly retry?: { readonly schedule: readonly string[]; readonly maxAge: string };
  readonly logLevel: "silent" | "warn" | "info";
}

/**
 * Writes `dir`/policy.yaml: queue mode, the spool in `dir`/spool, relaying example.test to the next
 * hop. Returns the policy's path, to start (and restart) gateways on the same spool with.
 */
export async function writeQueuePolicy(dir: string, policy: QueuePolicy): Promise<string> {
  const file = join(dir, "policy.yaml");
  const connections = policy.connections === undefined ? "" : `, connections: ${policy.connections}`;
  const retry = policy.retry ?? { schedule: ["200ms"], maxAge: "1h" };
  await writeFile(
    file,
    `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes:
  - { to: "smtp://127.0.0.1:${policy.nextHopPort}"${connections} }
delivery:
  mode: queue
  spool: ./spool
  retry: { schedule: [${retry.schedule.join(", ")}], maxAge: ${retry.maxAge} }
observability: { log: { level: ${policy.logLevel} } }
`,
  );
  return file;
}

/** The real CLI as its own process on a queue-mode policy written into `dir` (see writeQueuePolicy). */
export async function startQueueGateway(
  dir: string,
  policy: QueuePolicy,
): Promise<{ readonly policy: string; readonly gateway: GatewayProcess }> {
  const file = await writeQueuePolicy(dir, policy);
  return { policy: file, gateway: await startGatewayProcess(file) };
}

export function message(id: string, body = "hello\r\n", extraHeaders = ""): string {
  return `From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: test ${id}\r\nMessage-ID: <${id}@sender.test>\r\n${extraHeaders}\r\n${body}`;
}

/** One transaction with MAIL/RCPT parameters; returns the DATA reply (or the first refusal). */
export async function send(
  port: number,
  input: { from?: string; to: string[]; data: string; mailParams?: string; rcptParams?: string },
): Promise<{ code: number; text: string }> {
  const client = await SmtpTestClient.connect(port);
  const reply = (line: { code: number; text: string }) => ({ code: line.code, text: line.text.trimEnd() });
  try {
    await client.command("EHLO client.test");
    const mail = await client.command(`MAIL FROM:<${input.from ?? "a@sender.test"}>${input.mailParams ?? ""}`);
    if (mail.code !== 250) return reply(mail);
    for (const to of input.to) {
      const rcpt = await client.command(`RCPT TO:<${to}>${input.rcptParams ?? ""}`);
      if (rcpt.code !== 250) return reply(rcpt);
    }
    const start = await client.command("DATA");
    if (start.code !== 354) return reply(start);
    client.write(`${input.data.replace(/(^|\r\n)\./g, "$1..")}\r\n.\r\n`);
    return reply(await client.reply());
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

/** Clients sending one numbered message (`m0`, `m1`, …) per transaction to a gateway that may be killed and restarted. */
export interface Senders {
  /** The ids of the messages the gateway answered 250 at DATA. */
  readonly acknowledged: ReadonlySet<string>;
  /** Transactions begun, acknowledged or not. */
  readonly attempted: number;
  /** Null while the gateway restarts: its old port is free for anyone, its new one not known yet. */
  port: number | null;
  /** Every client stops after its current transaction; resolves when all have. */
  stop(): Promise<void>;
  /** Resolves when every client has stopped on its own (`until` came true) or after `stop()`. */
  readonly done: Promise<void>;
}

export function startSenders(
  port: number,
  clients: number,
  until: (acknowledged: number) => boolean = () => false,
): Senders {
  const acknowledged = new Set<string>();
  let attempted = 0;
  let running = true;
  let target: number | null = port;
  const client = async () => {
    while (running && !until(acknowledged.size)) {
      const to = target;
      if (to === null) {
        await sleep(20);
        continue;
      }
      const id = `m${attempted++}`;
      try {
        const reply = await send(to, { to: ["b@example.test"], data: message(id, `body of ${id}\r\n`) });
        if (reply.code === 250) acknowledged.add(id);
      } catch {
        // The gateway is down or died mid-transaction: nothing was acknowledged.
        await sleep(20);
      }
    }
  };
  const done = Promise.all(Array.from({ length: clients }, client)).then(() => undefined);
  return {
    acknowledged,
    get attempted() {
      return attempted;
    },
    get port() {
      return target;
    },
    set port(next) {
      target = next;
    },
    stop() {
      running = false;
      return done;
    },
    done,
  };
}

/** Polls until `check` is true; the test's own timeout bounds the wait. */
export async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export interface ParsedDsn {
  readonly headers: Record<string, string>;
  readonly human: string;
  /** Per-message fields, then one record per recipient. */
  readonly status: Array<Record<string, string>>;
  readonly returnedType: string;
  readonly returned: string;
}

function fields(block: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of block.replace(/\r\n[ \t]+/g, " ").split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) out[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  return out;
}

/** Splits a multipart/report DSN into its parts (RFC 3464 layout). */
export function parseDsn(raw: Buffer): ParsedDsn {
  const text = raw.toString("latin1");
  const headerEnd = text.indexOf("\r\n\r\n");
  const headers = fields(text.slice(0, headerEnd));
  const type = headers["content-type"];
  if (!/^multipart\/report;/.test(type) || !/report-type=delivery-status/.test(type)) {
    throw new Error(`not a DSN: ${type}`);
  }
  const boundary = /boundary="([^"]+)"/.exec(type)![1];
  const parts = text
    .slice(headerEnd + 4)
    .split(`--${boundary}`)
    .slice(1, -1)
    .map((part) => {
      const body = part.replace(/^\r\n/, "");
      const end = body.indexOf("\r\n\r\n");
      return { headers: fields(body.slice(0, end)), body: body.slice(end + 4) };
    });
  if (parts.length !== 3) throw new Error(`a DSN has 3 parts, this one ${parts.length}`);
  if (!parts[1].headers["content-type"].startsWith("message/delivery-status")) throw new Error("part 2 is no report");
  return {
    headers,
    human: parts[0].body,
    status: parts[1].body
      .trim()
      .split(/\r\n\r\n/)
      .map(fields),
    returnedType: parts[2].headers["content-type"],
    returned: parts[2].body,
  };
}
