/**
 * The `rules:` section of a policy: its zod schema (with a description on every key, for editors)
 * and the typed syntax tree it turns into. Compiling the tree into predicates is compile.ts's job.
 *
 * @example
 * rules:
 *   - name: partners-skip-spf
 *     when: { client.ip: { network: [{ file: ./lists/partners.txt }] } }
 *     action: [{ skip: [spf, dmarc] }, { tag: partner }]
 *   - name: too-spammy
 *     when: { any: [{ score: { gte: 10 } }, { dnsbl.listed: true }] }
 *     action: { reject: "554 5.7.1 Rejected by {rule}" }
 */
import { z } from "zod";
import { type Action, ActionSchema } from "../../contract/actions.js";
import { type ListItem, type ListKind, ListOption } from "../lists.js";

export type Scalar = string | number | boolean;

export type Comparison = "gt" | "gte" | "lt" | "lte";

/** One test of the value found at a path. */
export type Test =
  | { readonly kind: "equals"; readonly values: readonly Scalar[] }
  | { readonly kind: "compare"; readonly op: Comparison; readonly value: number }
  | { readonly kind: "exists"; readonly present: boolean }
  | { readonly kind: "list"; readonly list: ListKind; readonly items: readonly ListItem[] };

export type Condition =
  | { readonly kind: "always" }
  | { readonly kind: "all"; readonly of: readonly Condition[] }
  | { readonly kind: "any"; readonly of: readonly Condition[] }
  | { readonly kind: "not"; readonly of: Condition }
  | {
      readonly kind: "test";
      readonly path: string;
      readonly test: Test;
      /** Where the key is in the rule's `when:` mapping (`["any", 0, "spf.result"]`), for problems found later. */
      readonly at: readonly (string | number)[];
    };

/** What a matching rule does. accept, reject, defer, disconnect and quarantine decide; the others add to the transaction. */
export type RuleAction =
  | { readonly type: "accept" }
  | { readonly type: "reject" | "defer" | "disconnect"; readonly reply: string | null }
  | { readonly type: "quarantine"; readonly to: string }
  | { readonly type: "score"; readonly points: number }
  | { readonly type: "addHeader"; readonly field: string }
  | { readonly type: "removeHeader"; readonly name: string }
  | { readonly type: "tag"; readonly tag: string }
  | { readonly type: "route"; readonly to: string }
  | { readonly type: "skip"; readonly plugins: readonly string[] }
  | { readonly type: "log"; readonly message: string | null };

export type RuleMode = "enforce" | "observe";

export interface Rule {
  readonly name: string;
  readonly when: Condition;
  /** In order; a deciding action, if any, is the last. */
  readonly actions: readonly RuleAction[];
  readonly mode: RuleMode;
}

export const DECIDING_ACTIONS: ReadonlySet<RuleAction["type"]> = new Set([
  "accept",
  "reject",
  "defer",
  "disconnect",
  "quarantine",
]);

/** Schemas the policy schema owns and the rules reuse (passed in, so the modules do not import each other). */
export interface SharedSchemas {
  readonly routeTarget: z.ZodType<string>;
}

const Scalar = z.union([z.string(), z.number(), z.boolean()], { error: "expected a string, number or boolean" });

const TestObject = z
  .strictObject({
    eq: Scalar.optional().describe("equal to this value (strings compare case-insensitively)"),
    ne: Scalar.optional().describe("not equal to this value (also true when the value is absent)"),
    in: z.array(Scalar).min(1).optional().describe("equal to one of these values"),
    gt: z.number().optional().describe("a number greater than this"),
    gte: z.number().optional().describe("a number greater than or equal to this"),
    lt: z.number().optional().describe("a number less than this"),
    lte: z.number().optional().describe("a number less than or equal to this"),
    exists: z.boolean().optional().describe("true: the value was recorded; false: it was not"),
    network: ListOption("network").optional().describe("an IP address in one of these networks"),
    domain: ListOption("domain")
      .optional()
      .describe('a domain (or the domain of an address) in this list; "*.example.test" matches its subdomains'),
    address: ListOption("address").optional().describe('an address matching one of these patterns, e.g. "*@spam.test"'),
  })
  .refine((test) => Object.values(test).some((value) => value !== undefined), {
    error: "empty test: write e.g. { gte: 10 }, { exists: true } or { network: [192.0.2.0/24] }",
    // Only for a mapping that is otherwise valid: `{ gtee: 10 }` is an unknown key, not an empty test.
    when: (payload) => payload.issues.length === 0,
  })
  .describe("tests of the value; several in one mapping must all hold");

type TestInput = z.output<typeof TestObject> | Scalar | Scalar[];

function firstIssue(error: z.ZodError): string {
  const [issue] = error.issues;
  return issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message;
}

