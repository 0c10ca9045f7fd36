/**
 * A seeded SMTP session fuzzer, shared by the bounded test in `npm test` and `scripts/fuzz.ts`.
 * Sessions mix well-formed commands with mutated ones, random bytes, huge lines, pipelined junk,
 * bare line endings, PROXY and XCLIENT claims, and abrupt closes; each runs against a live gateway
 * and its replies are checked for shape. Same seed, same sessions.
 */
import { once } from "node:events";
import { readdir } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { parsePolicy } from "../../app/catalogue.js";
import { PolicyError } from "../../core/policy/load.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { seededRandom } from "../fixtures/seeded-random.js";
import { proxyV2Header } from "./proxy-header.js";

type Rng = () => number;
const pick = <T>(rng: Rng, items: readonly T[]): T => items[Math.floor(rng() * items.length)];
const int = (rng: Rng, below: number) => Math.floor(rng() * below);

function randomBytes(rng: Rng, length: number): Buffer {
  return Buffer.from(Array.from({ length }, () => int(rng, 256)));
}

const COMMANDS = [
  "EHLO fuzz.test",
  "HELO fuzz.test",
  "MAIL FROM:<a@sender.test>",
  "MAIL FROM:<> SIZE=100 BODY=8BITMIME",
  "RCPT TO:<b@example.test>",
  "RCPT TO:<x@other.test>",
  "RCPT TO:<postmaster>",
  "DATA",
  "RSET",
  "NOOP",
  "VRFY b@example.test",
  "HELP",
  "STARTTLS",
  "AUTH PLAIN AGFAAGI=",
  "XCLIENT ADDR=192.0.2.10",
  "XFORWARD ADDR=192.0.2.10",
  "BDAT 10 LAST",
  "GET / HTTP/1.1",
  "PROXY TCP4 192.0.2.10 192.0.2.1 1 25",
];

const BODIES = [
  "Subject: fuzz\r\n\r\nbody\r\n",
  "Subject: bare\n\nline\nline\r\n",
  "Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<evil@x.test>\r\n",
  "Subject: dots\r\n\r\n..\r\n.x\r\n",
  `${"X-Long: y\r\n".repeat(50)}\r\nbody\r\n`,
];

/** Changes a command the way a broken or hostile client would. */
function mutate(rng: Rng, command: string): Buffer {
  const bytes = Buffer.from(command, "latin1");
  switch (int(rng, 6)) {
    case 0:
      return bytes.subarray(0, int(rng, bytes.length + 1)); // truncated
    case 1: {
      const copy = Buffer.from(bytes);
      for (let i = 0; i < 1 + int(rng, 3); i++) copy[int(rng, copy.length)] = int(rng, 256); // bit rot
      return copy;
    }
    case 2:
      return Buffer.concat([bytes, Buffer.from(` ${"A".repeat(int(rng, 3000))}`)]); // long arguments
    case 3:
      return Buffer.from(command.toLowerCase(), "latin1");
    case 4:
      return Buffer.concat([bytes, Buffer.from("\0\r\x7f")]);
    default:
      return Buffer.from(command.replace(/ /g, "\t"), "latin1");
  }
}

/** One step of a session: bytes to send, waiting for the server's next words, or the way it ends. */
export type Step =
  | { kind: "send"; bytes: Buffer }
  | { kind: "wait" }
  | { kind: "reset" }
  | { kind: "end" }
  | { kind: "quit" };

