/**
 * The published test kit (`portcullis/testkit`): the core's test kit (core/engine/testkit.ts) with
 * the built-in plugins available to the policies it loads, as they are to `portcullis start`.
 */
import * as kit from "../core/engine/testkit.js";
import type { LoadedPolicy } from "../core/policy/load.js";
import { builtinPlugins } from "../plugins/index.js";

export * from "../core/engine/testkit.js";

/** Builds the runtime of a policy (a file path or a loaded policy) for simulations. */
export function policyRuntime(policy: string | LoadedPolicy, options: kit.KitOptions = {}) {
  return kit.policyRuntime(policy, { catalogue: builtinPlugins, ...options });
}

/** Loads a policy file and simulates one transaction through it. */
export function runPolicy(
  policy: string | LoadedPolicy,
  input: kit.SimulatedTransaction,
  options: kit.KitOptions = {},
) {
  return kit.runPolicy(policy, input, { catalogue: builtinPlugins, ...options });
}
