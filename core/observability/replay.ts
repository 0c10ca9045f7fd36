/**
 * Replay: what a candidate policy's rules would have answered to transactions recorded in
 * the transaction log (core/observability/transaction-log.ts); `portcullis replay` (app/replay.ts) prints it.
 *
 * What is re-evaluated, and what is not:
 * - Rules are. Each recorded step is played back in the session's order: the findings, points and
 *   tags its hooks produced are applied, then the candidate's rules run through the same
 *   `applyRules` the session uses (same phases, skip sets, scores, tags, once-per-recipient rules).
 * - Hooks are not (no DNS, no state store). A step that a hook ended keeps that hook's decision, and
 *   rules do not run in it, as live. So under the policy that recorded the log, every outcome is
 *   reproduced; under a candidate, only its rules can change an outcome.
 * - A step cannot be played when the candidate would run a hook that did not run, or hold back
 *   (`skip`) one that did, and a transaction the candidate lets past the point where it was refused
 *   (MAIL, DATA, or all recipients refused) has no recorded later steps: such transactions are
 *   reported as `unknown`, with the reason, never guessed.
 * - Connections refused at connect or HELO start no transaction and are not recorded: relaxing such
 *   a refusal cannot be replayed. Route and header changes are not outcomes and are not compared.
 */
import { pino } from "pino";
import type { ConnectionContext, Phase, TraceEntry, TransactionContext } from "../contract/api.js";
import { type Decision, formatReply, parseReply, type RefusingDecision } from "../contract/decision.js";
import type { Runtime } from "../engine/runtime.js";
import { applyRules, connectionRuleState, type RuleState, transactionRuleState } from "../policy/rules/apply.js";
import type { RuleSet } from "../policy/rules/compile.js";
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

/** What replay needs of a policy: its compiled rules and which entries have a hook in each phase. */
export interface Candidate {
  readonly rules: RuleSet;
  readonly hooked: Readonly<Record<Phase, ReadonlySet<string>>>;
}

export function candidateOf(runtime: Runtime): Candidate {
  const hooked = (phase: Phase) =>
    new Set(runtime.plugins.filter((p) => p.hooks[phase] !== undefined).map((p) => p.entry.name));
  return {
    rules: runtime.rules,
    hooked: {
      connect: hooked("connect"),
      helo: hooked("helo"),
      mail: hooked("mail"),
      rcpt: hooked("rcpt"),
      data: hooked("data"),
      queue: hooked("queue"),
    },
  };
}

/** Rules log what they do; in a replay nothing acts, so their lines would only mislead. */
const SILENT = { log: pino({ level: "silent" }) };

type Writable<T> = { -readonly [K in keyof T]: T[K] };

const TRANSACTION_PHASES: ReadonlySet<Phase> = new Set(["mail", "rcpt", "data", "queue"]);

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

function refusing(decision: Decision): RefusingDecision | null {
  return decision.kind === "reject" || decision.kind === "defer" || decision.kind === "disconnect" ? decision : null;
}

const by = (decision: RefusingDecision) => `${decision.by.source}:${decision.by.name}`;

/** Why the candidate's skip set makes a step unplayable (and the plugin it holds back), or null. */
function skipMismatch(
  step: RecordedStep,
  skip: ReadonlySet<string>,
  hooked: ReadonlySet<string>,
): { reason: string; plugin?: string } | null {
  const held = step.ran.find((name) => skip.has(name));
  if (held) return { reason: `the candidate skips ${held}, whose ${step.phase} hook ran`, plugin: held };
  const released = step.skipped.find((name) => hooked.has(name) && !skip.has(name));
  return released ? { reason: `the candidate runs ${released}'s ${step.phase} hook, which was skipped` } : null;
}

/** The rule of `rules` that acted and skips `plugin`. */
function skipper(rules: RuleSet, state: RuleState, plugin: string): string | undefined {
  return rules.rules.find(
    (rule) => state.fired.has(rule.name) && rule.actions.some((a) => a.type === "skip" && a.plugins.includes(plugin)),
  )?.name;
}

/**
 * Plays a recorded transaction back under `candidate`'s rules. Pure: the record is not changed and
 * nothing is looked up.
 */
