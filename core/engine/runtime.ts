/**
 * Everything compiled from one policy version: set-up plugins, relay access, router, services.
 * Built once per (re)load, never per message.
 */
import type { Logger } from "pino";
import type { Clock, Services } from "../contract/api.js";
import { Router } from "../delivery/routes.js";
import { createResolver, type DnsResolver } from "../dns/resolver.js";
import { moduleLogger } from "../observability/module-log.js";
import { type LoadedPolicy, PolicyError, problemAt } from "../policy/load.js";
import { compileRelayAccess, type RelayAccess } from "../policy/relay.js";
import { compileRules, findingCatalogue, hookPhases, type RuleSet } from "../policy/rules/compile.js";
import type { PolicyConfig } from "../policy/schema.js";
import type { StateStore } from "../state/create.js";
import type { ActivePlugin } from "./pipeline.js";

export interface Runtime {
  readonly policy: LoadedPolicy;
  readonly config: PolicyConfig;
  readonly plugins: readonly ActivePlugin[];
  readonly relay: RelayAccess;
  readonly router: Router;
  /** The policy's rules, compiled against the findings its plugins declare (core/rules). */
  readonly rules: RuleSet;
  readonly services: Services;
}

export interface RuntimeDependencies {
  readonly log: Logger;
  readonly clock: Clock;
  readonly state: StateStore;
  /** A resolver to use instead of one built from `dns:` (the test kit and `try --dns` pass theirs). */
  readonly dns?: DnsResolver;
}

/** Sets up every plugin of a policy with the shared services; a setup failure rejects the policy. */
export async function buildRuntime(policy: LoadedPolicy, deps: RuntimeDependencies): Promise<Runtime> {
  const { config } = policy;
  const services: Services = {
    dns:
      deps.dns ??
      createResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeout, cacheSize: config.dns.cacheSize }),
    state: deps.state,
    log: deps.log,
    clock: deps.clock,
    hostname: config.server.hostname,
    policyDir: policy.dir,
  };
  const plugins: ActivePlugin[] = [];
  for (const entry of policy.pipeline) {
    let hooks: ActivePlugin["hooks"];
    try {
      hooks = await entry.definition.setup(entry.options, {
        ...services,
        log: moduleLogger(deps.log, `plugin:${entry.name}`, config.observability.log.levels, { plugin: entry.name }),
      });
    } catch (error) {
      // Located like a load problem, so `check` and `start` say which entry failed and what to do.
      const at = ["pipeline", entry.index, "plugin"];
      const problem = await problemAt(policy.file, at, setupFailure(entry.name, error), "key");
      throw new PolicyError([{ ...problem, path: `pipeline.${entry.index}` }]);
    }
    plugins.push({ entry, hooks });
  }
  return {
    policy,
    config,
    plugins,
    relay: compileRelayAccess(config.relay),
    router: new Router(config.routes, { postmaster: config.relay.postmaster }),
    rules: compileRules(
      config.rules,
      findingCatalogue(
        plugins.map((p) => ({ name: p.entry.name, definition: p.entry.definition, phases: hookPhases(p) })),
      ),
    ),
    services,
  };
}

/** What a plugin's failed setup means for the operator: what went wrong and what to do. */
function setupFailure(name: string, error: unknown): string {
  const { code, path } = (error ?? {}) as NodeJS.ErrnoException;
  if (typeof code === "string" && typeof path === "string") {
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code;
    return `plugin ${name}: cannot read ${path} (${why}) — create the file, or correct its path in this entry's options (relative paths start at the policy's folder)`;
  }
  const text = (error instanceof Error ? error.message : String(error)).replace(`${name}: `, "");
  return `plugin ${name}: setup failed: ${text} — correct this entry's options (see the plugin's README)`;
}
