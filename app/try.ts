/**
 * `portcullis try`: one transaction through a policy's whole pipeline and rules, without a socket
 * and without delivering. It drives the test kit's `simulate`, which is the same session engine the
 * listener uses, so what `try` prints is what the gateway would do (given the same DNS answers).
 *
 * @example
 * portcullis try --policy policies/edge-mx.yaml --ip 192.0.2.1 --helo mail.example.test \
 *   --from alice@example.test --to bob@example.test message.eml --dns 127.0.0.1:5353 --json
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import type { Phase } from "../core/contract/api.js";
import { formatReply } from "../core/contract/decision.js";
import type { Runtime } from "../core/engine/runtime.js";
import { declaredFindings, type HookStep, hookReport } from "../core/observability/hook-report.js";
import { loadPolicy } from "./catalogue.js";
import { policyRuntime, type SimulatedTransaction, type SimulationResult, simulate } from "./testkit.js";

export class TryUsageError extends Error {}

export const TRY_USAGE =
  "portcullis try --policy FILE --ip IP [--helo NAME] --from ADDR --to ADDR [--to ADDR…] [--auth USER] [--submission] [MESSAGE.eml] [--dns HOST:PORT] [--json]";

/** One hook run or rule match, with the findings of the hook's plugin (those it declares). */
export type TryStep = HookStep;

export interface TryReport {
  readonly policy: string;
  readonly input: SimulatedTransaction;
  readonly steps: readonly TryStep[];
  /** Findings no step's plugin declares (plugins without a `findings` declaration). */
  readonly otherFindings: Readonly<Record<string, unknown>>;
  readonly outcome: SimulationResult["outcome"];
  readonly phase: Phase;
  readonly reply: string | null;
  readonly decidedBy: string | null;
  readonly recipients: ReadonlyArray<{ readonly address: string; readonly reply: string | null }>;
  readonly routes: Readonly<Record<string, string[]>>;
  readonly score: number;
  readonly tags: readonly string[];
  readonly addedHeaders: readonly string[];
}

/** Groups a simulation's trace and findings by who made them. */
export function tryReport(runtime: Runtime, input: SimulatedTransaction, result: SimulationResult): TryReport {
  const { steps, otherFindings } = hookReport(declaredFindings(runtime.plugins), result.trace, result.facts);
  return {
    policy: runtime.policy.file,
    input,
    steps,
    otherFindings,
    outcome: result.outcome,
    phase: result.phase,
    reply: result.reply ? formatReply(result.reply) : null,
    decidedBy: result.decidedBy ? `${result.decidedBy.source} ${result.decidedBy.name}` : null,
    recipients: result.recipients.map((r) => ({
      address: r.address,
      reply: r.decision ? formatReply(r.decision.reply) : null,
    })),
    routes: result.routes,
    score: result.score,
    tags: result.tags,
    addedHeaders: result.addedHeaders,
  };
}

const compact = (value: unknown) => JSON.stringify(value);

/** The human form: a table of steps with their findings, then the outcome. */
export function formatTryReport(report: TryReport): string {
  const { input } = report;
  const lines = [
    `policy    ${report.policy}`,
    `client    ${input.ip}${input.helo ? ` helo ${input.helo}` : ""}${input.authUser ? ` auth ${input.authUser}` : ""}`,
    `envelope  ${input.from || "<>"} -> ${input.to.join(", ")}`,
    "",
  ];
  const width = Math.max(10, ...report.steps.map((s) => s.name.length + (s.kind === "rule" ? 5 : 0)));
  for (const step of report.steps) {
    const who = (step.kind === "rule" ? `rule ${step.name}` : step.name).padEnd(width);
    const verdict = step.verdict ? ` (${step.kind === "rule" ? step.verdict : `verdict ${step.verdict}`})` : "";
    const error = step.error ? ` error: ${step.error}` : "";
    lines.push(
      `${step.phase.padEnd(8)}  ${who}  ${step.decision.padEnd(10)} ${step.ms.toFixed(2).padStart(8)} ms${verdict}${error}`,
    );
    for (const [name, value] of Object.entries(step.findings ?? {}))
      lines.push(`${"".padEnd(10)}  ${name}: ${compact(value)}`);
  }
  if (report.steps.length === 0) lines.push("(no hook ran and no rule matched)");
  const others = Object.entries(report.otherFindings);
  if (others.length > 0) {
    lines.push("", "other findings");
    for (const [name, value] of others) lines.push(`  ${name}: ${compact(value)}`);
  }
  const routes = Object.entries(report.routes).map(([target, to]) => `${target} <- ${to.join(", ")}`);
  lines.push(
    "",
    `outcome   ${report.outcome} at ${report.phase}${report.decidedBy ? ` by ${report.decidedBy}` : ""}`,
    `reply     ${report.reply ?? (report.outcome === "accepted" ? "250 (accepted; nothing is delivered)" : "-")}`,
  );
  for (const r of report.recipients.filter((r) => r.reply)) lines.push(`refused   ${r.address}: ${r.reply}`);
  lines.push(
    `route     ${routes.length > 0 ? routes.join("; ") : "-"}`,
    `score     ${report.score}`,
    `tags      ${report.tags.length > 0 ? report.tags.join(", ") : "-"}`,
  );
  for (const header of report.addedHeaders) lines.push(`header    ${header}`);
  return `${lines.join("\n")}\n`;
}

/** Runs `try` with CLI arguments; returns what to print. Throws TryUsageError on bad arguments. */
export async function tryCommand(args: string[]): Promise<string> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      policy: { type: "string" },
      ip: { type: "string" },
      helo: { type: "string" },
      from: { type: "string" },
      to: { type: "string", multiple: true },
      auth: { type: "string" },
      submission: { type: "boolean" },
      dns: { type: "string", multiple: true },
      json: { type: "boolean" },
    },
  });
  if (!values.policy) throw new TryUsageError("try needs --policy FILE");
  if (!values.ip) throw new TryUsageError("try needs --ip IP");
  if (values.from === undefined) throw new TryUsageError('try needs --from ADDR (--from "" for the null sender)');
  if (!values.to || values.to.length === 0) throw new TryUsageError("try needs at least one --to ADDR");
  if (positionals.length > 1) throw new TryUsageError("try takes at most one MESSAGE file");
  const input: SimulatedTransaction = {
    ip: values.ip,
    helo: values.helo,
    from: values.from,
    to: values.to,
    authUser: values.auth,
    role: values.submission ? "submission" : "mx",
    ...(positionals[0] ? { message: await readFile(positionals[0]) } : {}),
  };
  const runtime = await policyRuntime(await loadPolicy(values.policy), { dnsServers: values.dns });
  const report = tryReport(
    runtime,
    input,
    await simulate(runtime, input).finally(() => runtime.services.state.close()),
  );
  if (values.json) {
    // The message itself is not echoed: it may be large, and the file name was on the command line.
    const { message: _message, ...shown } = report.input;
    return `${JSON.stringify({ ...report, input: shown }, null, 2)}\n`;
  }
  return formatTryReport(report);
}
