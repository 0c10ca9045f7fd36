/**
 * Where the application hands the built-in plugins to the core: the policy loader of `start`,
 * `check`, `try`, `test`, `replay` and the test kit knows them by name through this file alone.
 * The core itself never imports plugins/.
 */
import type { LoadedPolicy } from "../core/policy/load.js";
import * as policy from "../core/policy/load.js";
import { builtinPlugins } from "../plugins/index.js";

/** Reads and validates a policy file whose `plugin:` names may be built-in plugins. */
export function loadPolicy(file: string): Promise<LoadedPolicy> {
  return policy.loadPolicy(file, builtinPlugins);
}

/** Validates policy text whose `plugin:` names may be built-in plugins. */
export function parsePolicy(source: string, file: string): Promise<LoadedPolicy> {
  return policy.parsePolicy(source, file, builtinPlugins);
}