export function replayRecord(record: TransactionRecord, candidate: Candidate): ReplayResult {
  const connection: Writable<ConnectionContext> = {
    id: record.cid,
    client: record.client,
    local: record.local,
    role: record.role,
    openedAt: 0,
    tls: null,
    helo: null,
    authUser: null,
    verifiedName: null,
    iprev: null,
    trusted: false,
    facts: {},
    score: 0,
  };
  const connectionRules = connectionRuleState();
  const trace: TraceEntry[] = [];
  const rejected = coreRejected(record);
  let tx: { context: TransactionContext; rules: RuleState } | null = null;
  let atConnect: RefusingDecision | null = null;
  let atHelo: RefusingDecision | null = null;
  const result = (outcome: ReplayOutcome, decision: RefusingDecision | null): ReplayResult => ({
    outcome,
    decidedBy: decision ? by(decision) : null,
    reply: decision ? formatReply(decision.reply) : null,
    rejected,
    quarantinedBy: null,
  });
  const unknown = (reason: string, cause?: string): ReplayResult => ({
    ...result("unknown", null),
    unknown: reason,
    ...(cause ? { cause } : {}),
  });
  /** A transaction that got through every rule: accepted ones may have been quarantined by one. */
  const settled = (outcome: ReplayOutcome, decidedBy: string | null, reply: string | null): ReplayResult => {
    const quarantinedBy =
      outcome === "accepted" && tx?.context.tags.has("quarantine")
        ? quarantiner(trace.map((entry) => ({ rule: entry.plugin, verdict: entry.verdict })))
        : null;
    return { outcome: quarantinedBy ? "quarantined" : outcome, decidedBy, reply, rejected, quarantinedBy };
  };
  const dataSteps = record.steps.some((s) => s.phase === "data");

  /** Plays one step; returns the transaction's result when the step ends it. */
  const play = (step: RecordedStep): ReplayResult | null => {
    // As live: once the connect phase refused, HELO hooks and rules do not run.
    if (step.phase === "helo" && atConnect) return null;
    if (TRANSACTION_PHASES.has(step.phase) && !tx) {
      const refusal = atConnect ?? atHelo;
      if (refusal) return result("refused", refusal);
      tx = {
        context: {
          id: record.tx,
          connection,
          sender: { ...record.sender, args: {} },
          recipients: [],
          facts: Object.create(connection.facts),
          score: connection.score,
          tags: new Set(),
          headers: { prepend: [], remove: [] },
          route: null,
          trace,
        },
        rules: transactionRuleState(connectionRules),
      };
    }
    connection.helo = step.helo;
    connection.verifiedName = step.name;
    connection.trusted = step.trusted;
    connection.tls = step.tls ? { protocol: "recorded", cipher: "recorded" } : null;
    connection.authUser = step.authUser;
    const state = tx?.rules ?? connectionRules;
    const mismatch = skipMismatch(step, state.skip, candidate.hooked[step.phase]);
    if (mismatch) return unknown(mismatch.reason, mismatch.plugin && skipper(candidate.rules, state, mismatch.plugin));
    const holder: { score: number; facts: object } = tx?.context ?? connection;
    Object.assign(holder.facts, step.findings);
    holder.score += step.score;
    for (const tag of step.tags) tx?.context.tags.add(tag);
    const recipient = step.recipient ? { ...step.recipient, args: {} } : undefined;
    const hookDecided = step.decision?.by.startsWith("plugin:") ?? false;
    const decision =
      hookDecided && step.decision
        ? decisionOf(step.decision)
        : applyRules(
            candidate.rules,
            step.phase,
            {
              connection,
              transaction: tx?.context,
              recipient,
              helo: step.phase === "helo" ? (step.helo ?? "") : undefined,
            },
            state,
            SILENT,
            trace,
          );
    const refusal = refusing(decision);
    const liveRefused = step.decision !== null && step.decision.kind !== "accept";
    switch (step.phase) {
      case "connect":
        // A disconnect closes the connection at once; reject and defer are answered at MAIL.
        if (refusal?.kind === "disconnect") return result("refused", refusal);
        atConnect = refusal;
        return null;
      case "helo":
        atHelo = refusal;
        return null;
      case "mail":
        if (refusal) return result("refused", refusal);
        return liveRefused ? unknown("passes MAIL, which was refused live: no later steps were recorded") : null;
      case "rcpt": {
        if (refusal) {
          rejected[step.recipient?.address ?? ""] = by(refusal);
          // The connection closes; the transaction ends aborted (as the summary line has it).
          return refusal.kind === "disconnect" ? result("aborted", null) : null;
        }
        if (recipient) tx?.context.recipients.push(recipient);
        return null;
      }
      case "data":
      case "queue":
        if (refusal) return result(refusal.kind === "defer" ? "deferred" : "rejected", refusal);
        if (!liveRefused) return null;
        // Past a DATA refused live, only the queue phase's rules remain when no hook runs in it.
        if (step.phase === "data" && candidate.hooked.queue.size === 0) {
          return (
            play({
              ...step,
              phase: "queue",
              findings: {},
              score: 0,
              tags: [],
              ran: [],
              skipped: [],
              decision: null,
              rules: [],
            }) ?? settled("accepted", null, null)
          );
        }
        return unknown(`passes the ${step.phase} phase, which was refused live: no later steps were recorded`);
    }
  };
  for (const step of record.steps) {
    const ended = play(step);
    if (ended) return ended;
  }
  const transaction = tx as { context: TransactionContext } | null;
  if (!transaction) return unknown("no MAIL step recorded");
  const accepted = transaction.context.recipients.length;
  if (accepted > 0 && record.recipients.length === 0 && !dataSteps) {
    return unknown("accepts a recipient where none was accepted live: no DATA was recorded");
  }
  if (accepted === 0 && dataSteps) {
    // Session.data's own answer to a transaction without recipients.
    return result("rejected", {
      kind: "reject",
      reply: { code: 554, enhanced: "5.5.1", text: "Error: no valid recipients" },
      by: { source: "core", name: "sequence" },
    });
  }
  // Every recorded step went as live; what came after them (delivery, the client leaving) stands.
  return settled(record.outcome, record.decidedBy, record.reply);
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
export function replayLines(lines: Iterable<string>, candidate: Candidate): Omit<ReplayReport, "policy" | "logs"> {
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
    const result = replayRecord(record, candidate);
    count(recorded, live.outcome);
    count(outcomes, result.outcome);
    const found = differences(live, result);
    if (found.length === 0) continue;
    changes.push({
      tx: record.tx,
      at: record.at,
      client: record.client.ip,
      from: record.sender.address,
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