export function randomSession(rng: Rng, options: { proxy: boolean }): Step[] {
  const steps: Step[] = [];
  const send = (data: string | Buffer) =>
    steps.push({ kind: "send", bytes: typeof data === "string" ? Buffer.from(data, "latin1") : data });
  if (options.proxy) {
    // A balancer's header, now and then damaged.
    const header =
      rng() < 0.5
        ? proxyV2Header({ address: `192.0.2.${1 + int(rng, 250)}`, port: 1000 }, { address: "192.0.2.1", port: 25 })
        : Buffer.from(`PROXY TCP4 198.51.100.${int(rng, 256)} 192.0.2.1 ${int(rng, 70000)} 25\r\n`);
    send(rng() < 0.2 ? mutate(rng, header.toString("latin1")) : header);
  }
  // Most clients wait for the greeting; an early talker does not.
  if (rng() < 0.9) steps.push({ kind: "wait" });
  const length = 1 + int(rng, 12);
  for (let i = 0; i < length; i++) {
    const roll = rng();
    if (roll < 0.45) send(`${pick(rng, COMMANDS)}\r\n`);
    else if (roll < 0.6)
      send(Buffer.concat([mutate(rng, pick(rng, COMMANDS)), Buffer.from(pick(rng, ["\r\n", "\n", ""]))]));
    else if (roll < 0.7) send(randomBytes(rng, 1 + int(rng, 200)));
    else if (roll < 0.75)
      send(`${"Z".repeat(5000 + int(rng, 20000))}\r\n`); // a huge line
    else if (roll < 0.85) {
      // A whole pipelined transaction, sometimes with a body that needs the scanner.
      send(`EHLO fuzz.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n`);
      send(`${pick(rng, BODIES)}.\r\n`);
    } else if (roll < 0.92) {
      send(Array.from({ length: 2 + int(rng, 30) }, () => pick(rng, COMMANDS)).join("\r\n"));
    } else break;
    if (rng() < 0.5) steps.push({ kind: "wait" });
  }
  steps.push(pick(rng, [{ kind: "reset" }, { kind: "end" }, { kind: "quit" }, { kind: "quit" }] as const));
  return steps;
}

export interface SessionOutcome {
  /** Every line the server sent. */
  readonly lines: string[];
  /** Lines that are not `NNN<sp|->text` with a 2xx–5xx code (a broken reply). */
  readonly malformed: string[];
}

/** Runs the steps against 127.0.0.1:port; resolves once the connection is closed, by either side. */
export async function runSession(port: number, steps: readonly Step[]): Promise<SessionOutcome> {
  const socket: Socket = connect({ port, host: "127.0.0.1" });
  let received = "";
  let isClosed = false;
  let wake = () => {};
  socket.setEncoding("latin1");
  socket.on("data", (chunk: string) => {
    received += chunk;
    wake();
  });
  socket.on("error", () => undefined);
  const closed = new Promise<void>((resolve) =>
    socket.once("close", () => {
      isClosed = true;
      wake();
      resolve();
    }),
  );
  await Promise.race([once(socket, "connect").catch(() => undefined), closed]);
  for (const step of steps) {
    if (socket.destroyed || isClosed) break;
    if (step.kind === "wait") {
      // The server always answers or, at the latest after its idle timeout, closes.
      const seen = received.length;
      while (received.length === seen && !isClosed) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    } else if (step.kind === "send") socket.write(step.bytes);
    else if (step.kind === "reset") socket.resetAndDestroy();
    else if (step.kind === "end") socket.end();
    // Ends DATA if one is open, then says goodbye: every session is over in one idle timeout at most.
    else socket.write("\r\n.\r\nQUIT\r\n");
    await new Promise((resolve) => setImmediate(resolve));
  }
  await closed;
  const lines = received.split("\r\n").filter((line) => line !== "");
  // PROXY v1 refusals from smtp-server ("* BAD …") are the one non-SMTP line a balancer may see.
  const malformed = lines.filter((line) => !/^[2-5]\d\d[ -]/.test(line) && !line.startsWith("* BAD"));
  return { lines, malformed };
}

/** A policy text built from a valid one by random edits; the loader must accept it or say why. */
export function randomPolicy(rng: Rng): string {
  const values = [
    "true",
    "0",
    "-1",
    "1e309",
    '"25MB"',
    '"x"',
    "[]",
    "{}",
    "null",
    "~",
    '"10s"',
    "[1, [2]]",
    "*a",
    "&a 1",
  ];
  const keys = ["version", "server", "listen", "limits", "tls", "relay", "pipeline", "plugin", "routes", "to", "auth"];
  const lines = [
    "version: 1",
    "server:",
    "  hostname: gw.test",
    "  limits: { maxRecipients: 5, idleTimeout: 1s }",
    "  xclient: [127.0.0.1]",
    "relay: { domains: [example.test] }",
    "pipeline:",
    "  - plugin: fcrdns",
    "routes: [{ to: discard }]",
  ];
  for (let i = 0; i < 1 + int(rng, 5); i++) {
    const at = int(rng, lines.length + 1);
    switch (int(rng, 5)) {
      case 0:
        lines.splice(at, 1);
        break;
      case 1:
        lines.splice(at, 0, `${" ".repeat(2 * int(rng, 3))}${pick(rng, keys)}: ${pick(rng, values)}`);
        break;
      case 2:
        lines.splice(at, 0, randomBytes(rng, int(rng, 40)).toString("latin1"));
        break;
      case 3:
        if (lines[at]) lines[at] = lines[at].replace(/: .*/, `: ${pick(rng, values)}`);
        break;
      default:
        if (lines[at]) lines[at] = lines[at].slice(0, int(rng, lines[at].length));
    }
  }
  return `${lines.join("\n")}\n`;
}

