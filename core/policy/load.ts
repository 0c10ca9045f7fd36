/**
 * Reads a policy file into a validated `LoadedPolicy`, or fails with every problem it can find,
 * each pointing at the line and column of the offending YAML node. Nothing is started here: the
 * result is a value, so a reload can validate a new policy fully before anything switches to it.
 */
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { dirname, isAbsolute, resolve } from "node:path";
import { type Document, isMap, isPair, isScalar, isSeq, LineCounter, type Node, parseDocument } from "yaml";
import { z } from "zod";
import type { Action } from "../contract/actions.js";
import type { PluginCatalogue, PluginDefinition, VerdictDefault } from "../contract/api.js";
import { type ListItem, resolveListFiles } from "./lists.js";
import { importPluginFile, importPluginPackage, type PluginModule } from "./plugin-modules.js";
import { resolveRules } from "./rules/resolve.js";
import { CORE_ENTRY_KEYS, type PolicyConfig, PolicySchema, ServerHostname } from "./schema.js";

export interface Problem {
  readonly file: string;
  /** 1-based. */
  readonly line: number;
  /** 1-based. */
  readonly col: number;
  /** Dotted key path, list indices as numbers (`pipeline.0.plugin`); "" for the file as a whole. */
  readonly path: string;
  readonly message: string;
}

export function formatProblem(problem: Problem): string {
  const where = `${problem.file}:${problem.line}:${problem.col}`;
  return problem.path === "" ? `${where} ${problem.message}` : `${where} ${problem.path}: ${problem.message}`;
}

/** An invalid policy. `message` lists every problem, one per line, as `file:line:col key.path: message`. */
export class PolicyError extends Error {
  readonly code = "PORTCULLIS_ERR_POLICY";
  readonly problems: Problem[];

  constructor(problems: Problem[]) {
    super(problems.map(formatProblem).join("\n"));
    this.name = "PolicyError";
    this.problems = problems;
  }
}

export interface PipelineEntry {
  /** As written in `plugin:`. */
  readonly name: string;
  readonly definition: PluginDefinition;
  /** Parsed by the plugin's options schema. */
  readonly options: unknown;
  readonly on: Readonly<Record<string, Action>>;
  /** The entry's timeout, else hooks.timeout. */
  readonly timeoutMs: number;
  /** The entry's onError, else hooks.onError. */
  readonly onError: Action;
  readonly index: number;
  /** The plugin's file, for a plugin named by path (a reload watches it). */
  readonly file?: string;
  /** The URL its module was imported from, for a plugin from a file or a package; a changed file gets a new one. */
  readonly module?: string;
}

export interface LoadedPolicy {
  /** Absolute path of the policy file. */
  readonly file: string;
  /** Its folder, which relative paths in the policy are resolved from. */
  readonly dir: string;
  /** Relative paths (tls, spool, maildir routes, transaction log) are already absolute here. */
  readonly config: PolicyConfig;
  readonly pipeline: readonly PipelineEntry[];
  /** The plugins `plugin:` names could come from; a reload or a shadow policy loads with the same. */
  readonly catalogue: PluginCatalogue;
  /** sha256 of the policy text this was loaded from: tells whether the file on disk is still what runs. */
  readonly hash: string;
}

/**
 * Reads and validates a policy file; throws PolicyError listing every problem. `catalogue` holds the
 * plugins a policy may name without a path (the application hands in the built-in ones).
 */
export async function loadPolicy(file: string, catalogue: PluginCatalogue): Promise<LoadedPolicy> {
  let source: string;
  try {
    source = await readFile(file, "utf8");
  } catch (error) {
    throw new PolicyError([
      { file, line: 1, col: 1, path: "", message: `cannot read the policy file: ${errorText(error)}` },
    ]);
  }
  return parsePolicy(source, file, catalogue);
}

/**
 * A problem found after loading (a plugin's setup failing), at the key `at: "key"` or the value of
 * `path` in the policy file, which is read again to locate it (line 1 when it cannot be read).
 */
export async function problemAt(
  file: string,
  path: readonly (string | number)[],
  message: string,
  at: "node" | "key" = "node",
): Promise<Problem> {
  let position = { line: 1, col: 1 };
  const source = await readFile(file, "utf8").catch(() => undefined);
  if (source !== undefined) {
    const lineCounter = new LineCounter();
    const doc = parseDocument(source, { lineCounter, prettyErrors: false });
    const node = at === "key" ? keyNodeAt(doc, path) : nodeAt(doc, path);
    if (node?.range) position = lineCounter.linePos(node.range[0]);
  }
  return { file, ...position, path: path.join("."), message };
}

