/**
 * What `portcullis check` finds in a policy that is valid but probably wrong: rules that can never
 * act, an open relay, rules naming findings no plugin in the pipeline records, a plugin listed
 * twice. An open relay, a catch-all route without relay.postmaster, and a rule path or value that
 * no plugin's finding schema allows (`fcrdns.result: passs`) are errors (check exits 1); the rest
 * are warnings. Pure over a built runtime, plus a catalogue of the built-in plugins' findings to
 * tell "not in the pipeline" from "unknown".
 */
import { readFile } from "node:fs/promises";
import { LineCounter, type Node, parseDocument } from "yaml";
import { PHASES, type Phase, type PluginCatalogue, type PluginDefinition } from "../contract/api.js";
import type { Runtime } from "../engine/runtime.js";
import { parseCidr } from "../toolkit/netaddr.js";
import { formatProblem, suggestion } from "./load.js";
import {
  type CompiledRule,
  type FindingCatalogue,
  findingCatalogue,
  isSubjectRoot,
  resolvePath,
  SUBJECTS,
} from "./rules/compile.js";
import { comparisonProblem, offeredValues, valueProblem } from "./rules/findings.js";
import { type Condition, DECIDING_ACTIONS } from "./rules/schema.js";

export type Severity = "error" | "warning";

export interface CheckFinding {
  readonly severity: Severity;
  /** Key path in the policy (`rules.2.when`). */
  readonly path: readonly (string | number)[];
  readonly message: string;
}

const firstPhase = (rule: CompiledRule): Phase | undefined => PHASES.find((phase) => rule.phases.has(phase));

/** Findings declared by every plugin of a catalogue, whether or not the policy uses it. */
export async function findingsOf(plugins: PluginCatalogue): Promise<FindingCatalogue> {
  const definitions = await Promise.all(
    Object.keys(plugins)
      .sort()
      .map(async (name) => {
        // A plugin that fails to load is the loader's problem to report; here it declares nothing.
        const definition = await plugins[name]().catch(() => undefined);
        return definition ? [{ name, definition }] : [];
      }),
  );
  return catalogueOf(definitions.flat());
}

/**
 * Whether a rule tests a finding that no plugin of the pipeline declares (or a shorthand, or a subject
 * used wrongly). Only then can the findings of other plugins change what `staticChecks` says (which
 * plugin to add, what a name may have meant), so a caller may leave `known` empty otherwise.
 */
export function looksBeyondPipeline(runtime: Runtime): boolean {
  const pipeline = pipelineFindings(runtime);
  return runtime.rules.rules.some((rule) =>
    testsOf(rule.when).some((node) => !(node.path in SUBJECTS) && !pipeline.has(node.path.split(".")[0])),
  );
}

/** Runs every check over a built runtime; `known` holds findings of plugins that are not in the pipeline. */
export function staticChecks(runtime: Runtime, known: FindingCatalogue): CheckFinding[] {
  return [
    ...openRelay(runtime),
    ...duplicatePlugins(runtime),
    ...unreachableRules(runtime),
    ...findingNames(runtime, known),
    ...skippedPlugins(runtime),
    ...postmasterRoute(runtime),
  ];
}

/**
 * `<postmaster>` without a domain is our own postmaster (RFC 5321 §4.5.1), which must be accepted;
 * a catch-all route would relay it elsewhere, so without `relay.postmaster` it is refused instead.
 * A catch-all `mx` route is left out: it is the default of every policy without routes, and an MX
 * lookup of no domain could never have delivered <postmaster> anyway.
 */
function postmasterRoute(runtime: Runtime): CheckFinding[] {
  if (runtime.config.relay.postmaster !== undefined) return [];
  const { routes } = runtime.config;
  const onlyMx = (index: number) => [routes[index].to].flat().every((to) => to === "mx");
  return runtime.router.catchAllRoutes().flatMap((index) =>
    onlyMx(index)
      ? []
      : [
          {
            severity: "error" as const,
            path: ["routes", index],
            message:
              "this route takes every recipient, and relay.postmaster is not set: mail to <postmaster> (which RFC 5321 §4.5.1 requires us to accept) would be refused with 550 rather than relayed; set relay.postmaster to an address or a maildir: folder",
          },
        ],
  );
}