/** Loads `text`; returns what is wrong when the loader fails any other way than with a PolicyError. */
async function policyLoaderFault(text: string, file: string): Promise<string | null> {
  try {
    await parsePolicy(text, file);
    return null;
  } catch (error) {
    return error instanceof PolicyError ? null : `${(error as Error).stack ?? error}`;
  }
}

const LIMITS = "limits: { idleTimeout: 300ms, dataTimeout: 1s, maxRecipients: 3, maxMessageSize: 4KB, maxErrors: 8 }";

/** What a fuzz run left behind; every list empty and every count zero is a pass. */
export interface FuzzReport {
  readonly sessions: number;
  readonly replies: number;
  /** Reply lines that are not SMTP replies. */
  readonly malformed: string[];
  /** Gateways whose sessions or per-IP slots did not return to zero. */
  readonly leakedSessions: string[];
  /** Files left in a spool's tmp folder. */
  readonly leakedSpoolFiles: string[];
  /** Whether a well-behaved client is still served at the end. */
  readonly stillServing: boolean;
}

async function leaks(gw: TestGateway, name: string): Promise<{ sessions: string[]; files: string[] }> {
  for (let i = 0; i < 300 && gw.gateway.openSessions().sessions > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const open = gw.gateway.openSessions();
  const files = await readdir(join(gw.dir, "var/spool/tmp")).catch(() => []);
  return {
    sessions: open.sessions > 0 || open.ipSlots > 0 ? [`${name}: ${JSON.stringify(open)}`] : [],
    files: files.map((file) => `${name}: ${file}`),
  };
}

/**
 * Runs `sessions` fuzzed sessions, `parallel` at a time, against two live gateways: one spoken to
 * directly (XCLIENT trusted from loopback) and one behind a "balancer" (PROXY v1/v2 expected).
 */
export async function fuzzGateways(options: { seed: number; sessions: number; parallel: number }): Promise<FuzzReport> {
  const direct = await startGateway(
    `version: 1\nserver: { hostname: gw.test, xclient: true, ${LIMITS} }\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n`,
  );
  const balanced = await startGateway(
    `version: 1\nserver: { hostname: gw.test, proxyProtocol: true, ${LIMITS} }\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n`,
  );
  try {
    const rng = seededRandom(options.seed);
    const plans = Array.from({ length: options.sessions }, () => {
      const proxy = rng() < 0.3;
      return { port: proxy ? balanced.port : direct.port, steps: randomSession(rng, { proxy }) };
    });
    const malformed: string[] = [];
    let replies = 0;
    for (let i = 0; i < plans.length; i += options.parallel) {
      const batch = plans.slice(i, i + options.parallel);
      for (const outcome of await Promise.all(batch.map((plan) => runSession(plan.port, plan.steps)))) {
        malformed.push(...outcome.malformed);
        replies += outcome.lines.length;
      }
    }
    const final = await runSession(direct.port, [
      { kind: "wait" },
      { kind: "send", bytes: Buffer.from("EHLO ok.test\r\n") },
      { kind: "quit" },
    ]);
    const found = [await leaks(direct, "direct"), await leaks(balanced, "balanced")];
    return {
      sessions: plans.length,
      replies,
      malformed,
      leakedSessions: found.flatMap((f) => f.sessions),
      leakedSpoolFiles: found.flatMap((f) => f.files),
      stillServing: /^220 /.test(final.lines[0] ?? "") && /^221 /.test(final.lines.at(-1) ?? ""),
    };
  } finally {
    await Promise.all([direct.stop(), balanced.stop()]);
  }
}

/** Runs `count` random policies through the loader; returns the texts that made it fail otherwise than with a PolicyError. */
export async function fuzzPolicyLoader(seed: number, count: number): Promise<string[]> {
  const rng = seededRandom(seed);
  const faults: string[] = [];
  for (let i = 0; i < count; i++) {
    const text = randomPolicy(rng);
    const fault = await policyLoaderFault(text, "/nonexistent/fuzz/policy.yaml");
    if (fault) faults.push(`${JSON.stringify(text)}\n${fault}`);
  }
  return faults;
}