/** Validates policy text; `file` names it in messages and anchors its relative paths. */
export async function parsePolicy(source: string, file: string, catalogue: PluginCatalogue): Promise<LoadedPolicy> {
  const absolute = resolve(file);
  const dir = dirname(absolute);
  const lineCounter = new LineCounter();
  const doc = parseDocument(source, { lineCounter, prettyErrors: false });
  const locate = (offset: number) => lineCounter.linePos(offset);

  if (doc.errors.length > 0) {
    // Past a syntax error the tree is a guess, so schema problems would only add noise.
    throw new PolicyError(
      doc.errors.map((error) => ({
        file,
        ...locate(error.pos[0]),
        path: keyPathAtOffset(doc, error.pos[0]).join("."),
        message: yamlErrorMessage(error.code, error.message),
      })),
    );
  }

  let raw: unknown;
  try {
    raw = doc.toJS();
  } catch (error) {
    // Unresolved aliases and alias bombs only show up when the tree is built.
    throw new PolicyError([{ file, line: 1, col: 1, path: "", message: `YAML: ${errorText(error)}` }]);
  }

  const problems: Problem[] = [];
  const report = (path: readonly PathKey[], message: string, at: "node" | "key" = "node") => {
    const node = at === "key" ? keyNodeAt(doc, path) : nodeAt(doc, path);
    const position = node?.range ? locate(node.range[0]) : { line: 1, col: 1 };
    problems.push({ file, ...position, path: path.join("."), message });
  };

  // jitless: zod would compile a fast path for each object schema on its first parse, which costs
  // twice what it saves on a policy parsed once per load (~20 ms of `portcullis check`).
  const parsed = PolicySchema.safeParse(raw, { reportInput: true, jitless: true });
  if (!parsed.success) reportIssues(parsed.error.issues, [], PolicySchema, doc, report, "");

  // Entries are checked from the raw tree so that their problems are listed even when another
  // part of the policy is invalid.
  const rawPipeline = isRecord(raw) && Array.isArray(raw.pipeline) ? raw.pipeline : [];
  const entries = await Promise.all(
    rawPipeline.map((entry, index) =>
      compileEntry(entry, index, parsed.success ? parsed.data : undefined, { dir, catalogue }, doc, report),
    ),
  );
  // List files named by rules are read now, so their problems are listed with the others (core/rules).
  const rules = parsed.success ? await resolveRules(raw, parsed.data.rules, dir, report) : [];
  const recipients = parsed.success ? await relayRecipients(raw, parsed.data, dir, report) : undefined;

  if (problems.length > 0 || !parsed.success) {
    problems.sort((a, b) => a.line - b.line || a.col - b.col);
    throw new PolicyError(problems);
  }
  return {
    file: absolute,
    dir,
    config: withRelayRecipients({ ...resolvePaths(parsed.data, dir), rules }, recipients),
    pipeline: entries.filter((entry): entry is PipelineEntry => entry !== undefined),
    catalogue,
    hash: policyHash(source),
  };
}

/** The hash `LoadedPolicy.hash` holds for a policy text. */
export function policyHash(source: string | Buffer): string {
  return createHash("sha256").update(source).digest("hex");
}

/** The JSON Schema of the policy file as written (durations and sizes as strings), for editors. */
export function policyJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(PolicySchema, {
    io: "input",
    override: (ctx) => {
      // The default is the host name of whoever generates the schema, not of the gateway.
      if (ctx.zodSchema === ServerHostname) delete ctx.jsonSchema.default;
    },
  }) as Record<string, unknown>;
}

type PathKey = string | number;
type Report = (path: readonly PathKey[], message: string, at?: "node" | "key") => void;

