/**
 * The one hook runner. Every hook a plugin has — the phases, the wait before the banner
 * (`pregreet`) and the end of a connection (`close`) — runs through `runHook`: under its entry's
 * deadline, timed, and traced. For the phases, hooks run in the policy's order and the first answer
 * that is not `continue` ends the phase. The core owns deadlines and errors: a hook that throws or
 * outlives its timeout yields its entry's `onError` action, never a silent continue.
 */

import { type Action, actionDecision } from "../contract/actions.js";
import type {
  Address,
  CloseContext,
  ConnectionContext,
  Facts,
  HookContext,
  HookKind,
  HookResult,
  Message,
  Phase,
  PluginHooks,
  PregreetContext,
  Services,
  TraceEntry,
  TransactionContext,
  VerdictDefault,
} from "../contract/api.js";
import { CONTINUE, type DecidedBy, type Decision, type RefusingDecision } from "../contract/decision.js";
import type { TemplateScope } from "../contract/render.js";
import type { PipelineEntry } from "../policy/load.js";

/** A pipeline entry with its plugin set up for this policy. */
export interface ActivePlugin {
  readonly entry: PipelineEntry;
  readonly hooks: PluginHooks;
}

export interface PhaseInput {
  readonly connection: ConnectionContext;
  readonly transaction?: TransactionContext;
  readonly recipient?: Address;
  readonly message?: Message;
  readonly helo?: string;
}

function verdictAction(entry: PipelineEntry, name: string): { action: Action; defaultReply?: string } {
  const defaults: VerdictDefault | undefined = entry.definition.verdicts?.[name];
  const configured = entry.on[name];
  if (configured) return { action: configured, defaultReply: defaults?.reply };
  if (!defaults) return { action: { type: "ignore" } };
  const action: Action =
    defaults.action === "ignore" || defaults.action === "accept"
      ? { type: defaults.action }
      : { type: defaults.action, reply: null };
  return { action, defaultReply: defaults.reply };
}

class HookTimeout extends Error {}

/**
 * Races a hook against its deadline; the hook's signal is aborted when the deadline passes. The
 * signal is made only when the hook asks for it: most hooks never do, and an AbortSignal per hook
 * run was 2 % of the gateway's CPU.
 */
