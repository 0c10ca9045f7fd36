/**
 * The transaction log: one JSON line per transaction with everything the policy's rules
 * can test, step by step, so that `portcullis replay` and the shadow policy can evaluate other rules
 * over the same findings without DNS or any other lookup.
 *
 * A record holds the steps of its connection (connect, helo) and of its transaction (mail, rcpt per
 * recipient, data, queue), each as the hooks of that phase left it: the findings they wrote, the
 * points and tags they added, which hooks ran or were held back by a `skip` rule, and how the step
 * ended (a hook's decision, or the rules'). Rules are re-evaluated after each step exactly as the
 * session does; hooks never are, so a hook's decision is replayed as recorded (core/observability/replay.ts).
 *
 * The writer appends synchronously: a line is on its way to the file before the summary line is
 * logged, so the two never disagree about which transactions exist, and a rotation never splits a
 * line. Rotation by size and age (the age of the file's first record, by the gateway's clock).
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { basename, dirname, extname, join } from "node:path";
import type { Logger } from "pino";
import type { Clock, ConnectionContext, Phase, TraceEntry, TransactionContext } from "../contract/api.js";
import type { Decision, RefusingDecision } from "../contract/decision.js";
import { formatReply } from "../contract/decision.js";
import type { ActivePlugin, PhaseInput } from "../engine/pipeline.js";
import type { ConnectionOutcome, ConnectionSummary, TransactionOutcome, TransactionSummary } from "./observe.js";

/** Bumped when a field changes meaning; replay refuses records of another version. */
export const RECORD_VERSION = 1;

export interface RecordedAddress {
  readonly address: string;
  /** With `hashLocalParts`, a hash (the same local part always gives the same hash). */
  readonly local: string;
  readonly domain: string;
}

/** A decision that ended a step: `by` is `plugin:NAME` (a hook; rules did not run) or `rule:NAME`. */
export interface RecordedDecision {
  readonly kind: Exclude<Decision["kind"], "continue">;
  readonly by: string;
  readonly reply?: string;
  readonly reason?: string;
}

/** One phase's hooks and rules, as they ran. */
export interface RecordedStep {
  readonly phase: Phase;
  /** What the rules of this step saw besides findings (after the step's hooks). */
  readonly helo: string | null;
  readonly name: string | null;
  readonly trusted: boolean;
  readonly tls: boolean;
  readonly authUser: string | null;
  /** The recipient under test (rcpt steps). */
  readonly recipient?: RecordedAddress;
  /** Findings the hooks of this step wrote or changed, by top-level key (null: removed). */
  readonly findings: Readonly<Record<string, unknown>>;
  /** Points the hooks of this step added to the score (rules' points are not included). */
  readonly score: number;
  /** Tags the hooks of this step added. */
  readonly tags: readonly string[];
  /** Pipeline entries whose hook ran in this step, in order. */
  readonly ran: readonly string[];
  /** Pipeline entries with a hook for this phase that a `skip` rule held back. */
  readonly skipped: readonly string[];
  /** How the step ended; null when it went on. */
  readonly decision: RecordedDecision | null;
  /** Rules that matched in this step (`observe: …` verdicts for observe-mode rules). */
  readonly rules: ReadonlyArray<{ readonly rule: string; readonly verdict: string | null; readonly decision: string }>;
}

export interface TransactionRecord {
  readonly v: typeof RECORD_VERSION;
  /**
   * `connection` for a connection that started no transaction (refused at connect or HELO, or left):
   * its steps are the connection's, `tx` is the connection id, `sender` null. Absent for a transaction.
   */
  readonly event?: "connection";
  /** When the transaction (or connection) ended (ISO 8601, the gateway's clock). */
  readonly at: string;
  readonly tx: string;
  readonly cid: string;
  readonly client: { readonly ip: string; readonly port: number; readonly family: 4 | 6 };
  readonly local: { readonly ip: string; readonly port: number };
  readonly role: "mx" | "submission";
  /** Local parts of envelope addresses are hashed. */
  readonly hashed: boolean;
  readonly sender: RecordedAddress | null;
  /** The connection's steps (connect, helo) up to MAIL, then the transaction's. */
  readonly steps: readonly RecordedStep[];
  /** The outcome as the summary line has it. */
  readonly outcome: TransactionOutcome | ConnectionOutcome;
  readonly decidedBy: string | null;
  readonly reply: string | null;
  readonly recipients: readonly string[];
  readonly rejectedRecipients: ReadonlyArray<{ readonly to: string; readonly reply: string }>;
  readonly tags: readonly string[];
  readonly route: string | null;
  readonly score: number;
}

/** Where finished records go (the log file, the shadow policy). Must not throw. */
export type RecordSink = (record: TransactionRecord, log: Logger) => void;

/** A stable pseudonym of a local part: the same input always gives the same 16 hex digits. */
export function hashLocalPart(local: string): string {
  return local === "" ? "" : createHash("sha256").update(local).digest("hex").slice(0, 16);
}

