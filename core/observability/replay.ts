/**
 * Replay: what a candidate policy would have answered to transactions recorded in the transaction
 * log (core/observability/transaction-log.ts); `portcullis replay` (app/replay.ts) prints it, and
 * the shadow policy (shadow.ts) runs it on every live transaction.
 *
 * A record is played through the gateway's own engine, `Session` (core/engine/session.ts), with the
 * candidate's runtime in which every hook answers from the record instead of looking anything up:
 * - Hooks are not re-run (no DNS, no state store). At the phase, and for the recipient, that the
 *   record has, each of the candidate's hooks answers what the live hook did: the step's findings,
 *   points and tags are applied, and a step that a hook ended ends with that hook's decision. Then
 *   the candidate's rules run through the session exactly as live (same phases, skip sets, scores,
 *   tags, once-per-recipient rules). So under the policy that recorded the log every outcome is
 *   reproduced; under a candidate, its rules and the order of its hooks can change an outcome.
 * - What the record cannot tell is `unknown`, with the reason, never guessed: a step in which the
 *   candidate would run a hook that did not run live, or hold back (`skip`) or lack one that did,
 *   or run them in another order; a transaction the candidate lets past the point where it was
 *   refused (MAIL, DATA, or all recipients refused), where no later steps were recorded.
 * - Connections that started no transaction (refused at connect or HELO, or gone before MAIL) have a
 *   connection record: the candidate refuses such a client when its connect or HELO phase refuses;
 *   one that lets pass a client refused live is `unknown` (what the client would have sent next was
 *   never recorded). Relay access and recipient verification are taken as recorded (a
 *   recipient with a recorded RCPT step got past them live). Route and header changes are not
 *   outcomes and are not compared.
 */
import { Readable } from "node:stream";
import { type Logger, pino } from "pino";
import type { HookContext, HookResult, Message, Phase, PluginHooks, TraceEntry } from "../contract/api.js";
import { type Decision, formatReply, parseReply, type RefusingDecision } from "../contract/decision.js";
import type { RecipientVerifier } from "../delivery/verify.js";
import type { ActivePlugin, PhaseInput } from "../engine/pipeline.js";
import type { Runtime } from "../engine/runtime.js";
import { connectionContext, Session } from "../engine/session.js";
import type { RelayAccess } from "../policy/relay.js";
import { hookPhases } from "../policy/rules/compile.js";
import type { TransactionOutcome, TransactionSummary } from "./observe.js";
import { RECORD_VERSION, type RecordedDecision, type RecordedStep, type TransactionRecord } from "./transaction-log.js";

/** A transaction outcome as the summary line has it, plus `quarantined` (accepted into quarantine) and `unknown`. */
export type ReplayOutcome = TransactionRecord["outcome"] | "quarantined" | "unknown";

export interface ReplayResult {
  readonly outcome: ReplayOutcome;
  /** `plugin:NAME`, `rule:NAME` or `core:NAME` when a decision ended the transaction. */
  readonly decidedBy: string | null;
  readonly reply: string | null;
  /** Refused recipients and who refused each. */
  readonly rejected: Readonly<Record<string, string>>;
  /** The rule that quarantined an accepted transaction. */
  readonly quarantinedBy: string | null;
  /** Why the outcome cannot be known (outcome `unknown`). */
  readonly unknown?: string;
  /** The candidate rule that made it unknown (a `skip` of a hook that ran), when one did. */
  readonly cause?: string;
}

/** A candidate policy as replay runs it. */
export interface Candidate {
  readonly runtime: Runtime;
  /** Rules log what they do; in a replay nothing acts, so their lines would only mislead. */
  readonly log: Logger;
}

export function candidateOf(runtime: Runtime): Candidate {
  return { runtime, log: pino({ level: "silent" }) };
}

/** The rule whose `quarantine` action took the transaction (the action is traced as "quarantine TARGET"). */
function quarantiner(rules: ReadonlyArray<{ rule: string; verdict: string | null }>): string | null {
  const match = [...rules].reverse().find((r) => r.verdict !== null && /(?:^|, )quarantine \S/.test(r.verdict));
  return match && !match.verdict?.startsWith("observe: ") ? match.rule : null;
}

/** Recipients refused before any hook ran (syntax, relay access, limits): no rcpt step has them. */
function coreRejected(record: TransactionRecord): Record<string, string> {
  const tested = new Set(record.steps.flatMap((s) => (s.recipient ? [s.recipient.address] : [])));
  return Object.fromEntries(record.rejectedRecipients.filter((r) => !tested.has(r.to)).map((r) => [r.to, "core"]));
}