async function runWithDeadline<T>(run: (signal: () => AbortSignal) => Promise<T>, timeoutMs: number): Promise<T> {
  let controller: AbortController | undefined;
  let timeout: HookTimeout | undefined;
  const signal = () => {
    if (!controller) {
      controller = new AbortController();
      if (timeout) controller.abort(timeout);
    }
    return controller.signal;
  };
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timeout = new HookTimeout(`timed out after ${timeoutMs} ms`);
      controller?.abort(timeout);
      reject(timeout);
    }, timeoutMs);
  });
  try {
    return await Promise.race([run(signal), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** How one hook run ended: its answer, or why it failed (`timeout`, or the error's message). */
export type HookOutcome<T> =
  | { readonly ok: true; readonly value: T; readonly ms: number }
  | { readonly ok: false; readonly error: string; readonly ms: number };

/** Runs one hook of any kind under its entry's deadline, timed; never rejects, and logs a failure. */
export async function runHook<T>(
  kind: HookKind,
  entry: PipelineEntry,
  call: (signal: () => AbortSignal) => Promise<T>,
  log: Services["log"],
): Promise<HookOutcome<T>> {
  const started = performance.now();
  const ms = () => Math.round((performance.now() - started) * 100) / 100;
  try {
    const value = await runWithDeadline(call, entry.timeoutMs);
    return { ok: true, value, ms: ms() };
  } catch (thrown) {
    const error = thrown instanceof HookTimeout ? "timeout" : thrown instanceof Error ? thrown.message : String(thrown);
    log.warn({ plugin: entry.name, phase: kind, err: error }, "hook failed; applying onError");
    return { ok: false, error, ms: ms() };
  }
}

/** A failed hook's decision: its entry's `onError` action (default: defer with 451 4.3.0). */
export function failureDecision(
  entry: PipelineEntry,
  error: string,
  scope: TemplateScope,
  addScore: (points: number, reason: string) => void,
): Decision {
  const by: DecidedBy = { source: "plugin", name: entry.name };
  return actionDecision(entry.onError, by, undefined, scope, addScore, `hook ${error}`);
}

function traceEntry(
  entry: PipelineEntry,
  kind: HookKind,
  run: HookOutcome<unknown>,
  verdict: string | null,
  decision: Decision["kind"],
): TraceEntry {
  return {
    plugin: entry.name,
    phase: kind,
    verdict,
    decision,
    ms: run.ms,
    ...(run.ok ? {} : { error: run.error }),
  };
}

/** What the `pregreet` hooks of a connection came to: the banner's wait, and a failure's refusal. */
export interface PregreetRun {
  /** The longest wait any hook asked for (0 when none did). */
  readonly delayMs: number;
  readonly trace: readonly TraceEntry[];
  /**
   * The first entry, in policy order, whose hook failed: its `onError` decides once the connection
   * exists (a delay is a test, so a failed one must not let the client past unjudged).
   */
  readonly failed: { readonly entry: PipelineEntry; readonly error: string } | null;
}

/** Runs every plugin's `pregreet` hook at once (they only wait), each under its deadline. */
export async function runPregreet(
  plugins: readonly ActivePlugin[],
  context: Omit<PregreetContext, "signal">,
): Promise<PregreetRun> {
  const runs = await Promise.all(
    plugins.map(async ({ entry, hooks }) => {
      const hook = hooks.pregreet;
      if (!hook) return null;
      const run = await runHook("pregreet", entry, (signal) => hook({ ...context, signal: signal() }), context.log);
      return { entry, run };
    }),
  );
  const ran = runs.filter((r): r is NonNullable<typeof r> => r !== null);
  const failure = ran.find(({ run }) => !run.ok);
  return {
    delayMs: Math.max(0, ...ran.map(({ run }) => (run.ok ? run.value : 0))),
    trace: ran.map(({ entry, run }) => traceEntry(entry, "pregreet", run, null, run.ok ? "continue" : "defer")),
    failed: failure && !failure.run.ok ? { entry: failure.entry, error: failure.run.error } : null,
  };
}

/** The decision a failed `pregreet` hook leads to, for the connection it ran for; null when none. */
export function pregreetRefusal(run: PregreetRun, connection: ConnectionContext): RefusingDecision | null {
  if (!run.failed) return null;
  const addScore = (points: number) => {
    connection.score += points;
  };
  const decision = failureDecision(
    run.failed.entry,
    run.failed.error,
    { connection, facts: connection.facts },
    addScore,
  );
  return decision.kind === "continue" || decision.kind === "accept" ? null : decision;
}

/**
 * Runs every plugin's `close` hook at once when a connection has ended, each under its deadline,
 * so a hook that hangs holds nothing of the connection's beyond it. Nothing is left to refuse: a
 * failure is logged and traced.
 */
export async function runClose(plugins: readonly ActivePlugin[], context: CloseContext): Promise<TraceEntry[]> {
  const runs = await Promise.all(
    plugins.map(async ({ entry, hooks }) => {
      const hook = hooks.close;
      if (!hook) return null;
      const run = await runHook("close", entry, () => hook(context), context.log);
      return traceEntry(entry, "close", run, null, run.ok ? "continue" : "defer");
    }),
  );
  return runs.filter((entry): entry is TraceEntry => entry !== null);
}

/**
 * What one hook run sees (HookContext). A class, so every run has the same shape: spreading the
 * services and the phase input into a new literal per run was 3 % of the gateway's CPU.
 */
class HookRun {
  readonly dns: Services["dns"];
  readonly state: Services["state"];
  readonly log: Services["log"];
  readonly clock: Services["clock"];
  readonly hostname: string;
  readonly policyDir: string;
  readonly connection: PhaseInput["connection"];
  readonly transaction: PhaseInput["transaction"];
  readonly recipient: PhaseInput["recipient"];
  readonly message: PhaseInput["message"];
  readonly helo: PhaseInput["helo"];
  readonly #signal: () => AbortSignal;

  constructor(
    services: Services,
    input: PhaseInput,
    readonly phase: Phase,
    readonly facts: Partial<Facts>,
    readonly addScore: (points: number, reason: string) => void,
    signal: () => AbortSignal,
  ) {
    this.dns = services.dns;
    this.state = services.state;
    this.log = services.log;
    this.clock = services.clock;
    this.hostname = services.hostname;
    this.policyDir = services.policyDir;
    this.connection = input.connection;
    this.transaction = input.transaction;
    this.recipient = input.recipient;
    this.message = input.message;
    this.helo = input.helo;
    this.#signal = signal;
  }

  get signal(): AbortSignal {
    return this.#signal();
  }
}

/**
 * Runs `phase` over the plugins in order. `facts` is the scope the hooks write to (connection facts
 * for connect/helo, transaction facts afterwards); `trace` receives one entry per hook run.
 */
export async function runPhase(
  phase: Phase,
  plugins: readonly ActivePlugin[],
  input: PhaseInput,
  services: Services,
  trace: TraceEntry[],
  skip?: ReadonlySet<string>,
): Promise<Decision> {
  const scoreHolder: { score: number } = input.transaction ?? input.connection;
  const facts: Partial<Facts> = input.transaction?.facts ?? input.connection.facts;
  const scope: TemplateScope = {
    connection: input.connection,
    facts,
    sender: input.transaction?.sender.address,
    recipient: input.recipient?.address,
  };
  for (const plugin of plugins) {
    const hook = plugin.hooks[phase] as ((ctx: HookContext<Phase>) => Promise<HookResult>) | undefined;
    if (!hook || skip?.has(plugin.entry.name)) continue;
    const { entry } = plugin;
    const by: DecidedBy = { source: "plugin", name: entry.name };
    const addScore = (points: number, reason: string) => {
      scoreHolder.score += points;
      services.log.debug({ plugin: entry.name, points, reason, score: scoreHolder.score }, "score");
    };
    const run = await runHook(
      phase,
      entry,
      (signal) => hook(new HookRun(services, input, phase, facts, addScore, signal) as unknown as HookContext<Phase>),
      services.log,
    );
    let decision: Decision;
    let verdictName: string | null = null;
    if (!run.ok) {
      decision = failureDecision(entry, run.error, scope, addScore);
    } else if (run.value === undefined) {
      decision = CONTINUE;
    } else if (run.value.kind === "verdict") {
      verdictName = run.value.name;
      const { action, defaultReply } = verdictAction(entry, run.value.name);
      decision = actionDecision(action, by, defaultReply, scope, addScore, run.value.name);
    } else {
      decision = run.value.kind === "continue" ? run.value : { ...run.value, by };
    }
    trace.push(traceEntry(entry, phase, run, verdictName, decision.kind));
    if (decision.kind !== "continue") return decision;
  }
  return CONTINUE;
}