async function compileEntry(
  raw: unknown,
  index: number,
  config: PolicyConfig | undefined,
  plugins: { readonly dir: string; readonly catalogue: PluginCatalogue },
  doc: Document,
  report: Report,
): Promise<PipelineEntry | undefined> {
  // The core schema reports a malformed entry or a missing `plugin:`.
  if (!isRecord(raw) || typeof raw.plugin !== "string" || raw.plugin === "") return undefined;
  const name = raw.plugin;
  const at: PathKey[] = ["pipeline", index];
  const resolved = await resolvePlugin(name, plugins, (message) => report([...at, "plugin"], message));
  if (!resolved) return undefined;
  const { definition } = resolved;

  const pluginOptions = Object.fromEntries(
    Object.entries(raw).filter(([key]) => !(CORE_ENTRY_KEYS as readonly string[]).includes(key)),
  );
  const options = await definition.options.safeParseAsync(pluginOptions, { reportInput: true });
  if (!options.success) {
    reportIssues(options.error.issues, at, definition.options, doc, report, `plugin ${name}: `, CORE_ENTRY_KEYS);
  }

  const verdicts = Object.keys(definition.verdicts ?? {});
  if (isRecord(raw.on)) {
    for (const key of Object.keys(raw.on)) {
      if (verdicts.includes(key)) continue;
      const message =
        verdicts.length === 0
          ? `plugin ${name} declares no verdicts, so it takes no on: map`
          : `plugin ${name} has no verdict "${key}"${suggestion(key, verdicts)}; its verdicts are: ${verdicts.join(", ")}`;
      report([...at, "on", key], message, "key");
    }
  }

  // Any problem reported above fails the whole load, so only a fully valid entry matters here.
  const entry = config?.pipeline[index];
  if (!options.success || !config || !entry) return undefined;
  return {
    name,
    definition,
    options: options.data,
    on: entry.on ?? {},
    timeoutMs: entry.timeout ?? config.hooks.timeout,
    onError: entry.onError ?? config.hooks.onError,
    index,
    ...(resolved.file ? { file: resolved.file } : {}),
    ...(resolved.module ? { module: resolved.module } : {}),
  };
}

function isPluginPath(name: string): boolean {
  return name.startsWith("./") || name.startsWith("../") || isAbsolute(name);
}

interface ResolvedPlugin {
  readonly definition: PluginDefinition;
  readonly file?: string;
  readonly module?: string;
}

/**
 * A `plugin:` name is a path (`./mine.ts`, `/abs/mine.js`), else a built-in plugin (built-ins win),
 * else an npm package found from the policy's folder (`@acme/portcullis-clamav`).
 */
async function resolvePlugin(
  name: string,
  { dir, catalogue }: { readonly dir: string; readonly catalogue: PluginCatalogue },
  fail: (message: string) => void,
): Promise<ResolvedPlugin | undefined> {
  if (isPluginPath(name)) {
    const path = resolve(dir, name);
    const exists = await stat(path).then(
      (info) => info.isFile(),
      () => false,
    );
    if (!exists) {
      fail(`plugin file ${path} does not exist (paths are relative to the policy file's folder)`);
      return undefined;
    }
    const plugin = await importPlugin(() => importPluginFile(path), path, fail);
    return plugin && { ...plugin, file: path };
  }

  if (Object.hasOwn(catalogue, name)) {
    try {
      const definition = await catalogue[name]();
      const problem = definitionProblem(definition);
      if (problem) throw new Error(`its default export ${problem}`);
      return { definition };
    } catch (error) {
      fail(`cannot load built-in plugin "${name}": ${errorText(error)}`);
      return undefined;
    }
  }

  return importPlugin(
    () => importPluginPackage(name, dir),
    `package "${name}"`,
    fail,
    (error) => {
      // Only the package itself missing means the name is unknown; a package that fails to find one of
      // its own imports is a broken package, reported as such.
      if (!(error instanceof Error && error.message.includes(`Cannot find package '${name}'`))) return undefined;
      const names = Object.keys(catalogue).sort();
      const known = names.length === 0 ? "there are no built-in plugins" : `built-in plugins: ${names.join(", ")}`;
      return `unknown plugin "${name}"${suggestion(name, names)}: neither a built-in plugin nor an npm package installed in a node_modules folder of ${dir} or above; ${known}; a plugin file is named by a path such as "./plugins/mine.ts"`;
    },
  );
}