function openRelay(runtime: Runtime): CheckFinding[] {
  return runtime.config.relay.networks.flatMap((network, index) =>
    parseCidr(network)?.prefix === 0
      ? [
          {
            severity: "error" as const,
            path: ["relay", "networks", index],
            message: `${network} lets every client on the Internet relay to any domain (an open relay); list your own networks instead`,
          },
        ]
      : [],
  );
}

function duplicatePlugins(runtime: Runtime): CheckFinding[] {
  const first = new Map<string, number>();
  return runtime.policy.pipeline.flatMap((entry) => {
    const earlier = first.get(entry.name);
    if (earlier === undefined) {
      first.set(entry.name, entry.index);
      return [];
    }
    return [
      {
        severity: "warning" as const,
        path: ["pipeline", entry.index, "plugin"],
        message: `plugin ${entry.name} is already in the pipeline (entry ${earlier}); its findings overwrite the first one's — merge the two entries`,
      },
    ];
  });
}

function unreachableRules(runtime: Runtime): CheckFinding[] {
  const findings: CheckFinding[] = [];
  const rules = runtime.rules.rules;
  for (const rule of rules) {
    if (rule.phases.size === 0) {
      findings.push({
        severity: "warning",
        path: ["rules", rule.index],
        message: `rule ${rule.name} can never match: it names recipient (tested in the rcpt phase only) and something known only later (${rule.paths.join(", ")})`,
      });
    }
  }
  // An unconditional rule that decides acts at its first phase; nothing after it acts from then on.
  const blockers = rules.filter(
    (rule) => rule.unconditional && rule.mode === "enforce" && rule.actions.some((a) => DECIDING_ACTIONS.has(a.type)),
  );
  for (const blocker of blockers) {
    const from = firstPhase(blocker);
    if (!from) continue;
    for (const rule of rules.slice(blocker.index + 1)) {
      const start = firstPhase(rule);
      if (!start || PHASES.indexOf(start) < PHASES.indexOf(from)) continue;
      findings.push({
        severity: "warning",
        path: ["rules", rule.index],
        message: `rule ${rule.name} can never match: rule ${blocker.name} before it has no condition and decides from the ${from} phase on`,
      });
    }
  }
  return findings;
}

const SUBJECT_LIST = Object.keys(SUBJECTS).join(", ");

type TestNode = Extract<Condition, { kind: "test" }>;

function testsOf(condition: Condition): TestNode[] {
  switch (condition.kind) {
    case "always":
      return [];
    case "all":
    case "any":
      return condition.of.flatMap(testsOf);
    case "not":
      return testsOf(condition.of);
    case "test":
      return [condition];
  }
}

/** The findings declared by the plugins of the pipeline. */
const pipelineFindings = (runtime: Runtime): FindingCatalogue =>
  catalogueOf(runtime.plugins.map((p) => ({ name: p.entry.name, definition: p.entry.definition })));

/**
 * Every path a rule tests, and every value it compares with, against what the plugins declare:
 * a path or value no plugin can record is an error (the rule would silently never match), with
 * the nearest name when it looks like a typo.
 */