/** The recorded (live) result of a transaction, in the terms replay compares. */
export function recordedResult(record: TransactionRecord): ReplayResult {
  const rejected = coreRejected(record);
  for (const step of record.steps) {
    if (step.recipient && step.decision && step.decision.kind !== "accept") {
      rejected[step.recipient.address] = step.decision.by;
    }
  }
  const quarantinedBy =
    record.outcome === "accepted" && record.tags.includes("quarantine")
      ? quarantiner(record.steps.flatMap((s) => s.rules))
      : null;
  return {
    outcome: quarantinedBy ? "quarantined" : record.outcome,
    decidedBy: record.decidedBy,
    reply: record.reply,
    rejected,
    quarantinedBy,
  };
}

function decisionOf(recorded: RecordedDecision): Decision {
  const [source, ...name] = recorded.by.split(":");
  const by = { source: source as "plugin" | "rule" | "core", name: name.join(":") };
  if (recorded.kind === "accept") return { kind: "accept", by };
  return { kind: recorded.kind, by, reply: parseReply(recorded.reply ?? ""), reason: recorded.reason };
}

const by = (decision: RefusingDecision) => `${decision.by.source}:${decision.by.name}`;

const refusedLive = (step: RecordedStep | undefined) => step?.decision != null && step.decision.kind !== "accept";

/**
 * What a hook answers once replay knows the outcome is unknown: it ends the phase, so no further
 * hook or rule works on what the record cannot tell. The session's answer is then disregarded.
 */
const UNKNOWABLE: Decision = {
  kind: "disconnect",
  reply: { code: 421, enhanced: "4.3.0", text: "Replay cannot know this outcome" },
  by: { source: "core", name: "replay" },
};

/** Why replay cannot know, and the plugin a candidate rule held back when that is why. */
interface Unknowable {
  readonly reason: string;
  readonly skipped?: string;
}

/**
 * The recorded answers of one transaction, handed to the session in place of the live hooks and
 * recorder: the session tells it each phase it starts (`step`), so the candidate's hooks answer from
 * the step recorded for that phase and recipient, and it checks that they ran as live.
 */
class RecordedAnswers {
  readonly #played = new Set<RecordedStep>();
  #last: RecordedStep | null = null;
  /** The step the session is in; null in a phase that has no recorded step. */
  #current: RecordedStep | null = null;
  /** Hooks called in the current step, in order. */
  #called: string[] = [];
  /** Whether the client was trusted, as the current step has it. */
  trusted = false;
  unknown: Unknowable | null = null;
  summary: TransactionSummary | null = null;

  constructor(private readonly record: TransactionRecord) {}