/** Imports a plugin module and checks its default export; `what` names it in messages. */
async function importPlugin(
  load: () => Promise<PluginModule>,
  what: string,
  fail: (message: string) => void,
  explain: (error: unknown) => string | undefined = () => undefined,
): Promise<ResolvedPlugin | undefined> {
  let module: PluginModule;
  try {
    module = await load();
  } catch (error) {
    // One line per problem: the TypeScript compiler's "Transform failed with 1 error:" spans two.
    fail(explain(error) ?? `cannot load plugin ${what}: ${errorText(error).replace(/\s*\n\s*/g, " ")}`);
    return undefined;
  }
  const definition = module.exports.default;
  const problem = definitionProblem(definition);
  if (problem) {
    fail(
      `${what} is not a plugin: its default export ${problem}; write export default definePlugin({ name, options, setup })`,
    );
    return undefined;
  }
  return { definition: definition as PluginDefinition, module: module.url };
}

const VERDICT_ACTIONS: readonly VerdictDefault["action"][] = ["ignore", "accept", "reject", "defer", "disconnect"];

/** What is wrong with a would-be PluginDefinition; undefined when its shape is right. */
function definitionProblem(value: unknown): string | undefined {
  if (!isRecord(value)) return value === undefined ? "is missing" : "is not an object";
  if (typeof value.name !== "string" || value.name === "") return "has no name";
  const options = value.options as { _zod?: unknown; safeParseAsync?: unknown } | undefined;
  if (!options || options._zod === undefined || typeof options.safeParseAsync !== "function") {
    return "has no zod schema as options";
  }
  if (typeof value.setup !== "function") return "has no setup function";
  if (value.verdicts !== undefined) {
    if (!isRecord(value.verdicts)) return "has verdicts that are not an object";
    for (const [verdict, fallback] of Object.entries(value.verdicts)) {
      if (!isRecord(fallback) || !VERDICT_ACTIONS.includes(fallback.action as VerdictDefault["action"])) {
        return `declares verdict "${verdict}" without a valid action (${VERDICT_ACTIONS.join(", ")})`;
      }
    }
  }
  return undefined;
}

/** Turns zod issues into problems located in the YAML tree. */
function reportIssues(
  issues: readonly z.core.$ZodIssue[],
  base: readonly PathKey[],
  schema: z.core.$ZodType,
  doc: Document,
  report: Report,
  prefix: string,
  extraKeys: readonly string[] = [],
): void {
  for (const issue of issues) {
    const path = [...base, ...(issue.path as PathKey[])];
    if (issue.code === "unrecognized_keys") {
      const known = [...(objectKeysAt(schema, issue.path as PathKey[]) ?? []), ...extraKeys];
      for (const key of issue.keys) {
        const hint = suggestion(key, known) || (known.length > 0 ? `; valid keys here: ${known.join(", ")}` : "");
        report([...path, key], `${prefix}unknown key "${key}"${hint}`, "key");
      }
      continue;
    }
    const branch = issue.code === "invalid_union" ? onlyBranchOfItsKind(issue.errors) : undefined;
    if (branch) {
      const within = branch.map((inner) => ({ ...inner, path: [...issue.path, ...inner.path] }));
      reportIssues(within, base, schema, doc, report, prefix, extraKeys);
      continue;
    }
    report(path, prefix + issueMessage(issue, path, doc));
  }
}

/**
 * The one branch of a failed union that took the value's kind (the mapping of `{ sentinel: … }`
 * against `"memory" | { … }`), whose own problems say more, and where, than "expected one of".
 * Undefined when several or none did.
 */
function onlyBranchOfItsKind(
  branches: readonly (readonly z.core.$ZodIssue[])[],
): readonly z.core.$ZodIssue[] | undefined {
  const rejectsKind = (issues: readonly z.core.$ZodIssue[]) =>
    issues.length === 1 &&
    issues[0].path.length === 0 &&
    (issues[0].code === "invalid_type" || issues[0].code === "invalid_value");
  const taken = branches.filter((issues) => !rejectsKind(issues));
  return taken.length === 1 ? taken[0] : undefined;
}

function issueMessage(issue: z.core.$ZodIssue, path: readonly PathKey[], doc: Document): string {
  const missing = issue.input === undefined && path.length > 0 && !doc.hasIn(path);
  if (path.length === 0 && issue.code === "invalid_type") {
    return "a policy is a mapping of keys; start with `version: 1`";
  }
  if (issue.code === "invalid_type") {
    return missing
      ? `missing required key "${String(path[path.length - 1])}" (expected ${issue.expected})`
      : `expected ${issue.expected}, got ${describeValue(issue.input)}`;
  }
  if (missing) return `missing required key "${String(path[path.length - 1])}": ${issue.message}`;
  if (issue.code === "too_small" || issue.code === "too_big") return boundMessage(issue);
  return issue.message;
}

