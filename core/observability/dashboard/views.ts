/**
 * The JSON each dashboard page is drawn from, read from a running gateway: its activity ring,
 * its queue (the code `portcullis queue` runs), its readiness checks (/readyz) and the counters the
 * metrics already keep for shadow differences and observe-mode rules.
 */

import type { Gateway } from "../../smtp/gateway.js";
import type { Check } from "../http.js";
import { gatewayReadiness } from "../http.js";
import type { Activity, Charted } from "./activity.js";

export interface Overview {
  readonly totals: Record<Charted, number>;
  readonly series: ReturnType<Activity["series"]>;
  readonly recent: number;
  readonly queue: { readonly size: number; readonly oldestSeconds: number };
  readonly health: {
    readonly dns: {
      readonly servers: readonly string[];
      readonly queries: number;
      readonly cacheHits: number;
      readonly errors: Readonly<Record<string, number>>;
    };
    /** Redis (null with the memory store). */
    readonly state: Check | null;
    readonly spool: Check;
  };
  readonly policy: PolicyState;
}

export interface PolicyState {
  readonly file: string;
  readonly hash: string;
  /** sha256 of the file on disk now; null when it cannot be read. */
  readonly fileHash: string | null;
  readonly loadedAt: string;
  readonly lastReload: { readonly at: string; readonly ok: boolean } | null;
  readonly restartNeeded: readonly string[];
}

export interface PolicyView extends PolicyState {
  readonly pipeline: ReadonlyArray<{ readonly name: string; readonly onError: string }>;
  readonly rules: ReadonlyArray<{ readonly name: string; readonly mode: string }>;
  readonly shadow: string | null;
  readonly shadowDifferences: ReadonlyArray<{ rule: string; live: string; candidate: string; count: number }>;
  readonly observed: ReadonlyArray<{ rule: string; phase: string; count: number }>;
}

async function policyState(
  gateway: Gateway,
  activity: Activity,
): Promise<PolicyState & { checks: Record<string, Check> }> {
  const readiness = await gatewayReadiness(gateway);
  const { policy } = gateway.runtime;
  return {
    file: policy.file,
    hash: policy.hash,
    fileHash: readiness.policy?.file ?? null,
    ...activity.policyState(),
    restartNeeded: readiness.policy?.restartNeeded ?? [],
    checks: { ...readiness.checks },
  };
}

export async function overview(gateway: Gateway, activity: Activity): Promise<Overview> {
  const { checks, ...policy } = await policyState(gateway, activity);
  const entries = gateway.queue.spool?.entries() ?? [];
  const oldest = entries.reduce((min, entry) => Math.min(min, entry.envelope.arrivedAt), Number.POSITIVE_INFINITY);
  const { services, config } = gateway.runtime;
  const dns = services.dns.stats();
  return {
    totals: activity.totals(),
    series: activity.series(),
    recent: activity.size,
    queue: {
      size: entries.length,
      oldestSeconds: entries.length === 0 ? 0 : Math.max(0, Math.round((gateway.clock.now() - oldest) / 1000)),
    },
    health: {
      dns: {
        servers: config.dns.servers ?? ["system resolver"],
        queries: dns.queries,
        cacheHits: dns.hits,
        errors: dns.errors,
      },
      state: checks.state ?? null,
      spool: checks.spool,
    },
    policy,
  };
}

/** A counter's samples from the gateway's metrics registry, as label sets and values. */
async function samples(
  gateway: Gateway,
  name: string,
): Promise<Array<{ labels: Record<string, string>; value: number }>> {
  const metric = gateway.metrics?.registry.getSingleMetric(name);
  if (!metric) return [];
  const { values } = await metric.get();
  return values
    .filter((sample) => sample.value > 0)
    .map((sample) => ({
      labels: Object.fromEntries(Object.entries(sample.labels).map(([key, value]) => [key, String(value)])),
      value: sample.value,
    }));
}

export async function policyView(gateway: Gateway, activity: Activity): Promise<PolicyView> {
  const { checks: _checks, ...state } = await policyState(gateway, activity);
  const { config, plugins } = gateway.runtime;
  const differences = await samples(gateway, "portcullis_shadow_differences_total");
  const observed = await samples(gateway, "portcullis_rule_observed_total");
  return {
    ...state,
    pipeline: plugins.map(({ entry }) => ({ name: entry.name, onError: entry.onError.type })),
    rules: config.rules.map((rule) => ({ name: rule.name, mode: rule.mode })),
    shadow: config.shadow ?? null,
    shadowDifferences: differences
      .map(({ labels, value }) => ({
        rule: labels.rule ?? "",
        live: labels.live ?? "",
        candidate: labels.candidate ?? "",
        count: value,
      }))
      .sort((a, b) => b.count - a.count),
    observed: observed
      .map(({ labels, value }) => ({ rule: labels.rule ?? "", phase: labels.phase ?? "", count: value }))
      .sort((a, b) => b.count - a.count),
  };
}
