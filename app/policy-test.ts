/**
 * `portcullis test [--json] FILE.test.yaml…`: policy tests written by operators, in the format of
 * docs/policy-tests.md. A test file names a policy and lists cases — the client, the envelope, the
 * message, the DNS answers the case sees (zone data, served by the in-process DNS server, so no
 * case ever touches live DNS) and the expected outcome. Each case runs through `simulate` (the real session engine) with a fresh runtime: no state or DNS
 * cache leaks from one case into the next. Exit 1 when any case fails, with expected vs got.
 *
 * @example
 * policy: ../edge-mx.yaml
 * dns: { "2.0.0.192.bl.test": { A: [127.0.0.2], TXT: ["spam source"] } }
 * cases:
 *   - name: a listed client is refused at connect
 *     client: { ip: 192.0.2.2, helo: mail.example.test }
 *     envelope: { from: a@example.net, to: postmaster@example.test }
 *     expect: { decision: reject, code: 554, rule: dnsbl-listed }
 */
import { readFile } from "node:fs/promises";
import { dirname, relative, resolve } from "node:path";
import { LineCounter, type Node, parseDocument } from "yaml";
import { z } from "zod";
import { PHASES } from "../core/contract/api.js";
import { formatProblem, PolicyError, type Problem } from "../core/policy/load.js";
import { startDnsServer, type ZoneData } from "../core/testing/dns-server.js";
import { loadPolicy } from "./catalogue.js";
import { policyRuntime, type SimulatedTransaction, type SimulationResult, simulate } from "./testkit.js";

const BEHAVIOURS = ["servfail", "timeout", "refused", "nxdomain"] as const;

const RecordData = z.union(
  [z.string(), z.array(z.string()), z.strictObject({ priority: z.int().nonnegative(), exchange: z.string() })],
  { error: 'expected a record: "192.0.2.1", a TXT string, or { priority, exchange } for MX' },
);

const Zone = z
  .record(
    z.string(),
    z.union(
      [
        z.enum(BEHAVIOURS),
        z.partialRecord(
          z.enum(["A", "AAAA", "MX", "TXT", "PTR", "CNAME", "NS"]),
          z.union([z.enum(BEHAVIOURS), z.array(RecordData)]),
        ),
      ],
      { error: `expected { TYPE: [records] } (A, AAAA, MX, TXT, PTR, CNAME, NS) or one of ${BEHAVIOURS.join(", ")}` },
    ),
  )
  .describe('DNS answers by name, e.g. { "2.0.0.192.bl.test": { A: [127.0.0.2] }, "down.test": servfail }');

const DECISIONS = { accept: "accepted", reject: "rejected", defer: "deferred", disconnect: "disconnected" } as const;
type Decision = keyof typeof DECISIONS;

const Expect = z.strictObject({
  decision: z.enum(["accept", "reject", "defer", "disconnect"]).describe("how the transaction ends"),
  phase: z.enum(PHASES).optional().describe("the phase that decided"),
  code: z.int().min(200).max(599).optional().describe("the reply code (refusals)"),
  enhanced: z.string().optional().describe('the enhanced status code, e.g. "5.7.1"'),
  reply: z.string().optional().describe("text the reply must contain"),
  rule: z.string().optional().describe("the rule that decided"),
  plugin: z.string().optional().describe("the plugin that decided"),
  route: z.string().optional().describe("the route target every accepted recipient gets"),
  tags: z.array(z.string()).optional().describe("exactly these tags"),
  score: z.number().optional().describe("the final score"),
  refused: z.array(z.string()).optional().describe("exactly these recipients refused"),
});

const Case = z.strictObject({
  name: z.string().min(1),
  client: z.strictObject({
    ip: z.string(),
    helo: z.string().optional(),
    auth: z.string().optional().describe("the authenticated user"),
    submission: z.boolean().default(false).describe("a submission listener (port 587 role)"),
  }),
  envelope: z.strictObject({
    from: z.string(),
    to: z.union([z.string(), z.array(z.string()).min(1)]).transform((to) => (Array.isArray(to) ? to : [to])),
  }),
  message: z
    .union([z.string(), z.strictObject({ file: z.string() })])
    .optional()
    .describe("the message (line ends become CRLF), or { file: PATH }"),
  dns: Zone.optional().describe("answers for this case, over the file's dns"),
  expect: Expect,
});