function boundMessage(issue: z.core.$ZodIssueTooSmall | z.core.$ZodIssueTooBig): string {
  const small = issue.code === "too_small";
  const limit = Number(small ? issue.minimum : issue.maximum);
  const inclusive = issue.inclusive !== false;
  if (issue.origin === "array") {
    return small ? `needs at least ${limit} item${limit === 1 ? "" : "s"}` : `takes at most ${limit} items`;
  }
  if (issue.origin === "string") {
    if (small && limit === 1) return "must not be empty";
    return small ? `needs at least ${limit} characters` : `takes at most ${limit} characters`;
  }
  const bound = small
    ? inclusive
      ? `at least ${limit}`
      : `greater than ${limit}`
    : inclusive
      ? `at most ${limit}`
      : `less than ${limit}`;
  return `must be ${bound}, got ${describeValue(issue.input)}`;
}

function describeValue(value: unknown): string {
  if (value === null) return "an empty value";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") return `the string ${JSON.stringify(value)}`;
  return `${typeof value} ${String(value)}`;
}

/** The keys an object schema allows at `path`, looking through defaults, optionals and transforms. */
function objectKeysAt(schema: z.core.$ZodType, path: readonly PathKey[]): string[] | undefined {
  let current = onlyMapping(unwrap(schema));
  for (const key of path) {
    current = onlyMapping(current);
    const def = current._zod.def as unknown as Record<string, unknown>;
    if (def.type === "object") {
      const next = (def.shape as Record<string, z.core.$ZodType>)[String(key)];
      if (!next) return undefined;
      current = unwrap(next);
    } else if (def.type === "array") {
      current = unwrap(def.element as z.core.$ZodType);
    } else if (def.type === "record") {
      current = unwrap(def.valueType as z.core.$ZodType);
    } else {
      return undefined;
    }
  }
  const def = onlyMapping(current)._zod.def as unknown as Record<string, unknown>;
  return def.type === "object" ? Object.keys(def.shape as object) : undefined;
}

/** A union with one mapping among its options (`"memory" | { redis, cluster, sentinel }`) stands for that mapping here. */
function onlyMapping(schema: z.core.$ZodType): z.core.$ZodType {
  const def = schema._zod.def as unknown as Record<string, unknown>;
  if (def.type !== "union") return schema;
  const mappings = (def.options as z.core.$ZodType[]).map(unwrap).filter((option) => option._zod.def.type === "object");
  return mappings.length === 1 ? mappings[0] : schema;
}

function unwrap(schema: z.core.$ZodType): z.core.$ZodType {
  let current = schema;
  for (;;) {
    const def = current._zod.def as unknown as Record<string, unknown>;
    if (def.innerType) current = def.innerType as z.core.$ZodType;
    else if (def.type === "pipe") current = def.in as z.core.$ZodType;
    else return current;
  }
}

