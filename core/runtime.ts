/**
 * Everything compiled from one policy version: set-up plugins, relay access, router, services.
 * Built once per (re)load, never per message.
 */
import type { Logger } from "pino";
import type { Clock, Services } from "./api.js";
import { createResolver, type DnsResolver } from "./dns.js";
import type { ActivePlugin } from "./pipeline.js";
import type { LoadedPolicy } from "./policy/load.js";
import type { PolicyConfig } from "./policy/schema.js";
import { compileRelayAccess, type RelayAccess } from "./relay.js";
import { Router } from "./routes.js";
import { compileRules, findingCatalogue, hookPhases, type RuleSet } from "./rules/compile.js";
import type { StateStore } from "./state.js";

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
    const hooks = await entry.definition.setup(entry.options, {
      ...services,
      log: deps.log.child({ plugin: entry.name }),
    });
    plugins.push({ entry, hooks });
  }
  return {
    policy,
    config,
    plugins,
    relay: compileRelayAccess(config.relay),
    router: new Router(config.routes),
    rules: compileRules(
      config.rules,
      findingCatalogue(
        plugins.map((p) => ({ name: p.entry.name, definition: p.entry.definition, phases: hookPhases(p) })),
      ),
    ),
    services,
  };
}
