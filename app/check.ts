/** `portcullis check FILE [--strict]`: the policy validated, its plugins set up, the static checks run. */

import { systemClock } from "../core/contract/api.js";
import { buildRuntime } from "../core/engine/runtime.js";
import { discardingLogger } from "../core/observability/module-log.js";
import { findingsOf, formatFindings, looksBeyondPipeline, staticChecks } from "../core/policy/static-checks.js";
import { MemoryStore } from "../core/state/memory.js";
import { builtinPlugins } from "../plugins/index.js";
import { loadPolicy } from "./catalogue.js";

// Only what a check needs, for start-up time: the runtime itself, not the test kit's session engine,
// delivery and logger; the built-in plugins the policy does not name only when a rule looks beyond
// the pipeline (test/app/lazy-dependencies.test.ts).

/**
 * `portcullis check FILE [--strict]`: loads the policy, sets up its plugins (as `start` would),
 * runs the static checks. Exit 1 on an error, or on a warning with `strict`.
 */
export async function checkPolicy(
  file: string,
  options: { strict?: boolean } = {},
): Promise<{ code: number; lines: string[] }> {
  const runtime = await buildRuntime(await loadPolicy(file), {
    log: discardingLogger(),
    clock: systemClock,
    state: new MemoryStore({ clock: systemClock }),
  });
  const known = looksBeyondPipeline(runtime) ? await findingsOf(builtinPlugins) : new Map();
  const findings = staticChecks(runtime, known);
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