const TestSchema = z
  .union([Scalar, z.array(Scalar).min(1), TestObject], {
    error: (issue) => {
      const input = issue.input;
      if (input !== null && typeof input === "object" && !Array.isArray(input)) {
        const parsed = TestObject.safeParse(input);
        if (!parsed.success) return firstIssue(parsed.error);
      }
      return "expected a value, a list of values (any of them), or a test such as { gte: 10 } or { network: [192.0.2.0/24] }";
    },
  })
  .describe(
    "the test of this path: a value (equal), a list (equal to any), or a mapping of tests: eq, ne, in, gt, gte, lt, lte, exists, network, domain, address",
  );

export interface ConditionInput {
  any?: ConditionInput[];
  all?: ConditionInput[];
  not?: ConditionInput;
  [path: string]: TestInput | ConditionInput | ConditionInput[] | undefined;
}

const ConditionSchema: z.ZodType<ConditionInput> = z
  .object({
    get any() {
      return z.array(ConditionSchema).min(1).optional().describe("at least one of these conditions holds");
    },
    get all() {
      return z.array(ConditionSchema).min(1).optional().describe("every one of these conditions holds");
    },
    get not() {
      return ConditionSchema.optional().describe("this condition does not hold");
    },
  })
  .catchall(TestSchema)
  .refine((condition) => Object.keys(condition).length > 0, {
    error: "empty condition: leave out `when` for a rule that always matches",
  })
  .describe(
    "keys are paths (client.ip, helo, sender, recipient, score, tags, or a finding such as spf.result) or any/all/not; every key must hold",
  ) as z.ZodType<ConditionInput>;

function toTests(path: string, input: TestInput, at: readonly (string | number)[]): Condition[] {
  const test = (test: Test): Condition => ({ kind: "test", path, test, at });
  if (typeof input !== "object") return [test({ kind: "equals", values: [input] })];
  if (Array.isArray(input)) return [test({ kind: "equals", values: input })];
  const tests: Condition[] = [];
  if (input.eq !== undefined) tests.push(test({ kind: "equals", values: [input.eq] }));
  if (input.ne !== undefined) tests.push({ kind: "not", of: test({ kind: "equals", values: [input.ne] }) });
  if (input.in !== undefined) tests.push(test({ kind: "equals", values: input.in }));
  for (const op of ["gt", "gte", "lt", "lte"] as const) {
    const value = input[op];
    if (value !== undefined) tests.push(test({ kind: "compare", op, value }));
  }
  if (input.exists !== undefined) tests.push(test({ kind: "exists", present: input.exists }));
  for (const list of ["network", "domain", "address"] as const) {
    const items = input[list];
    if (items !== undefined) tests.push(test({ kind: "list", list, items }));
  }
  return tests;
}

function both(conditions: Condition[]): Condition {
  return conditions.length === 1 ? conditions[0] : { kind: "all", of: conditions };
}

/** The syntax tree of a validated condition mapping; `at` is where the mapping is in `when:`. */
export function toCondition(input: ConditionInput, at: readonly (string | number)[] = []): Condition {
  const parts: Condition[] = [];
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    if (key === "any" || key === "all") {
      parts.push({ kind: key, of: (value as ConditionInput[]).map((item, i) => toCondition(item, [...at, key, i])) });
    } else if (key === "not") {
      parts.push({ kind: "not", of: toCondition(value as ConditionInput, [...at, key]) });
    } else {
      parts.push(...toTests(key, value as TestInput, [...at, key]));
    }
  }
  return both(parts);
}

const Plugins = z
  .union([z.string().min(1), z.array(z.string().min(1)).min(1)], { error: "expected a plugin name or a list of them" })
  .transform((value) => (Array.isArray(value) ? value : [value]))
  .describe("pipeline entries (as written in `plugin:`) whose hooks do not run for the rest of this transaction");

function ruleActionForms(shared: SharedSchemas) {
  const headerField = z
    .string()
    .regex(/^[!-9;-~]+:.*$/s, { error: 'expected "Name: value", e.g. "X-Spam-Flag: YES"' })
    .refine((text) => !/[\r\n]/.test(text), { error: "a header field is one line" })
    .describe('a header field "Name: value" to prepend; placeholders such as {rule} or {spf.result} allowed');
  return {
    quarantine: shared.routeTarget.describe(
      'accept, but deliver to this route target instead (e.g. "maildir:./var/quarantine"); tags the transaction "quarantine"',
    ),
    addHeader: headerField,
    removeHeader: z
      .string()
      .regex(/^[!-9;-~]+$/, { error: 'expected a header field name, e.g. "X-Spam-Flag"' })
      .describe("removes incoming header fields with this name (case-insensitive) before delivery"),
    tag: z.string().min(1).describe("adds this tag to the transaction (tags are tested by `tags:` and shown by try)"),
    route: shared.routeTarget.describe("delivers this transaction to this route target, overriding `routes:`"),
    skip: Plugins,
    log: z.string().describe("logs this text (placeholders allowed) and does nothing else"),
  };
}

type ActionForms = ReturnType<typeof ruleActionForms>;

