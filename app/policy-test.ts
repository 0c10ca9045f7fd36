/**
 * `portcullis test FILE.test.yaml…`: policy tests written by operators. A test file names a policy
 * and lists cases — the client, the envelope, the message, the DNS answers the case sees (zone data,
 * served by the in-process DNS server, so no case ever touches live DNS) and the expected outcome.
 * Each case runs through `simulate` (the real session engine) with a fresh runtime: no state or DNS
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
  cases: z.array(Case).min(1),
});

type TestCase = z.output<typeof Case>;

export interface CaseResult {
  readonly name: string;
  /** Lines of expected vs got; empty when the case passed. */
  readonly differences: readonly string[];
  readonly result: SimulationResult;
}

/** Reads and validates a test file; throws PolicyError with every problem at its line. */
async function readTestFile(file: string): Promise<z.output<typeof TestFile>> {
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
  const parsed = TestFile.safeParse(doc.toJS());
  if (parsed.success) return parsed.data;
  throw new PolicyError(
    parsed.error.issues.map((issue): Problem => {
      let position = { line: 1, col: 1 };
      for (let length = issue.path.length; length > 0; length--) {
        const node = doc.getIn(issue.path.slice(0, length) as (string | number)[], true) as Node | undefined;
        if (node?.range) {
          position = at(node.range[0]);
          break;
        }
      }
      return { file, ...position, path: issue.path.join("."), message: issue.message };
    }),
  );
}

function decisionOf(result: SimulationResult): Decision {
  const entry = Object.entries(DECISIONS).find(([, outcome]) => outcome === result.outcome);
  return (entry?.[0] ?? "accept") as Decision;
}

/** Expected vs got, one line per expectation that does not hold. */
export function compareCase(expect: TestCase["expect"], result: SimulationResult): string[] {
  const differences: string[] = [];
  const check = (key: string, expected: unknown, got: unknown, holds = expected === got) => {
    if (expected !== undefined && !holds) {
      differences.push(`${key.padEnd(9)} expected ${show(expected)}, got ${show(got)}`);
    }
  };
  check("decision", expect.decision, decisionOf(result));
  check("phase", expect.phase, result.phase);
  check("code", expect.code, result.reply?.code);
  check("enhanced", expect.enhanced, result.reply?.enhanced);
  const text = result.reply ? `${result.reply.code} ${result.reply.enhanced} ${result.reply.text}` : undefined;
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

/** Runs every case of a test file. */
export async function runTestFile(file: string): Promise<{ policy: string; cases: CaseResult[] }> {
  const spec = await readTestFile(file);
  const dir = dirname(resolve(file));
  const policy = await loadPolicy(resolve(dir, spec.policy));
  const cases: CaseResult[] = [];
  for (const testCase of spec.cases) {
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
      cases.push({ name: testCase.name, differences: compareCase(testCase.expect, result), result });
    } finally {
      await dns.close();
    }
  }
  return { policy: policy.file, cases };
}

function describeResult(result: SimulationResult): string {
  const by = result.decidedBy ? ` by ${result.decidedBy.source} ${result.decidedBy.name}` : "";
  const reply = result.reply ? `: ${result.reply.code} ${result.reply.enhanced} ${result.reply.text}` : "";
  return `${result.outcome} at ${result.phase}${by}${reply}`;
}

/** `portcullis test`: runs the files, prints a report; exit 1 when a case fails. */
export async function testCommand(files: string[]): Promise<{ code: number; output: string }> {
  const lines: string[] = [];
  let passed = 0;
  let failed = 0;
  for (const file of files) {
    try {
      const { policy, cases } = await runTestFile(file);
      lines.push(`${file} (policy ${relative(process.cwd(), policy) || policy})`);
      for (const { name, differences, result } of cases) {
        if (differences.length === 0) {
          passed++;
          lines.push(`  ok    ${name}`);
          continue;
        }
        failed++;
        lines.push(`  FAIL  ${name}`);
        for (const difference of differences) lines.push(`        ${difference}`);
        lines.push(`        got: ${describeResult(result)}`);
        const steps = result.trace.map(
          (t) => `${t.phase} ${t.source === "rule" ? "rule " : ""}${t.plugin} ${t.decision}`,
        );
        if (steps.length > 0) lines.push(`        trace: ${steps.join("; ")}`);
      }
    } catch (error) {
      failed++;
      lines.push(
        `${file}: cannot run`,
        ...(error instanceof PolicyError ? error.problems.map((p) => `  ${formatProblem(p)}`) : [`  ${String(error)}`]),
      );
    }
  }
  lines.push(`${passed + failed} case${passed + failed === 1 ? "" : "s"}: ${passed} passed, ${failed} failed`);
  return { code: failed > 0 ? 1 : 0, output: `${lines.join("\n")}\n` };
}
