/**
 * A hook trace with each plugin's findings beside the step that made them: what `portcullis try
 * --json` prints for a simulated transaction and what the dashboard shows for a real one, so the
 * two read the same.
 */
import type { HookKind, TraceEntry } from "../contract/api.js";
import type { ActivePlugin } from "../engine/pipeline.js";

/** One hook run or rule match, with the findings of the hook's plugin (those it declares). */
export interface HookStep {
  readonly phase: HookKind;
  readonly kind: "hook" | "rule";
  readonly name: string;
  readonly verdict: string | null;
  readonly decision: string;
  readonly ms: number;
  readonly error?: string;
  readonly findings?: Readonly<Record<string, unknown>>;
}

export interface HookReport {
  readonly steps: readonly HookStep[];
  /** Findings no step's plugin declares (plugins without a `findings` declaration). */
  readonly otherFindings: Readonly<Record<string, unknown>>;
}

/** The finding keys each pipeline entry declares, by entry name. */
export type DeclaredFindings = ReadonlyMap<string, readonly string[]>;

export function declaredFindings(plugins: readonly ActivePlugin[]): DeclaredFindings {
  return new Map(plugins.map((plugin) => [plugin.entry.name, Object.keys(plugin.entry.definition.findings ?? {})]));
}

/** Groups a trace and its findings by who made them; a plugin's findings go with its first step that has them. */
export function hookReport(
  declared: DeclaredFindings,
  trace: readonly TraceEntry[],
  facts: Readonly<Record<string, unknown>>,
): HookReport {
  const shown = new Set<string>();
  const steps = trace.map((entry): HookStep => {
    const kind = entry.source === "rule" ? "rule" : "hook";
    const step: HookStep = {
      phase: entry.phase,
      kind,
      name: entry.plugin,
      verdict: entry.verdict,
      decision: entry.decision,
      ms: entry.ms,
      ...(entry.error ? { error: entry.error } : {}),
    };
    if (kind === "rule") return step;
    const roots = (declared.get(entry.plugin) ?? []).filter((root) => !shown.has(root) && root in facts);
    for (const root of roots) shown.add(root);
    return roots.length > 0 ? { ...step, findings: Object.fromEntries(roots.map((r) => [r, facts[r]])) } : step;
  });
  const otherFindings = Object.fromEntries(Object.entries(facts).filter(([key]) => !shown.has(key)));
  return { steps, otherFindings };
}