/** An envelope address as recorded; `address` is whatever the client wrote when it does not parse. */
function hashAddress(address: string): string {
  const at = address.lastIndexOf("@");
  return at < 0 ? hashLocalPart(address) : `${hashLocalPart(address.slice(0, at))}${address.slice(at)}`;
}

function recordDecision(decision: Decision): RecordedDecision | null {
  if (decision.kind === "continue") return null;
  const by = `${decision.by.source}:${decision.by.name}`;
  if (decision.kind === "accept") return { kind: "accept", by };
  const { reply, reason } = decision as RefusingDecision;
  return { kind: decision.kind, by, reply: formatReply(reply), ...(reason ? { reason } : {}) };
}

/** Each visible finding (own and inherited) as JSON, to tell what a step's hooks changed. */
function snapshot(facts: object): Map<string, string | undefined> {
  const seen = new Map<string, string | undefined>();
  for (const key in facts) seen.set(key, JSON.stringify((facts as Record<string, unknown>)[key]));
  return seen;
}

/** A record with the local parts of its envelope addresses hashed (`hashLocalParts`). */
export function hashRecord(record: TransactionRecord): TransactionRecord {
  const address = (a: RecordedAddress): RecordedAddress => ({
    address: hashAddress(a.address),
    local: hashLocalPart(a.local),
    domain: a.domain,
  });
  return {
    ...record,
    hashed: true,
    sender: record.sender && address(record.sender),
    steps: record.steps.map((step) => (step.recipient ? { ...step, recipient: address(step.recipient) } : step)),
    recipients: record.recipients.map(hashAddress),
    rejectedRecipients: record.rejectedRecipients.map((r) => ({ to: hashAddress(r.to), reply: r.reply })),
  };
}

const recordedAddress = (a: RecordedAddress): RecordedAddress => ({
  address: a.address,
  local: a.local,
  domain: a.domain,
});

/**
 * Collects the steps of one session and turns each finished transaction into a record. The session
 * calls `step` around each phase it runs and `finish` where it writes the summary line.
 */
export class SessionRecorder {
  readonly #connection: RecordedStep[] = [];
  /** Per open transaction: the connection's steps when it began, then its own. */
  readonly #transactions = new Map<string, RecordedStep[]>();

  constructor(
    private readonly sink: RecordSink,
    private readonly clock: Clock,
  ) {}

  /**
   * Call before the hooks of a phase run; `hooksRan` once they did (before the rules), `end` with
   * the step's final decision and its trace entries. `skip` is the rules' skip set as the hooks saw it.
   */
  step(phase: Phase, input: PhaseInput, plugins: readonly ActivePlugin[], skip: ReadonlySet<string>) {
    const { connection, transaction } = input;
    const holder: { score: number } = transaction ?? connection;
    const facts: object = transaction?.facts ?? connection.facts;
    const skipped = plugins
      .filter((plugin) => plugin.hooks[phase] !== undefined && skip.has(plugin.entry.name))
      .map((plugin) => plugin.entry.name);
    const before = { facts: snapshot(facts), score: holder.score, tags: new Set(transaction?.tags) };
    let afterHooks: Omit<RecordedStep, "ran" | "decision" | "rules"> | null = null;
    return {
      hooksRan: () => {
        const findings: Record<string, unknown> = {};
        const now = snapshot(facts);
        for (const [key, json] of now) {
          if (json !== before.facts.get(key)) findings[key] = json === undefined ? null : JSON.parse(json);
        }
        for (const key of before.facts.keys()) if (!now.has(key)) findings[key] = null;
        afterHooks = {
          phase,
          helo: input.helo ?? connection.helo,
          name: connection.verifiedName,
          trusted: connection.trusted,
          tls: connection.tls !== null,
          authUser: connection.authUser,
          ...(input.recipient ? { recipient: recordedAddress(input.recipient) } : {}),
          findings,
          score: holder.score - before.score,
          tags: [...(transaction?.tags ?? [])].filter((tag) => !before.tags.has(tag)),
          skipped,
        };
      },
      end: (decision: Decision, trace: readonly TraceEntry[]) => {
        if (!afterHooks) return;
        const step: RecordedStep = {
          ...afterHooks,
          ran: trace.filter((entry) => entry.source !== "rule").map((entry) => entry.plugin),
          decision: recordDecision(decision),
          rules: trace
            .filter((entry) => entry.source === "rule")
            .map((entry) => ({ rule: entry.plugin, verdict: entry.verdict, decision: entry.decision })),
        };
        if (!transaction) {
          this.#connection.push(step);
          return;
        }
        const steps = this.#transactions.get(transaction.id) ?? [...this.#connection];
        steps.push(step);
        this.#transactions.set(transaction.id, steps);
      },
    };
  }

