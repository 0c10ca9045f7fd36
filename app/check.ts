/** `portcullis check FILE [--strict]`: the policy validated, its plugins set up, the static checks run. */

import { findingsOf, formatFindings, staticChecks } from "../core/policy/static-checks.js";
import { builtinPlugins } from "../plugins/index.js";
import { loadPolicy } from "./catalogue.js";
import { policyRuntime } from "./testkit.js";

/**
 * `portcullis check FILE [--strict]`: loads the policy, sets up its plugins (as `start` would),
 * runs the static checks. Exit 1 on an error, or on a warning with `strict`.
 */
export async function checkPolicy(
  file: string,
  options: { strict?: boolean } = {},
): Promise<{ code: number; lines: string[] }> {
  const runtime = await policyRuntime(await loadPolicy(file));
  const findings = staticChecks(runtime, await findingsOf(builtinPlugins));
  await runtime.services.state.close();
  const lines = await formatFindings(runtime.policy.file, findings);
  const errors = findings.filter((f) => f.severity === "error").length;
  const warnings = findings.length - errors;
  const failed = errors > 0 || (options.strict === true && warnings > 0);
  const counts =
    findings.length === 0
      ? "ok"
      : `${errors} error${errors === 1 ? "" : "s"}, ${warnings} warning${warnings === 1 ? "" : "s"}`;
  return { code: failed ? 1 : 0, lines: [...lines, `${file}: ${counts}`] };
}
