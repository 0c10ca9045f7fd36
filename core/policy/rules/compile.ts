/**
 * Compiles the rules of a policy into predicates over a `RuleView`, a plain snapshot of what is
 * known about a connection and transaction at one phase. Pure: no I/O, no context objects, so the
 * same compiled rules evaluate a live transaction, a dry run, or findings recorded earlier (replay).
 *
 * When a rule runs: from the first phase at which everything it names can be known. A subject
 * (client.ip, helo, sender…) is known from its phase; a finding from the first phase in which the
 * plugin that declares it (`PluginDefinition.findings`; a plugin without a declaration is taken to
 * write under its own name) has a hook; a finding no plugin declares only at the queue phase, when
 * every hook has run. A rule whose actions need a transaction (tag,
 * headers, route, quarantine) runs from MAIL at the earliest. Rules that name `recipient` run in the
 * rcpt phase only, once per recipient. So `not: { dkim: pass }` never fires before DKIM was checked.
 */
import { PHASES, type Phase, type PluginDefinition } from "../../contract/api.js";
import type { ActivePlugin } from "../../engine/pipeline.js";
import { compileList, type ListMatcher } from "../lists.js";
import { type FindingPath, findingPaths } from "./findings.js";
import type { Condition, Rule, RuleAction, RuleMode, Scalar, Test } from "./schema.js";

/** What rules can test: connection and transaction data plus the findings, at one phase. */
export interface RuleView {
  readonly client: { readonly ip: string; readonly name: string | null };
  readonly trusted: boolean;
  readonly role: "mx" | "submission";
  readonly helo: string | null;
  readonly tls: boolean;
  readonly authUser: string | null;
  readonly sender: ViewAddress | null;
  /** The recipient under test (rcpt phase only). */
  readonly recipient: ViewAddress | null;
  /** Recipients accepted so far. */
  readonly recipients: readonly string[];
  readonly score: number;
  readonly tags: readonly string[];
  /** Findings by plugin key; connection findings included. */
  readonly facts: object;
}

export interface ViewAddress {
  readonly address: string;
  readonly local: string;
  /** Lower-case ASCII; "" for the null sender. */
  readonly domain: string;
}

/** Paths that are not findings: what the core itself knows, with the phase from which it is known. */
export const SUBJECTS: Readonly<Record<string, { readonly phase: Phase; readonly get: (view: RuleView) => unknown }>> =
  {
    "client.ip": { phase: "connect", get: (v) => v.client.ip },
    "client.name": { phase: "connect", get: (v) => v.client.name },
    trusted: { phase: "connect", get: (v) => v.trusted },
    role: { phase: "connect", get: (v) => v.role },
    score: { phase: "connect", get: (v) => v.score },
    helo: { phase: "helo", get: (v) => v.helo },
    tls: { phase: "mail", get: (v) => v.tls },
    "auth.user": { phase: "mail", get: (v) => v.authUser },
    sender: { phase: "mail", get: (v) => v.sender?.address },
    "sender.local": { phase: "mail", get: (v) => v.sender?.local },
    "sender.domain": { phase: "mail", get: (v) => v.sender?.domain },
    tags: { phase: "mail", get: (v) => v.tags },
    recipient: { phase: "rcpt", get: (v) => v.recipient?.address },
    "recipient.local": { phase: "rcpt", get: (v) => v.recipient?.local },
    "recipient.domain": { phase: "rcpt", get: (v) => v.recipient?.domain },
    recipients: { phase: "data", get: (v) => v.recipients },
  };

/** Top-level names that belong to subjects; a finding cannot use them. */
const SUBJECT_ROOTS = new Set(Object.keys(SUBJECTS).map((path) => path.split(".")[0]));

/** What the plugins of a pipeline declare about one finding key. */
export interface FindingInfo {
  /** The pipeline entry (`plugin:` as written) that declares it. */
  readonly plugin: string;
  /** The first phase in which that plugin has a hook. */
  readonly phase: Phase;
  /** Every path under the key, from the plugin's schema; undefined when it declares none (any path goes). */
  readonly paths: readonly FindingPath[] | undefined;
}

export type FindingCatalogue = ReadonlyMap<string, FindingInfo>;

/** The phases in which an active plugin has hooks, for `findingCatalogue`. */
export function hookPhases(plugin: ActivePlugin): Phase[] {
  return PHASES.filter((phase) => plugin.hooks[phase] !== undefined);
}