const BARE_RULE_ACTIONS = ["accept", "reject", "defer", "disconnect", "log"] as const;

function ruleActionSchema(shared: SharedSchemas) {
  const forms = ruleActionForms(shared);
  const objects = Object.entries(forms).map(([key, schema]) =>
    z.strictObject({ [key]: schema }).describe(`the ${key} action`),
  );
  const describeForms = `use ${BARE_RULE_ACTIONS.join(", ")}, or one of { reject | defer | disconnect: "<reply>" }, { score: N }, ${Object.keys(
    forms,
  )
    .map((key) => `{ ${key}: … }`)
    .join(", ")}`;
  return (
    z
      // ActionSchema brings reject/defer/disconnect replies and score; its `ignore` means nothing in a rule.
      .union([z.enum(BARE_RULE_ACTIONS), ActionSchema.refine((action) => action.type !== "ignore"), ...objects], {
        error: (issue) => {
          const input = issue.input;
          if (input !== null && typeof input === "object" && !Array.isArray(input)) {
            const keys = Object.keys(input);
            if (keys.length !== 1)
              return `one action per item, not ${keys.length === 0 ? "none" : keys.join(" + ")}: ${describeForms}`;
            const [key] = keys;
            const own = (forms as Record<string, z.ZodType>)[key];
            const parsed = (own ? z.strictObject({ [key]: own }) : ActionSchema).safeParse(input);
            if (!parsed.success && (own || ["reject", "defer", "disconnect", "score"].includes(key))) {
              return firstIssue(parsed.error);
            }
          }
          return `unknown action ${JSON.stringify(input)}: ${describeForms}`;
        },
      })
      .transform((input): RuleAction => {
        if (input === "log") return { type: "log", message: null };
        if (typeof input === "string") {
          return input === "accept" ? { type: "accept" } : { type: input, reply: null };
        }
        if ("type" in input) {
          // ActionSchema's output (no rule form has a `type` key); refined above, so never `ignore`.
          return input as Exclude<Action, { type: "ignore" }>;
        }
        const [[key, value]] = Object.entries(input) as [[keyof ActionForms, unknown]];
        switch (key) {
          case "quarantine":
          case "route":
            return { type: key, to: value as string };
          case "addHeader":
            return { type: key, field: value as string };
          case "removeHeader":
            return { type: key, name: value as string };
          case "tag":
            return { type: key, tag: value as string };
          case "skip":
            return { type: key, plugins: value as string[] };
          case "log":
            return { type: key, message: value as string };
        }
      })
  );
}

/** The schema of `rules:`, given the schemas it shares with the rest of the policy. */
export function rulesSchema(shared: SharedSchemas) {
  const action = ruleActionSchema(shared);
  const Rule = z
    .strictObject({
      name: z
        .string()
        .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, {
          error: 'a rule name is letters, digits, ".", "_" and "-", e.g. "dnsbl-listed"',
        })
        .describe("the rule's name: logged and recorded as who decided; {rule} in replies"),
      when: ConditionSchema.optional().describe("the condition; leave it out for a rule that always matches"),
      action: z
        .union([action, z.array(action).min(1)], {
          // A single action that fails says why (its reply class, an unknown key), not just "no form fits".
          error: (issue) => {
            const single = Array.isArray(issue.input) ? undefined : action.safeParse(issue.input);
            return single?.error ? firstIssue(single.error) : "expected an action or a list of actions";
          },
        })
        .transform((value) => (Array.isArray(value) ? value : [value]))
        .superRefine((actions, ctx) => {
          actions.forEach((item, index) => {
            if (DECIDING_ACTIONS.has(item.type) && index !== actions.length - 1) {
              ctx.addIssue({
                code: "custom",
                path: [index],
                message: `${item.type} decides, so it must be the last action of the rule`,
              });
            }
          });
        })
        .describe(
          "what a match does: one action or a list, at most one of them deciding (accept, reject, defer, disconnect, quarantine) and last",
        ),
      mode: z
        .enum(["enforce", "observe"])
        .default("enforce")
        .describe("enforce (default) acts; observe only logs what the rule would do (safe roll-out)"),
    })
    .transform(
      (rule): Rule => ({
        name: rule.name,
        when: rule.when ? toCondition(rule.when) : { kind: "always" },
        actions: rule.action,
        mode: rule.mode,
      }),
    )
    .describe("a rule: when the condition holds, the action happens");
  return z
    .array(Rule)
    .superRefine((rules, ctx) => {
      const seen = new Set<string>();
      rules.forEach((rule, index) => {
        if (seen.has(rule.name)) {
          ctx.addIssue({
            code: "custom",
            path: [index, "name"],
            message: `another rule is already named "${rule.name}"`,
          });
        }
        seen.add(rule.name);
      });
    })
    .default([])
    .describe(
      "evaluated in order after the hooks of each phase; non-deciding actions (score, tag, headers, route, skip, log) apply and evaluation goes on; the first matching rule that decides ends it",
    );
}
