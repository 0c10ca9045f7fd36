/**
 * What a plugin's finding schema (`PluginDefinition.findings`) says about rule paths: which paths
 * exist under a finding key, what values a path can hold, and in words for `check`, the README
 * tables and the JSON Schema of `when:`. Read from the zod schema itself, so the declaration a
 * plugin writes once is what every consumer sees.
 */
import type { z } from "zod";

type Schema = z.core.$ZodType;

interface Def {
  readonly type: string;
  readonly innerType?: Schema;
  readonly in?: Schema;
  readonly getter?: () => Schema;
  readonly shape?: Record<string, Schema>;
  readonly element?: Schema;
  readonly options?: readonly Schema[];
  readonly entries?: Record<string, string | number>;
  readonly values?: readonly unknown[];
}

const defOf = (schema: Schema): Def => (schema as unknown as { _zod: { def: Def } })._zod.def;

const descriptionOf = (schema: Schema): string | undefined => (schema as { description?: string }).description;

/** The schema behind wrappers that do not change which values a rule may compare with (null aside). */
function unwrap(schema: Schema): { schema: Schema; nullable: boolean; description: string | undefined } {
  let current = schema;
  let nullable = false;
  let description = descriptionOf(schema);
  for (;;) {
    const def = defOf(current);
    if (def.type === "nullable") nullable = true;
    const inner = def.type === "lazy" ? def.getter?.() : def.type === "pipe" ? def.in : def.innerType;
    if (!inner || !["nullable", "optional", "readonly", "default", "lazy", "pipe", "nonoptional"].includes(def.type)) {
      return { schema: current, nullable, description };
    }
    current = inner;
    description ??= descriptionOf(current);
  }
}

/** One testable path of a finding, with what it holds. */
export interface FindingPath {
  /** The full rule path, `fcrdns.result`. */
  readonly path: string;
  /** The leaf schema (arrays unwrapped to their elements: a rule tests any element). */
  readonly schema: Schema;
  readonly description: string | undefined;
  /** The type in words: `pass | fail`, `string`, `list of string`, `number or null`. */
  readonly type: string;
}

/**
 * Every path of a finding, parents before their fields. Elements of a list are tested through the
 * list's own path (a rule on `dnsbl.codes` matches when any code does), so their fields are paths
 * of the list (`dnsbl.findings.zone`).
 */
export function findingPaths(key: string, schema: Schema): FindingPath[] {
  const paths: FindingPath[] = [];
  const visit = (path: string, node: Schema, inherited: string | undefined) => {
    const { schema: bare, nullable, description } = unwrap(node);
    const def = defOf(bare);
    if (def.type === "array" && def.element) {
      const element = unwrap(def.element);
      paths.push({
        path,
        schema: element.schema,
        description: description ?? inherited,
        type: `list of ${typeWords(element.schema)}${nullable ? ", or null" : ""}`,
      });
      if (defOf(element.schema).type === "object") visitFields(path, element.schema);
      return;
    }
    paths.push({
      path,
      schema: bare,
      description: description ?? inherited,
      type: `${typeWords(bare)}${nullable ? " or null" : ""}`,
    });
    if (def.type === "object") visitFields(path, bare);
  };
  const visitFields = (path: string, object: Schema) => {
    for (const [field, child] of Object.entries(defOf(object).shape ?? {})) visit(`${path}.${field}`, child, undefined);
  };
  visit(key, schema, undefined);
  return paths;
}

/** The values a leaf may hold, when they are a closed set of scalars. */
function scalarValues(schema: Schema): unknown[] | undefined {
  const def = defOf(schema);
  if (def.type === "enum") return Object.values(def.entries ?? {});
  if (def.type === "literal") return [...(def.values ?? [])];
  if (def.type === "boolean") return [true, false];
  if (def.type === "union") {
    const all = (def.options ?? []).map((option) => scalarValues(unwrap(option).schema));
    return all.every((values) => values !== undefined) ? all.flat() : undefined;
  }
  return undefined;
}

function typeWords(schema: Schema): string {
  const values = scalarValues(schema);
  if (values) return values.map(String).join(" | ");
  const def = defOf(schema);
  if (def.type === "object") return "object";
  if (def.type === "int") return "number";
  return def.type;
}

/** A finding recorded as `{ result, … }` compares by its result: `spf: fail` means `spf.result: fail`. */
function compared(leaf: FindingPath, paths: readonly FindingPath[]): FindingPath {
  return defOf(leaf.schema).type === "object" ? (paths.find((p) => p.path === `${leaf.path}.result`) ?? leaf) : leaf;
}

/**
 * Why a rule can never see `value` at this path (`passs` where the schema allows pass | fail);
 * undefined when it can. Strings compare case-insensitively, as rules do.
 */
export function valueProblem(leaf: FindingPath, paths: readonly FindingPath[], value: unknown): string | undefined {
  const target = compared(leaf, paths);
  const values = scalarValues(target.schema);
  const type = defOf(target.schema).type;
  if (values) {
    const same = (v: unknown) =>
      typeof v === "string" && typeof value === "string" ? v.toLowerCase() === value.toLowerCase() : v === value;
    return values.some(same) ? undefined : `${target.path} is ${target.type}, never ${JSON.stringify(value)}`;
  }
  if (
    (type === "string" && typeof value !== "string") ||
    ((type === "number" || type === "int") && typeof value !== "number")
  ) {
    return `${target.path} is a ${type === "int" ? "number" : type}, never ${JSON.stringify(value)}`;
  }
  return undefined;
}

/** Why a numeric comparison (`gte`) can never hold at this path; undefined when it can. */
export function comparisonProblem(leaf: FindingPath, paths: readonly FindingPath[]): string | undefined {
  const target = compared(leaf, paths);
  const type = defOf(target.schema).type;
  return type === "number" || type === "int" || type === "unknown" || type === "any"
    ? undefined
    : `${target.path} is ${target.type}, not a number, so gt, gte, lt and lte never hold`;
}

/** The values an editor may offer for a path, when they are a closed set of strings. */
export function offeredValues(leaf: FindingPath, paths: readonly FindingPath[]): string[] | undefined {
  const values = scalarValues(compared(leaf, paths).schema);
  return values?.every((v) => typeof v === "string") ? (values as string[]) : undefined;
}

/**
 * The JSON Schema of the values a rule may compare with at this path, for editors: the closed set
 * (`enum`), or the scalar type; undefined when the path holds something rules test otherwise.
 */
export function valueJsonSchema(leaf: FindingPath, paths: readonly FindingPath[]): Record<string, unknown> | undefined {
  const target = compared(leaf, paths);
  const values = scalarValues(target.schema);
  if (values) return { enum: values };
  const type = defOf(target.schema).type;
  if (type === "string" || type === "number" || type === "boolean") return { type };
  if (type === "int") return { type: "number" };
  return undefined;
}