/** The findings declared by plugins, keyed by their top-level name. The first declaring entry wins. */
export function findingCatalogue(
  plugins: ReadonlyArray<{
    readonly name: string;
    readonly definition: PluginDefinition;
    readonly phases: readonly Phase[];
  }>,
): FindingCatalogue {
  const catalogue = new Map<string, FindingInfo>();
  for (const plugin of plugins) {
    const phase = PHASES.find((p) => plugin.phases.includes(p));
    if (!phase) continue;
    // Without a declaration, the architecture's convention: a plugin writes its findings under its own name.
    const declared = Object.entries(plugin.definition.findings ?? { [plugin.definition.name]: undefined });
    for (const [key, schema] of declared) {
      if (catalogue.has(key)) continue;
      catalogue.set(key, { plugin: plugin.name, phase, paths: schema && findingPaths(key, schema) });
    }
  }
  return catalogue;
}

export type PathKind =
  | { readonly kind: "subject" }
  | { readonly kind: "finding"; readonly info: FindingInfo | undefined };

/**
 * The path a `when` key means. Besides `spf.result`, a camelCase word whose first part is a declared
 * finding names that finding's field: `dmarcPolicy` is `dmarc.policy` (the contract's example form).
 */
export function resolvePath(key: string, catalogue: FindingCatalogue): { path: string; kind: PathKind } {
  if (key in SUBJECTS) return { path: key, kind: { kind: "subject" } };
  const camel = /^([a-z][a-z0-9]*)([A-Z].*)$/.exec(key);
  const path =
    !key.includes(".") && !catalogue.has(key) && camel && catalogue.has(camel[1])
      ? `${camel[1]}.${camel[2][0].toLowerCase()}${camel[2].slice(1)}`
      : key;
  return { path, kind: { kind: "finding", info: catalogue.get(path.split(".")[0]) } };
}

/** The camelCase shorthand `resolvePath` reads as this finding path (`dmarc.policy` → `dmarcPolicy`), if any. */
export function shorthandOf(path: string): string | undefined {
  const [root, field, ...rest] = path.split(".");
  return field && rest.length === 0 && /^[a-z][a-z0-9]*$/.test(root)
    ? `${root}${field[0].toUpperCase()}${field.slice(1)}`
    : undefined;
}

/** Whether a path names a subject root used wrongly (`client.port`, `sender.x`), which no finding may shadow. */
export function isSubjectRoot(path: string): boolean {
  return SUBJECT_ROOTS.has(path.split(".")[0]);
}

const laterOf = (a: Phase, b: Phase): Phase => (PHASES.indexOf(a) >= PHASES.indexOf(b) ? a : b);

/** Actions that change the transaction need one: they run from MAIL at the earliest. */
const ACTION_PHASE: Readonly<Record<RuleAction["type"], Phase>> = {
  accept: "connect",
  reject: "connect",
  defer: "connect",
  disconnect: "connect",
  score: "connect",
  skip: "connect",
  log: "connect",
  quarantine: "mail",
  addHeader: "mail",
  removeHeader: "mail",
  tag: "mail",
  route: "mail",
};

export interface CompiledRule {
  readonly name: string;
  readonly index: number;
  readonly mode: RuleMode;
  readonly actions: readonly RuleAction[];
  readonly unconditional: boolean;
  /** The phases at which the rule is evaluated (empty: it can never run). */
  readonly phases: ReadonlySet<Phase>;
  /** Evaluated once per recipient in the rcpt phase (it names `recipient`, or refuses there). */
  readonly perRecipient: boolean;
  /** Every path the condition names, resolved (`dmarcPolicy` → `dmarc.policy`). */
  readonly paths: readonly string[];
  /** The condition as written, for `check` to test its paths and values against the findings' schemas. */
  readonly when: Condition;
  readonly matches: (view: RuleView) => boolean;
}

export interface RuleSet {
  readonly rules: readonly CompiledRule[];
  /** The rules evaluated at `phase`, in policy order. */
  readonly byPhase: Readonly<Record<Phase, readonly CompiledRule[]>>;
}