/** ` (did you mean "x"?)` for a near miss (a typo of a letter or two), else "". */
export function suggestion(word: string, candidates: readonly string[]): string {
  let best: string | undefined;
  let bestDistance = word.length < 4 ? 1 : 2;
  for (const candidate of candidates) {
    const distance = editDistance(word.toLowerCase(), candidate.toLowerCase());
    if (distance <= bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best === undefined ? "" : ` (did you mean "${best}"?)`;
}

/** Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** The deepest node on `path` that exists (a missing key is reported at its parent). */
function nodeAt(doc: Document, path: readonly PathKey[]): Node | undefined {
  let node = doc.contents as Node | null;
  for (const key of path) {
    const next = childOf(node, key);
    if (!next) break;
    node = next.value ?? next.key;
  }
  return node ?? undefined;
}

/** The key node of the last element of `path` (an unknown key), else the nearest node. */
function keyNodeAt(doc: Document, path: readonly PathKey[]): Node | undefined {
  const parent = nodeAt(doc, path.slice(0, -1));
  return childOf(parent ?? null, path[path.length - 1])?.key ?? parent;
}

function childOf(node: Node | null, key: PathKey): { key: Node | null; value: Node | null } | undefined {
  if (isMap(node)) {
    const pair = node.items.find((item) => isScalar(item.key) && String(item.key.value) === String(key));
    if (!pair) return undefined;
    return { key: pair.key as Node, value: (pair.value as Node | null) ?? null };
  }
  if (isSeq(node) && typeof key === "number") {
    const item = node.items[key] as Node | undefined;
    return item ? { key: item, value: item } : undefined;
  }
  return undefined;
}

/**
 * The key path of the innermost map entry that contains `offset`. Trailing list indices are left
 * out: past a syntax error, which item swallowed the broken text is an accident of the parse.
 */
function keyPathAtOffset(doc: Document, offset: number): PathKey[] {
  const path = pathAtOffset(doc, offset);
  while (typeof path[path.length - 1] === "number") path.pop();
  return path;
}

function pathAtOffset(doc: Document, offset: number): PathKey[] {
  const path: PathKey[] = [];
  let node = doc.contents as Node | null;
  const contains = (n: unknown) =>
    n !== null &&
    typeof n === "object" &&
    "range" in n &&
    Array.isArray(n.range) &&
    n.range[0] <= offset &&
    offset < n.range[1];
  for (;;) {
    if (isMap(node)) {
      const pair = node.items.find((item) => isPair(item) && (contains(item.key) || contains(item.value)));
      if (!pair || !isScalar(pair.key)) return path;
      path.push(String(pair.key.value));
      if (!contains(pair.value)) return path;
      node = pair.value as Node;
    } else if (isSeq(node)) {
      const index = node.items.findIndex(contains);
      if (index < 0) return path;
      path.push(index);
      node = node.items[index] as Node;
    } else {
      return path;
    }
  }
}

function yamlErrorMessage(code: string, message: string): string {
  if (code === "DUPLICATE_KEY") return "this key appears twice in the same mapping; keep one";
  if (code === "MULTIPLE_DOCS") return "a policy file holds one YAML document: remove the --- separator";
  return `YAML syntax: ${message}`;
}

/** The files of `relay.recipients`, read now so their problems are listed with the others. */
async function relayRecipients(
  raw: unknown,
  config: PolicyConfig,
  dir: string,
  report: (path: readonly PathKey[], message: string) => void,
): Promise<ListItem[] | undefined> {
  const items = config.relay.recipients;
  if (!items) return undefined;
  const rawRelay = isRecord(raw) && isRecord(raw.relay) ? raw.relay : {};
  return resolveListFiles(items, rawRelay.recipients, "address", dir, ["relay", "recipients"], report);
}

function withRelayRecipients(config: PolicyConfig, recipients: ListItem[] | undefined): PolicyConfig {
  return recipients ? { ...config, relay: { ...config.relay, recipients } } : config;
}

/** Anchors the policy's relative paths at its folder, so nothing later depends on the working directory. */
function resolvePaths(config: PolicyConfig, dir: string): PolicyConfig {
  const { server, delivery, observability } = config;
  return {
    ...config,
    server: {
      ...server,
      ...(server.tls ? { tls: { cert: resolve(dir, server.tls.cert), key: resolve(dir, server.tls.key) } } : {}),
      // The users file of submission listeners.
      ...(server.auth ? { auth: { ...server.auth, users: resolve(dir, server.auth.users) } } : {}),
    },
    // `to` may be a list of targets; only maildir targets hold paths.
    routes: config.routes.map((route) => {
      const anchor = (to: string) => (to.startsWith("maildir:") ? `maildir:${resolve(dir, to.slice(8))}` : to);
      // A smarthost's password file.
      const auth = route.auth?.passwordFile
        ? { ...route.auth, passwordFile: resolve(dir, route.auth.passwordFile) }
        : route.auth;
      return {
        ...route,
        to: typeof route.to === "string" ? anchor(route.to) : route.to.map(anchor),
        ...(auth ? { auth } : {}),
      };
    }),
    relay: config.relay.postmaster?.startsWith("maildir:")
      ? { ...config.relay, postmaster: `maildir:${resolve(dir, config.relay.postmaster.slice("maildir:".length))}` }
      : config.relay,
    delivery: { ...delivery, spool: resolve(dir, delivery.spool) },
    observability: observability.transactionLog
      ? {
          ...observability,
          // Keeps the rotation and privacy settings next to the anchored path.
          transactionLog: { ...observability.transactionLog, path: resolve(dir, observability.transactionLog.path) },
        }
      : observability,
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