const TestFile = z.strictObject({
  policy: z.string().min(1).describe("the policy under test, relative to this file"),
  dns: Zone.optional().describe("answers every case sees"),
  // Each case is checked on its own (Case), so every invalid case is reported at its own line.
  cases: z.array(z.unknown()).min(1),
});

type TestCase = z.output<typeof Case>;

/** One case as written: its line, its name (or its position), and either its data or what is wrong with it. */
interface CaseSpec {
  readonly name: string;
  readonly line: number;
  readonly data: TestCase | null;
  readonly problems: readonly Problem[];
}

export interface CaseResult {
  readonly name: string;
  /** The case's line in the test file. */
  readonly line: number;
  /** Lines of expected vs got; empty when the case passed. */
  readonly differences: readonly string[];
  /** Null when the case is invalid (`problems`) or its file could not run. */
  readonly result: SimulationResult | null;
  readonly problems: readonly Problem[];
}

interface TestFileSpec {
  /** Null when the file itself cannot run: YAML syntax, the policy or dns keys. */
  readonly spec: z.output<typeof TestFile> | null;
  readonly problems: readonly Problem[];
  readonly cases: readonly CaseSpec[];
}

/** Reads and validates a test file: the file's own problems, and each case's, all at their lines. */
async function readTestFile(file: string): Promise<TestFileSpec> {
  const source = await readFile(file, "utf8").catch((error: Error) => {
    throw new PolicyError([
      { file, line: 1, col: 1, path: "", message: `cannot read the test file: ${error.message}` },
    ]);
  });
  const lineCounter = new LineCounter();
  const doc = parseDocument(source, { lineCounter });
  const at = (offset: number) => lineCounter.linePos(offset);
  if (doc.errors.length > 0) {
    throw new PolicyError(
      doc.errors.map((e) => ({ file, ...at(e.pos[0]), path: "", message: `YAML syntax: ${e.message}` })),
    );
  }
  /** The position of the deepest node of `path` that exists in the file. */
  const position = (path: readonly PropertyKey[]) => {
    for (let length = path.length; length > 0; length--) {
      const node = doc.getIn(path.slice(0, length) as (string | number)[], true) as Node | undefined;
      if (node?.range) return at(node.range[0]);
    }
    return { line: 1, col: 1 };
  };
  const located = (issues: readonly z.core.$ZodIssue[], prefix: readonly (string | number)[]) =>
    issues.map((issue): Problem => {
      const path = [...prefix, ...issue.path];
      return { file, ...position(path), path: path.join("."), message: issue.message };
    });
  const json = doc.toJS() as unknown;
  const parsed = TestFile.safeParse(json);
  const written = Array.isArray((json as { cases?: unknown })?.cases) ? (json as { cases: unknown[] }).cases : [];
  const cases = written.map((raw, index): CaseSpec => {
    const data = Case.safeParse(raw);
    const named = (raw as { name?: unknown })?.name;
    return {
      name: typeof named === "string" && named !== "" ? named : `case ${index + 1}`,
      line: position(["cases", index]).line,
      data: data.success ? data.data : null,
      problems: data.success ? [] : located(data.error.issues, ["cases", index]),
    };
  });
  return parsed.success
    ? { spec: parsed.data, problems: [], cases }
    : { spec: null, problems: located(parsed.error.issues, []), cases };
}

function decisionOf(result: SimulationResult): Decision {
  const entry = Object.entries(DECISIONS).find(([, outcome]) => outcome === result.outcome);
  return (entry?.[0] ?? "accept") as Decision;
}

/**
 * What the client is told at the end of an accepted transaction. Its text depends on delivery (the
 * queue's "Ok: queued as ID", a synchronous route's next hop), which a test does not run, so only
 * "Ok" is promised.
 */