function lookup(view: RuleView, path: string): unknown {
  const subject = SUBJECTS[path];
  if (subject) return subject.get(view);
  let value: unknown = view.facts;
  for (const key of path.split(".")) {
    if (value === null || typeof value !== "object") return undefined;
    // Transaction facts inherit connection facts through the prototype chain: a plain index finds both.
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

/** A finding recorded as `{ result, … }` compares by its result: `spf: fail` is `spf.result: fail`. */
function comparable(value: unknown): unknown {
  if (value !== null && typeof value === "object" && !Array.isArray(value) && "result" in value) {
    return (value as { result: unknown }).result;
  }
  return value;
}

function equal(value: unknown, expected: Scalar): boolean {
  if (typeof value === "number" || typeof value === "boolean") return value === expected;
  if (typeof value === "string") return typeof expected === "string" && value.toLowerCase() === expected.toLowerCase();
  return false;
}

/** A test of one value; list values match when any element does. */
function compileTest(test: Test): (value: unknown) => boolean {
  switch (test.kind) {
    case "exists":
      return (value) => (value !== undefined && value !== null) === test.present;
    case "equals":
      return anyElement((value) => test.values.some((expected) => equal(comparable(value), expected)));
    case "compare": {
      const { op, value: limit } = test;
      const holds = {
        gt: (n: number) => n > limit,
        gte: (n: number) => n >= limit,
        lt: (n: number) => n < limit,
        lte: (n: number) => n <= limit,
      }[op];
      return anyElement((value) => {
        const n = comparable(value);
        return typeof n === "number" && holds(n);
      });
    }
    case "list": {
      const matcher: ListMatcher = compileList(test.list, test.items);
      return anyElement((value) => typeof value === "string" && matcher(value));
    }
  }
}

function anyElement(test: (value: unknown) => boolean): (value: unknown) => boolean {
  return (value) => (Array.isArray(value) ? value.some(test) : test(value));
}

function compileCondition(
  condition: Condition,
  resolve: (key: string) => string,
  paths: string[],
): (view: RuleView) => boolean {
  switch (condition.kind) {
    case "always":
      return () => true;
    case "all": {
      const parts = condition.of.map((c) => compileCondition(c, resolve, paths));
      return (view) => parts.every((part) => part(view));
    }
    case "any": {
      const parts = condition.of.map((c) => compileCondition(c, resolve, paths));
      return (view) => parts.some((part) => part(view));
    }
    case "not": {
      const inner = compileCondition(condition.of, resolve, paths);
      return (view) => !inner(view);
    }
    case "test": {
      const path = resolve(condition.path);
      paths.push(path);
      const test = compileTest(condition.test);
      return (view) => test(lookup(view, path));
    }
  }
}

/** The phase from which a resolved path is known. */
export function pathPhase(path: string, catalogue: FindingCatalogue): Phase {
  return SUBJECTS[path]?.phase ?? catalogue.get(path.split(".")[0])?.phase ?? "queue";
}

export function compileRule(rule: Rule, index: number, catalogue: FindingCatalogue): CompiledRule {
  const paths: string[] = [];
  const matches = compileCondition(rule.when, (key) => resolvePath(key, catalogue).path, paths);
  let first: Phase = "connect";
  for (const path of paths) first = laterOf(first, pathPhase(path, catalogue));
  for (const action of rule.actions) first = laterOf(first, ACTION_PHASE[action.type]);
  const namesRecipient = paths.some((path) => path === "recipient" || path.startsWith("recipient."));
  const phases = namesRecipient
    ? PHASES.filter((phase) => phase === "rcpt" && PHASES.indexOf(first) <= PHASES.indexOf("rcpt"))
    : PHASES.filter((phase) => PHASES.indexOf(phase) >= PHASES.indexOf(first));
  const refuses = rule.actions.some((a) => a.type === "reject" || a.type === "defer" || a.type === "disconnect");
  return {
    name: rule.name,
    index,
    mode: rule.mode,
    actions: rule.actions,
    unconditional: rule.when.kind === "always",
    phases: new Set(phases),
    perRecipient: namesRecipient || refuses,
    paths,
    when: rule.when,
    matches,
  };
}

export function compileRules(rules: readonly Rule[], catalogue: FindingCatalogue): RuleSet {
  const compiled = rules.map((rule, index) => compileRule(rule, index, catalogue));
  const byPhase = Object.fromEntries(
    PHASES.map((phase) => [phase, compiled.filter((rule) => rule.phases.has(phase))]),
  ) as Record<Phase, CompiledRule[]>;
  return { rules: compiled, byPhase };
}

/** "reject", "score 5, tag partner", for logs, traces and `try`. */
export function describeActions(actions: readonly RuleAction[]): string {
  return actions.map(describeAction).join(", ");
}

function describeAction(action: RuleAction): string {
  switch (action.type) {
    case "accept":
      return "accept";
    case "reject":
    case "defer":
    case "disconnect":
      return action.reply ? `${action.type} "${action.reply}"` : action.type;
    case "quarantine":
    case "route":
      return `${action.type} ${action.to}`;
    case "score":
      return `score ${action.points >= 0 ? "+" : ""}${action.points}`;
    case "addHeader":
      return `addHeader "${action.field}"`;
    case "removeHeader":
      return `removeHeader ${action.name}`;
    case "tag":
      return `tag ${action.tag}`;
    case "skip":
      return `skip ${action.plugins.join(",")}`;
    case "log":
      return action.message ? `log "${action.message}"` : "log";
  }
}
