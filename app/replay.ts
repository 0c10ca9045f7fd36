/** `portcullis replay`: a candidate policy's rules over recorded transactions, as a report. */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { candidateOf, type ReplayReport, replayLines } from "../core/observability/replay.js";
import { RECORD_VERSION } from "../core/observability/transaction-log.js";
import { loadPolicy } from "./catalogue.js";
import { policyRuntime } from "./testkit.js";

export const REPLAY_USAGE = "portcullis replay --policy CANDIDATE --log FILE.jsonl [--log FILE…] [--json] [--show]";

export class ReplayUsageError extends Error {}

/** `portcullis replay`: prints the report (text, or JSON with --json); exit 0 once it ran. */
export async function replayCommand(args: string[], out: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      policy: { type: "string" },
      log: { type: "string", multiple: true },
      json: { type: "boolean" },
      show: { type: "boolean" },
    },
  });
  if (!values.policy || !values.log?.length)
    throw new ReplayUsageError(`replay needs --policy and --log\n${REPLAY_USAGE}`);
  const runtime = await policyRuntime(await loadPolicy(values.policy));
  const lines: string[] = [];
  for (const file of values.log) lines.push(...(await readFile(file, "utf8")).split("\n"));
  const report: ReplayReport = {
    policy: runtime.policy.file,
    logs: values.log,
    ...(await replayLines(lines, candidateOf(runtime))),
  };
  await runtime.services.state.close();
  const shown = values.show ? report : { ...report, changes: [] };
  out.write(values.json ? `${JSON.stringify(shown, null, 2)}\n` : formatReport(report, values.show ?? false));
  return 0;
}

function formatReport(report: ReplayReport, show: boolean): string {
  const lines = [`replayed ${report.transactions} transactions from ${report.logs.join(", ")} under ${report.policy}`];
  if (report.skipped > 0) lines.push(`skipped ${report.skipped} lines that are not version ${RECORD_VERSION} records`);
  if (report.hashed > 0) {
    lines.push(
      `${report.hashed} records have hashed local parts: rules testing whole addresses or local parts cannot match them`,
    );
  }
  const outcomes = [...new Set([...Object.keys(report.recorded), ...Object.keys(report.candidate)])].sort();
  lines.push("", `${"outcome".padEnd(12)} ${"recorded".padStart(9)} ${"candidate".padStart(9)}`);
  for (const outcome of outcomes) {
    lines.push(
      `${outcome.padEnd(12)} ${String(report.recorded[outcome] ?? 0).padStart(9)} ${String(report.candidate[outcome] ?? 0).padStart(9)}`,
    );
  }
  lines.push("", `${report.changed} of ${report.transactions} transactions change`);
  for (const group of report.byRule) {
    const changes = Object.entries(group.changes)
      .map(([change, n]) => `${change} ×${n}`)
      .join(", ");
    lines.push(`  rule ${group.rule}: ${group.transactions} (${changes})`);
  }
  if (show && report.changes.length > 0) {
    lines.push("");
    for (const change of report.changes) {
      const what = change.differences
        .map((d) => `${d.recipient ? `${d.recipient} ` : ""}${d.live} → ${d.candidate} (rule ${d.rule})`)
        .join("; ");
      const why = change.candidate.unknown ? ` [${change.candidate.unknown}]` : "";
      lines.push(`  ${change.at} ${change.tx} ${change.client} <${change.from}>: ${what}${why}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