const ACCEPTED: NonNullable<SimulationResult["reply"]> = { code: 250, enhanced: "2.0.0", text: "Ok" };

/** The reply that ended the transaction, as the client would get it. */
function clientReply(result: SimulationResult): SimulationResult["reply"] {
  return result.reply ?? (result.outcome === "accepted" ? ACCEPTED : null);
}

/** Expected vs got, one line per expectation that does not hold. */
export function compareCase(expect: TestCase["expect"], result: SimulationResult): string[] {
  const differences: string[] = [];
  const check = (key: string, expected: unknown, got: unknown, holds = expected === got) => {
    if (expected !== undefined && !holds) {
      differences.push(`${key.padEnd(9)} expected ${show(expected)}, got ${show(got)}`);
    }
  };
  const reply = clientReply(result);
  check("decision", expect.decision, decisionOf(result));
  check("phase", expect.phase, result.phase);
  check("code", expect.code, reply?.code);
  check("enhanced", expect.enhanced, reply?.enhanced);
  const text = reply ? `${reply.code} ${reply.enhanced} ${reply.text}` : undefined;
  check("reply", expect.reply, text, expect.reply !== undefined && text?.includes(expect.reply) === true);
  const by = result.decidedBy;
  check("rule", expect.rule, by?.source === "rule" ? by.name : by ? `(${by.source} ${by.name})` : undefined);
  check("plugin", expect.plugin, by?.source === "plugin" ? by.name : by ? `(${by.source} ${by.name})` : undefined);
  const targets = Object.keys(result.routes);
  check(
    "route",
    expect.route,
    targets.length === 1 ? targets[0] : targets,
    targets.length === 1 && targets[0] === expect.route,
  );
  const tags = [...result.tags].sort();
  check("tags", expect.tags, tags, sameSet(expect.tags, tags));
  check("score", expect.score, result.score);
  const refused = result.recipients.filter((r) => r.decision).map((r) => r.address);
  check("refused", expect.refused, refused, sameSet(expect.refused, refused));
  return differences;
}

function sameSet(expected: readonly string[] | undefined, got: readonly string[]): boolean {
  return expected !== undefined && expected.length === got.length && expected.every((item) => got.includes(item));
}