  step(phase: Phase, input: PhaseInput, _plugins: readonly ActivePlugin[], skip: ReadonlySet<string>) {
    const step =
      this.record.steps.find(
        (s) => !this.#played.has(s) && s.phase === phase && s.recipient?.address === input.recipient?.address,
      ) ?? null;
    this.#current = step;
    this.#called = [];
    if (step) {
      this.#played.add(step);
      this.#last = step;
      // What the rules of the step saw of the connection, besides findings.
      const { connection } = input;
      connection.helo = step.helo;
      connection.verifiedName = step.name;
      connection.tls = step.tls ? { protocol: "recorded", cipher: "recorded" } : null;
      connection.authUser = step.authUser;
      this.trusted = step.trusted;
    }
    return {
      hooksRan: () => {
        if (!step || this.unknown) return;
        const missing = step.ran.find((name) => !this.#called.includes(name));
        if (!missing) return;
        this.unknown = skip.has(missing)
          ? { reason: `the candidate skips ${missing}, whose ${phase} hook ran`, skipped: missing }
          : { reason: `the candidate has no ${phase} hook of ${missing}, which ran` };
      },
      end: () => {},
    };
  }

  finish(_context: unknown, summary: TransactionSummary): void {
    this.summary = summary;
  }

  /** The candidate's pipeline entry with hooks that answer from the record, in the phases it has hooks. */
  plugin(live: ActivePlugin): ActivePlugin {
    const answer = async (ctx: HookContext<Phase>) => this.#answer(live.entry.name, ctx);
    return {
      entry: live.entry,
      hooks: Object.fromEntries(hookPhases(live).map((phase) => [phase, answer])) as PluginHooks,
    };
  }

  #answer(name: string, ctx: HookContext<Phase>): HookResult {
    if (this.unknown) return UNKNOWABLE;
    const step = this.#current;
    if (!step) {
      this.unknown = {
        reason: refusedLive(this.#last ?? undefined)
          ? `passes the ${this.#last?.phase} phase, which was refused live: no later steps were recorded`
          : `no ${ctx.phase} step was recorded`,
      };
      return UNKNOWABLE;
    }
    const expected = step.ran[this.#called.length];
    if (name !== expected) {
      this.unknown = {
        reason: step.ran.includes(name)
          ? `the candidate runs ${name}'s ${ctx.phase} hook before ${expected}'s, unlike live`
          : step.skipped.includes(name)
            ? `the candidate runs ${name}'s ${ctx.phase} hook, which was skipped`
            : `the candidate runs ${name}'s ${ctx.phase} hook, which did not run`,
      };
      return UNKNOWABLE;
    }
    this.#called.push(name);
    if (this.#called.length < step.ran.length) return undefined;
    // The record keeps what a step's hooks found per step, not per hook: the last hook that ran
    // applies all of it, before the rules of the step run.
    Object.assign(ctx.facts, step.findings);
    if (step.score !== 0) ctx.addScore(step.score, "recorded");
    if ("transaction" in ctx) for (const tag of step.tags) ctx.transaction.tags.add(tag);
    return step.decision?.by.startsWith("plugin:") ? decisionOf(step.decision) : undefined;
  }
}

/** Relay access as recorded: a recipient with a recorded RCPT step got past it live; trust is as each step says. */
function recordedRelay(relay: RelayAccess, answers: RecordedAnswers): RelayAccess {
  return {
    check: () => null,
    unknownRecipient: () => null,
    isTrustedClient: () => answers.trusted,
    isLocalDomain: (domain) => relay.isLocalDomain(domain),
  };
}

/**
 * Recipient verification as recorded: a recipient the next hop refused live has a recorded RCPT
 * step without a decision, and counts as accepted in the recorded result too (`recordedResult`).
 */
const VERIFIED: RecipientVerifier = { verify: async () => ({ kind: "exists" }) };

/** Rules never read the message; the DATA and queue phases get an empty one. */
const NO_MESSAGE: Message = { size: 0, headers: [], stream: () => Readable.from([]) };

/** A replayed transaction: its result, and the summary line the session wrote (null when it wrote none). */
export interface Playback {
  readonly result: ReplayResult;
  readonly summary: TransactionSummary | null;
}

/**
 * Plays a recorded transaction through the session under `candidate`. Nothing is looked up and the
 * record is not changed.
 */
export async function playRecord(record: TransactionRecord, candidate: Candidate): Promise<Playback> {
  const answers = new RecordedAnswers(record);
  const runtime: Runtime = {
    ...candidate.runtime,
    plugins: candidate.runtime.plugins.map((plugin) => answers.plugin(plugin)),
    relay: recordedRelay(candidate.runtime.relay, answers),
  };
  const connection = connectionContext(runtime, {
    id: record.cid,
    ip: record.client.ip,
    port: record.client.port,
    local: record.local,
    role: record.role,
    openedAt: 0,
    authUser: null,
  });
  const { clock } = runtime.services;
  const session = new Session(runtime, connection, candidate.log, clock, undefined, answers, VERIFIED);
  const rejected = coreRejected(record);
  const played = (result: ReplayResult): Playback => ({ result, summary: answers.summary });
  const ended = (outcome: ReplayOutcome, decision: RefusingDecision | null): Playback =>
    played({
      outcome,
      decidedBy: decision ? by(decision) : null,
      reply: decision ? formatReply(decision.reply) : null,
      rejected,
      quarantinedBy: null,
    });
  const unknown = (reason: string, cause?: string): Playback => ({
    result: { ...ended("unknown", null).result, unknown: reason, ...(cause ? { cause } : {}) },
    summary: null,
  });
  /** The session stopped where the record cannot follow; `cause` is the rule that skips a hook that ran. */
  const unknowable = ({ reason, skipped }: Unknowable): Playback => {
    const trace = [...session.connectionTrace, ...(session.lastTransaction?.trace ?? [])];
    return unknown(reason, skipped && skipper(candidate.runtime, trace, skipped));
  };
  /** The transaction got past every recorded step; what came after them stands as recorded. */
  const settled = (outcome: TransactionOutcome, decidedBy: string | null, reply: string | null): Playback => {
    session.finish(outcome, null);
    const tx = session.lastTransaction;
    const rules = [...session.connectionTrace, ...(tx?.trace ?? [])]
      .filter((entry) => entry.source === "rule")
      .map((entry) => ({ rule: entry.plugin, verdict: entry.verdict }));
    const quarantinedBy = outcome === "accepted" && tx?.tags.has("quarantine") ? quarantiner(rules) : null;
    return played({ outcome: quarantinedBy ? "quarantined" : outcome, decidedBy, reply, rejected, quarantinedBy });
  };

  /** The candidate refused every recipient: its last refusal ended the transaction (the session's summary says so). */
  const refusedRecipients = (): Playback | null => {
    const summary = answers.summary;
    if (!summary || summary.outcome === "aborted") return null;
    return played({
      outcome: summary.outcome,
      decidedBy: summary.decidedBy,
      reply: summary.reply,
      rejected,
      quarantinedBy: null,
    });
  };

  const atConnect = await session.connect();
  if (answers.unknown) return unknowable(answers.unknown);
  // A disconnect closes the connection at once; reject and defer are answered at MAIL.
  if (atConnect) return ended("refused", atConnect);
  let helo: string | null = null;
  for (const step of record.steps.filter((s) => s.phase === "helo")) {
    // The same name again was sent after STARTTLS, which makes the session forget the first one.
    if (step.helo === helo) session.restart();
    helo = step.helo;
    await session.helo(step.helo ?? "");
    if (answers.unknown) return unknowable(answers.unknown);
  }
  if (record.event === "connection" || !record.sender) {
    // The client never got a transaction: the candidate refuses it if it holds a refusal for MAIL.
    const held = session.held;
    if (held) return ended("refused", held);
    const refusedAt = record.steps.find((step) => refusedLive(step));
    if (refusedAt) {
      return unknown(`passes the ${refusedAt.phase} phase, which was refused live: no later steps were recorded`);
    }
    return played({
      outcome: record.outcome,
      decidedBy: record.decidedBy,
      reply: record.reply,
      rejected,
      quarantinedBy: null,
    });
  }
  // Only connection records have other outcomes than a transaction's.
  const liveOutcome = record.outcome as TransactionOutcome;
  const mail = record.steps.find((s) => s.phase === "mail");
  if (!mail) return unknown("no MAIL step recorded");
  const atMail = await session.mail(record.sender.address, {});
  if (answers.unknown) return unknowable(answers.unknown);
  if (atMail) return ended("refused", atMail);
  if (refusedLive(mail)) return unknown("passes the mail phase, which was refused live: no later steps were recorded");
  for (const step of record.steps) {
    if (step.phase !== "rcpt" || !step.recipient) continue;
    const refusal = await session.rcpt(step.recipient.address, {});
    if (answers.unknown) return unknowable(answers.unknown);
    if (!refusal) continue;
    rejected[step.recipient.address] = by(refusal);
    if (refusal.kind === "disconnect") {
      // The connection closes; the transaction ends as the session's summary line has it.
      session.finish("aborted", null);
      return refusedRecipients() ?? ended("aborted", null);
    }
  }
  const data = record.steps.find((s) => s.phase === "data");
  if (!data) {
    if ((session.transaction?.recipients.length ?? 0) > 0 && record.recipients.length === 0) {
      return unknown("accepts a recipient where none was accepted live: no DATA was recorded");
    }
    session.finish("aborted", null);
    return refusedRecipients() ?? settled(liveOutcome, record.decidedBy, record.reply);
  }
  const atData = await session.data(NO_MESSAGE);
  if (answers.unknown) return unknowable(answers.unknown);
  if (atData) {
    const outcome = atData.kind === "defer" ? "deferred" : "rejected";
    session.finish(outcome, atData);
    return ended(outcome, atData);
  }
  const queue = record.steps.find((s) => s.phase === "queue");
  if (refusedLive(queue)) {
    return unknown("passes the queue phase, which was refused live: no later steps were recorded");
  }
  // Past a DATA refused live, the queue phase's rules ran without a recorded step (a hook there would
  // have made the outcome unknown): nothing refused the message.
  return refusedLive(data) ? settled("accepted", null, null) : settled(liveOutcome, record.decidedBy, record.reply);
}

/** The candidate's rule that acted (it is in `trace`) and skips `plugin`. */
function skipper(runtime: Runtime, trace: readonly TraceEntry[], plugin: string): string | undefined {
  const acted = new Set(trace.filter((entry) => entry.source === "rule").map((entry) => entry.plugin));
  return runtime.rules.rules.find(
    (rule) => acted.has(rule.name) && rule.actions.some((a) => a.type === "skip" && a.plugins.includes(plugin)),
  )?.name;
}

/** Plays a recorded transaction back under `candidate` (see `playRecord`). */
export async function replayRecord(record: TransactionRecord, candidate: Candidate): Promise<ReplayResult> {
  return (await playRecord(record, candidate)).result;
}

/** One way a candidate's result differs from the live one, and the rule that makes the difference. */
export interface Difference {
  /** A transaction outcome, or `recipient-accepted` / `recipient-rejected` for one recipient. */
  readonly live: string;
  readonly candidate: string;
  readonly rule: string;
  readonly recipient?: string;
}

const ruleName = (decidedBy: string | null | undefined) =>
  decidedBy?.startsWith("rule:") ? decidedBy.slice("rule:".length) : null;

/** The differences between a live and a candidate result: the outcome (with who decided), then each recipient. */
export function differences(live: ReplayResult, candidate: ReplayResult): Difference[] {
  const found: Difference[] = [];
  if (
    live.outcome !== candidate.outcome ||
    live.decidedBy !== candidate.decidedBy ||
    live.quarantinedBy !== candidate.quarantinedBy
  ) {
    found.push({
      live: live.outcome,
      candidate: candidate.outcome,
      rule:
        ruleName(candidate.decidedBy) ??
        candidate.quarantinedBy ??
        candidate.cause ??
        ruleName(live.decidedBy) ??
        live.quarantinedBy ??
        "(none)",
    });
  }
  // An unknown outcome says nothing about the recipients after the point where it became unknown.
  if (candidate.outcome === "unknown") return found;
  const addresses = [...new Set([...Object.keys(live.rejected), ...Object.keys(candidate.rejected)])].sort();
  for (const recipient of addresses) {
    const before = live.rejected[recipient];
    const after = candidate.rejected[recipient];
    if (before === after) continue;
    found.push({
      live: before ? "recipient-rejected" : "recipient-accepted",
      candidate: after ? "recipient-rejected" : "recipient-accepted",
      rule: ruleName(after) ?? ruleName(before) ?? "(none)",
      recipient,
    });
  }
  return found;
}

export interface ReplayReport {
  readonly policy: string;
  readonly logs: readonly string[];
  readonly transactions: number;
  /** Lines that are not records of this version (skipped). */
  readonly skipped: number;
  readonly hashed: number;
  readonly recorded: Readonly<Record<string, number>>;
  readonly candidate: Readonly<Record<string, number>>;
  readonly changed: number;
  /** Changed transactions by the rule that changes them (a transaction with several counts under each). */
  readonly byRule: ReadonlyArray<{
    readonly rule: string;
    readonly transactions: number;
    readonly changes: Readonly<Record<string, number>>;
  }>;
  readonly changes: ReadonlyArray<{
    readonly tx: string;
    readonly at: string;
    readonly client: string;
    readonly from: string;
    readonly live: ReplayResult;
    readonly candidate: ReplayResult;
    readonly differences: readonly Difference[];
  }>;
}

/** Replays every record of `lines` (JSON lines) under `candidate`. */
export async function replayLines(
  lines: Iterable<string>,
  candidate: Candidate,
): Promise<Omit<ReplayReport, "policy" | "logs">> {
  const count = (table: Record<string, number>, key: string) => {
    table[key] = (table[key] ?? 0) + 1;
  };
  const recorded: Record<string, number> = {};
  const outcomes: Record<string, number> = {};
  const byRule = new Map<string, { transactions: number; changes: Record<string, number> }>();
  const changes: Array<ReplayReport["changes"][number]> = [];
  let transactions = 0;
  let skipped = 0;
  let hashed = 0;
  for (const line of lines) {
    if (line.trim() === "") continue;
    let record: TransactionRecord;
    try {
      record = JSON.parse(line) as TransactionRecord;
    } catch {
      skipped++;
      continue;
    }
    if (record?.v !== RECORD_VERSION || !Array.isArray(record.steps)) {
      skipped++;
      continue;
    }
    transactions++;
    if (record.hashed) hashed++;
    const live = recordedResult(record);
    const result = await replayRecord(record, candidate);
    count(recorded, live.outcome);
    count(outcomes, result.outcome);
    const found = differences(live, result);
    if (found.length === 0) continue;
    changes.push({
      tx: record.tx,
      at: record.at,
      client: record.client.ip,
      from: record.sender?.address ?? "",
      live,
      candidate: result,
      differences: found,
    });
    for (const rule of new Set(found.map((d) => d.rule))) {
      const group = byRule.get(rule) ?? { transactions: 0, changes: {} };
      group.transactions++;
      for (const d of found.filter((f) => f.rule === rule)) count(group.changes, `${d.live} → ${d.candidate}`);
      byRule.set(rule, group);
    }
  }
  return {
    transactions,
    skipped,
    hashed,
    recorded,
    candidate: outcomes,
    changed: changes.length,
    byRule: [...byRule]
      .map(([rule, group]) => ({ rule, ...group }))
      .sort((a, b) => b.transactions - a.transactions || a.rule.localeCompare(b.rule)),
    changes,
  };
}