function findingNames(runtime: Runtime, known: FindingCatalogue): CheckFinding[] {
  const pipeline = pipelineFindings(runtime);
  const undeclaring = runtime.plugins.filter((p) => !p.entry.definition.findings).map((p) => p.entry.name);
  const declared: FindingCatalogue = new Map([...known, ...pipeline]);
  const roots = [...declared.keys()].sort();
  const findings: CheckFinding[] = [];
  for (const rule of runtime.rules.rules) {
    for (const node of testsOf(rule.when)) {
      const report = (severity: Severity, message: string) =>
        findings.push({
          severity,
          path: ["rules", rule.index, "when", ...node.at],
          message: `rule ${rule.name}: ${message}`,
        });
      if (node.path in SUBJECTS) continue;
      const { path } = resolvePath(node.path, declared);
      const written = path === node.path ? path : `${node.path} (${path})`;
      const root = path.split(".")[0];
      const info = declared.get(root);
      // A finding may share a subject's first word (the helo plugin's `helo.findings` beside `helo`).
      if (!info && isSubjectRoot(path)) {
        report(
          "error",
          `${written} is not something rules can test${suggestion(path, Object.keys(SUBJECTS))}; the core provides ${SUBJECT_LIST}`,
        );
        continue;
      }
      if (!info) {
        const hint = suggestion(root, [...roots, ...Object.keys(SUBJECTS)]);
        const names = `known findings: ${roots.join(", ") || "none"}; the core provides ${SUBJECT_LIST}`;
        // A plugin without a declaration may write anything, so the name may be right after all.
        if (undeclaring.length > 0) {
          report(
            "warning",
            `no plugin declares a finding "${root}"${hint}, though ${undeclaring.join(", ")} declare${undeclaring.length === 1 ? "s" : ""} no findings and may write it; ${names}`,
          );
        } else {
          report("error", `unknown finding "${root}"${hint}; ${names}`);
        }
        continue;
      }
      if (!pipeline.has(root)) {
        report(
          "warning",
          `${written} is a finding of plugin ${info.plugin}, which is not in the pipeline, so the rule never sees it; add "- plugin: ${info.plugin}"`,
        );
      }
      if (!info.paths) continue;
      const leaf = info.paths.find((p) => p.path === path);
      if (!leaf) {
        const paths = info.paths.map((p) => p.path);
        report(
          "error",
          `plugin ${info.plugin} records no "${path}"${suggestion(path, paths)}; its findings: ${paths.join(", ")}`,
        );
        continue;
      }
      const offered = offeredValues(leaf, info.paths) ?? [];
      const problems =
        node.test.kind === "equals"
          ? node.test.values.map((value) => {
              const problem = valueProblem(leaf, info.paths ?? [], value);
              return problem && typeof value === "string" ? `${problem}${suggestion(value, offered)}` : problem;
            })
          : node.test.kind === "compare"
            ? [comparisonProblem(leaf, info.paths)]
            : [];
      for (const problem of problems) {
        if (problem) report("error", `${problem}: the rule never matches on it`);
      }
    }
  }
  return findings;
}

function skippedPlugins(runtime: Runtime): CheckFinding[] {
  const names = new Set(runtime.policy.pipeline.map((entry) => entry.name));
  return runtime.rules.rules.flatMap((rule) =>
    rule.actions.flatMap((action) =>
      action.type === "skip"
        ? action.plugins
            .filter((plugin) => !names.has(plugin))
            .map((plugin) => ({
              severity: "warning" as const,
              path: ["rules", rule.index, "action"],
              message: `rule ${rule.name} skips ${plugin}, which is not in the pipeline (skip names entries as written in plugin:)`,
            }))
        : [],
    ),
  );
}

/** `file:line:col path: error: message` lines, located in the policy file. */
export async function formatFindings(file: string, findings: readonly CheckFinding[]): Promise<string[]> {
  // The file is read and parsed again only to locate findings: a clean policy skips it (tens of ms).
  if (findings.length === 0) return [];
  const source = await readFile(file, "utf8");
  const lineCounter = new LineCounter();
  const doc = parseDocument(source, { lineCounter });
  return findings.map((finding) => {
    // The deepest node of the path that exists (a rule without `when` is reported at the rule).
    let position = { line: 1, col: 1 };
    for (let length = finding.path.length; length > 0; length--) {
      const node = doc.getIn(finding.path.slice(0, length), true) as Node | undefined;
      if (node?.range) {
        position = lineCounter.linePos(node.range[0]);
        break;
      }
    }
    return formatProblem({
      file,
      ...position,
      path: finding.path.join("."),
      message: `${finding.severity}: ${finding.message}`,
    });
  });
}

/** The findings some plugins declare, when only names matter (no phases: nothing is set up). */
export function catalogueOf(
  definitions: ReadonlyArray<{ name: string; definition: PluginDefinition }>,
): FindingCatalogue {
  return findingCatalogue(definitions.map((d) => ({ ...d, phases: ["connect"] })));
}