function show(value: unknown): string {
  if (value === undefined) return "nothing";
  if (Array.isArray(value)) return `[${value.join(", ")}]`;
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

function crlf(text: string): string {
  return text.replace(/\r?\n/g, "\r\n");
}

/** Runs every valid case of a test file; a file that cannot run yields its problems and no policy. */
export async function runTestFile(
  file: string,
): Promise<{ policy: string | null; problems: readonly Problem[]; cases: CaseResult[] }> {
  const { spec, problems, cases: specs } = await readTestFile(file);
  const unrun = (spec: CaseSpec): CaseResult => ({ ...spec, differences: [], result: null });
  if (!spec) return { policy: null, problems, cases: specs.map(unrun) };
  const dir = dirname(resolve(file));
  const policy = await loadPolicy(resolve(dir, spec.policy));
  const cases: CaseResult[] = [];
  for (const caseSpec of specs) {
    const testCase = caseSpec.data;
    if (!testCase) {
      cases.push(unrun(caseSpec));
      continue;
    }
    const message =
      testCase.message === undefined
        ? undefined
        : typeof testCase.message === "string"
          ? crlf(testCase.message)
          : await readFile(resolve(dir, testCase.message.file));
    const input: SimulatedTransaction = {
      ip: testCase.client.ip,
      helo: testCase.client.helo,
      authUser: testCase.client.auth,
      role: testCase.client.submission ? "submission" : "mx",
      from: testCase.envelope.from,
      to: testCase.envelope.to,
      ...(message === undefined ? {} : { message }),
    };
    // A DNS server per case: its answers, and nothing cached from another case.
    const dns = await startDnsServer({ ...spec.dns, ...testCase.dns } as ZoneData);
    try {
      const runtime = await policyRuntime(policy, { dnsServers: [dns.address] });
      const result = await simulate(runtime, input).finally(() => runtime.services.state.close());
      cases.push({ ...unrun(caseSpec), differences: compareCase(testCase.expect, result), result });
    } finally {
      await dns.close();
    }
  }
  return { policy: policy.file, problems: [], cases };
}

function describeResult(result: SimulationResult): string {
  const by = result.decidedBy ? ` by ${result.decidedBy.source} ${result.decidedBy.name}` : "";
  const reply = clientReply(result);
  return `${result.outcome} at ${result.phase}${by}${reply ? `: ${reply.code} ${reply.enhanced} ${reply.text}` : ""}`;
}

/** A case passed when it was valid, ran, and every expectation held. */
const passed = (c: CaseResult) => c.result !== null && c.differences.length === 0;

/** One test file's outcome, as `--json` prints it. */
interface FileReport {
  readonly file: string;
  readonly policy: string | null;
  /** Why the file could not run (its own keys, YAML, the policy); its cases then did not run. */
  readonly problems: readonly Problem[];
  readonly cases: readonly CaseResult[];
}

function textReport(report: FileReport): string[] {
  const { file, policy, problems, cases } = report;
  const lines =
    policy === null
      ? [`${file}: cannot run`, ...problems.map((p) => `  ${formatProblem(p)}`)]
      : [`${file} (policy ${relative(process.cwd(), policy) || policy})`];
  for (const { name, line, differences, result, problems } of cases) {
    if (problems.length > 0) {
      lines.push(`  FAIL  ${name} (${file}:${line}): invalid`, ...problems.map((p) => `        ${formatProblem(p)}`));
      continue;
    }
    if (!result) continue;
    if (differences.length === 0) {
      lines.push(`  ok    ${name}`);
      continue;
    }
    lines.push(`  FAIL  ${name} (${file}:${line})`);
    for (const difference of differences) lines.push(`        ${difference}`);
    lines.push(`        got: ${describeResult(result)}`);
    const steps = result.trace.map((t) => `${t.phase} ${t.source === "rule" ? "rule " : ""}${t.plugin} ${t.decision}`);
    if (steps.length > 0) lines.push(`        trace: ${steps.join("; ")}`);
  }
  return lines;
}

function jsonReport(report: FileReport) {
  return {
    ...report,
    cases: report.cases.map(({ result, ...c }) => ({
      ...c,
      status: passed({ result, ...c }) ? "pass" : "fail",
      got: result ? describeResult(result) : null,
    })),
  };
}

/**
 * `portcullis test [--json] FILE…`: runs the files, prints a report; exit 1 when a case fails.
 * Every case counts on its own: an invalid case fails with its problems at their lines. A file that
 * cannot run counts each of its cases as failed (at least one).
 */
export async function testCommand(args: string[]): Promise<{ code: number; output: string }> {
  const json = args.includes("--json");
  const reports: FileReport[] = [];
  for (const file of args.filter((arg) => arg !== "--json")) {
    try {
      reports.push({ file, ...(await runTestFile(file)) });
    } catch (error) {
      const problems =
        error instanceof PolicyError
          ? error.problems
          : [{ file, line: 1, col: 1, path: "", message: String(error) } satisfies Problem];
      reports.push({ file, policy: null, problems, cases: [] });
    }
  }
  let pass = 0;
  let fail = 0;
  for (const { policy, cases } of reports) {
    const good = cases.filter(passed).length;
    pass += good;
    fail += cases.length - good + (policy === null && cases.length === 0 ? 1 : 0);
  }
  const total = pass + fail;
  const summary = { cases: total, passed: pass, failed: fail };
  const output = json
    ? `${JSON.stringify({ files: reports.map(jsonReport), summary }, null, 2)}\n`
    : `${[...reports.flatMap(textReport), `${total} case${total === 1 ? "" : "s"}: ${pass} passed, ${fail} failed`].join("\n")}\n`;
  return { code: fail > 0 ? 1 : 0, output };
}