  /** Builds the transaction's record from its steps and summary and hands it to the sink. */
  finish(context: TransactionContext, summary: TransactionSummary, log: Logger): void {
    const steps = this.#transactions.get(context.id) ?? [...this.#connection];
    this.#transactions.delete(context.id);
    const { connection } = context;
    const record: TransactionRecord = {
      v: RECORD_VERSION,
      at: new Date(this.clock.now()).toISOString(),
      tx: context.id,
      cid: connection.id,
      client: connection.client,
      local: connection.local,
      role: connection.role,
      hashed: false,
      sender: recordedAddress(context.sender),
      steps,
      outcome: summary.outcome,
      decidedBy: summary.decidedBy,
      reply: summary.reply,
      recipients: summary.to,
      rejectedRecipients: summary.rejectedRecipients,
      tags: [...context.tags],
      route: context.route,
      score: summary.score,
    };
    this.sink(record, log);
  }

  /** Builds the record of a connection that started no transaction (its connection line's) and hands it to the sink. */
  connection(connection: ConnectionContext, summary: ConnectionSummary, log: Logger): void {
    const record: TransactionRecord = {
      v: RECORD_VERSION,
      event: "connection",
      at: new Date(this.clock.now()).toISOString(),
      tx: connection.id,
      cid: connection.id,
      client: connection.client,
      local: connection.local,
      role: connection.role,
      hashed: false,
      sender: null,
      steps: [...this.#connection],
      outcome: summary.outcome,
      decidedBy: summary.decidedBy,
      reply: summary.reply,
      recipients: [],
      rejectedRecipients: [],
      tags: [],
      route: null,
      score: summary.score,
    };
    this.sink(record, log);
  }
}

export interface TransactionLogOptions {
  readonly path: string;
  /** Bytes; a line that would grow the file past this starts a new file. */
  readonly maxSize: number;
  /** Milliseconds; a file whose first record is older than this is rotated before the next line. */
  readonly maxAge: number;
  /** Rotated files kept; older ones are deleted. */
  readonly keep: number;
  readonly hashLocalParts: boolean;
}

/**
 * The JSON-lines file. Rotated files are named after the current one with the rotation time before
 * the extension (`transactions.2025-01-31T10-00-00-000Z.jsonl`), so they sort by age.
 */
export class TransactionLog {
  #fd: number;
  #size: number;
  /** Time of the current file's first record; null while it is empty. */
  #startedAt: number | null;

  constructor(
    readonly options: TransactionLogOptions,
    private readonly clock: Clock,
  ) {
    mkdirSync(dirname(options.path), { recursive: true });
    this.#fd = openSync(options.path, "a");
    this.#size = fstatSync(this.#fd).size;
    this.#startedAt = this.#size > 0 ? firstRecordTime(options.path) : null;
  }

  write(record: TransactionRecord): void {
    const line = `${JSON.stringify(this.options.hashLocalParts ? hashRecord(record) : record)}\n`;
    const bytes = Buffer.byteLength(line);
    const now = this.clock.now();
    if (
      this.#size > 0 &&
      (this.#size + bytes > this.options.maxSize ||
        (this.#startedAt !== null && now - this.#startedAt >= this.options.maxAge))
    ) {
      this.#rotate(now);
    }
    writeSync(this.#fd, line);
    this.#size += bytes;
    this.#startedAt ??= now;
  }

  #rotate(now: number): void {
    const { path, keep } = this.options;
    closeSync(this.#fd);
    const ext = extname(path);
    const stem = basename(path, ext);
    const stamp = new Date(now).toISOString().replace(/[:.]/g, "-");
    const taken = new Set(readdirSync(dirname(path)));
    let name = `${stem}.${stamp}${ext}`;
    for (let n = 1; taken.has(name); n++) name = `${stem}.${stamp}-${n}${ext}`;
    renameSync(path, join(dirname(path), name));
    const rotated = readdirSync(dirname(path))
      .filter((file) => file.startsWith(`${stem}.`) && file.endsWith(ext) && file !== basename(path))
      .sort();
    for (const old of rotated.slice(0, Math.max(0, rotated.length - keep))) rmSync(join(dirname(path), old));
    this.#fd = openSync(path, "a");
    this.#size = 0;
    this.#startedAt = null;
  }

  close(): void {
    closeSync(this.#fd);
  }
}

/** The `at` of a file's first line (a record), or null when it is not one. */
function firstRecordTime(path: string): number | null {
  const fd = openSync(path, "r");
  try {
    const buffer = Buffer.alloc(64 * 1024);
    const length = readSync(fd, buffer, 0, buffer.length, 0);
    const first = buffer.subarray(0, length).toString("utf8").split("\n")[0];
    const at = Date.parse((JSON.parse(first) as { at?: string }).at ?? "");
    return Number.isNaN(at) ? null : at;
  } catch {
    // Not a record (a foreign or truncated first line): the file's age starts with our first line.
    return null;
  } finally {
    closeSync(fd);
  }
}
