/** DMARC's decisions as pure functions of what the lookups found (RFC 7489 §3.1, §6.6.4). */
import type { DmarcPolicy } from "../shared/sender-auth/facts.js";

/**
 * The first of `domains` aligned with the From domain. Relaxed alignment compares organizational
 * domains: any name at or under the From domain's organizational domain shares it. Strict needs
 * the exact From domain. (mailauth's own check treats strict as relaxed, hence this.)
 */
export function alignedDomain(
  fromDomain: string,
  orgDomain: string,
  domains: readonly string[],
  strict: boolean,
): string | null {
  const match = (domain: string) =>
    strict ? domain === fromDomain : domain === orgDomain || domain.endsWith(`.${orgDomain}`);
  return domains.find((domain) => match(domain.toLowerCase())) ?? null;
}

export interface PolicyInput {
  readonly policy: DmarcPolicy;
  readonly pct: number;
  /** Uniform in [0, 1): the message is subject to the policy when `sample * 100 < pct`. */
  readonly sample: number;
  readonly arcTrusted: boolean;
  readonly trustedClient: boolean;
  readonly rejectAs: "reject" | "quarantine";
}

export interface AppliedPolicy {
  readonly applied: DmarcPolicy;
  readonly override: "pct" | "arc" | "trusted-client" | null;
}

/** What a DMARC failure leads to. A message left out by pct gets the next weaker policy. */
export function applyPolicy(input: PolicyInput): AppliedPolicy {
  if (input.trustedClient) return { applied: "none", override: "trusted-client" };
  if (input.arcTrusted) return { applied: "none", override: "arc" };
  const sampled = input.sample * 100 < input.pct;
  const weaker: DmarcPolicy = input.policy === "reject" ? "quarantine" : "none";
  const policy = sampled ? input.policy : weaker;
  const applied = policy === "reject" ? input.rejectAs : policy;
  return { applied, override: sampled || input.policy === "none" ? null : "pct" };
}
