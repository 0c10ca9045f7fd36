/**
 * MTA-STS for outbound mail (RFC 8461): a recipient domain publishes `_mta-sts.DOMAIN` TXT and a
 * policy file over HTTPS listing its MX names; in `enforce` mode we deliver only to those MX hosts,
 * only over TLS with a certificate valid for the MX name.
 *
 * Parsing is pure (tested by tables); `MtaStsCache` does the lookups, caches policies for their
 * max_age, and takes the fetch as a function, so tests serve policies from loopback.
 */
import type { Clock } from "../api.js";
import type { DnsResolver } from "../dns.js";

export interface MtaStsPolicy {
  readonly mode: "enforce" | "testing" | "none";
  /** MX patterns: exact names or `*.example.test` (one leftmost label). */
  readonly mx: readonly string[];
  /** Seconds. */
  readonly maxAge: number;
}

/** Gets the policy text of a domain; throws when there is none to be had (HTTP error, timeout…). */
export type PolicyFetch = (domain: string, signal?: AbortSignal) => Promise<string>;

/** RFC 8461 §3.2: the largest max_age a policy may ask for (about a year). */
const MAX_AGE_LIMIT = 31_557_600;
const MAX_POLICY_BYTES = 64 * 1024;

/** The `id` of a valid `v=STSv1` record; undefined when there is none or more than one (§3.1). */
export function parseMtaStsRecord(txt: readonly (readonly string[])[]): string | undefined {
  const records = txt.map((chunks) => chunks.join("")).filter((text) => /^v=STSv1\s*(;|$)/.test(text));
  if (records.length !== 1) return undefined;
  const id = /(?:^|;)\s*id=([A-Za-z0-9]{1,32})\s*(?:;|$)/.exec(records[0]);
  return id?.[1];
}

/** Parses a policy file (§3.2); undefined when it is not a valid STSv1 policy. */
export function parseMtaStsPolicy(text: string): MtaStsPolicy | undefined {
  const fields = new Map<string, string[]>();
  for (const line of text.split(/\r?\n/)) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const key = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    fields.set(key, [...(fields.get(key) ?? []), value]);
  }
  const version = fields.get("version")?.[0];
  const mode = fields.get("mode")?.[0];
  const maxAge = Number(fields.get("max_age")?.[0]);
  const mx = (fields.get("mx") ?? []).map((pattern) => pattern.toLowerCase().replace(/\.$/, ""));
  if (version !== "STSv1") return undefined;
  if (mode !== "enforce" && mode !== "testing" && mode !== "none") return undefined;
  if (!Number.isInteger(maxAge) || maxAge < 0) return undefined;
  if (mode !== "none" && mx.length === 0) return undefined;
  return { mode, mx, maxAge: Math.min(maxAge, MAX_AGE_LIMIT) };
}

/** §4.1: `*.example.test` matches exactly one more label on the left. */
export function mxMatches(policy: MtaStsPolicy, host: string): boolean {
  const name = host.toLowerCase().replace(/\.$/, "");
  return policy.mx.some((pattern) => {
    if (!pattern.startsWith("*.")) return pattern === name;
    const suffix = pattern.slice(1);
    return name.endsWith(suffix) && !name.slice(0, -suffix.length).includes(".") && name.length > suffix.length;
  });
}

/**
 * Fetches `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (or the policy's `policyUrl` with
 * `{domain}` filled in): no redirects (§3.3), text/plain only, size-capped, certificate verified.
 */
export function httpPolicyFetch(urlTemplate: string, timeoutMs = 10_000): PolicyFetch {
  return async (domain, signal) => {
    const url = urlTemplate.replaceAll("{domain}", domain);
    const deadline = AbortSignal.timeout(timeoutMs);
    const response = await fetch(url, {
      redirect: "error",
      signal: signal ? AbortSignal.any([signal, deadline]) : deadline,
    });
    if (response.status !== 200) throw new Error(`MTA-STS policy of ${domain}: HTTP ${response.status}`);
    if (!(response.headers.get("content-type") ?? "").toLowerCase().startsWith("text/plain")) {
      throw new Error(`MTA-STS policy of ${domain}: not text/plain`);
    }
    const body = await response.text();
    if (body.length > MAX_POLICY_BYTES) throw new Error(`MTA-STS policy of ${domain}: too large`);
    return body;
  };
}

interface Cached {
  readonly id: string;
  readonly policy: MtaStsPolicy;
  readonly expiresAt: number;
}

/** Policies by domain, refreshed when the TXT record's id changes or max_age runs out (§5.1). */
export class MtaStsCache {
  readonly #cache = new Map<string, Cached>();

  constructor(
    private readonly dns: Pick<DnsResolver, "resolveTxt">,
    private readonly fetchPolicy: PolicyFetch,
    private readonly clock: Clock,
  ) {}

  /** The policy to apply to `domain` now; null when it has none (or none could be had). */
  async policyFor(domain: string, signal?: AbortSignal): Promise<MtaStsPolicy | null> {
    const now = this.clock.now();
    const cached = this.#cache.get(domain);
    const fresh = cached && cached.expiresAt > now ? cached : undefined;
    let id: string | undefined;
    try {
      id = parseMtaStsRecord(await this.dns.resolveTxt(`_mta-sts.${domain}`, signal));
    } catch {
      id = undefined;
    }
    // No record (or no answer): a policy cached earlier still holds until it expires (§5.1).
    if (id === undefined) return fresh?.policy ?? null;
    if (fresh && fresh.id === id) return fresh.policy;
    try {
      const policy = parseMtaStsPolicy(await this.fetchPolicy(domain, signal));
      if (!policy) return fresh?.policy ?? null;
      this.#cache.set(domain, { id, policy, expiresAt: now + policy.maxAge * 1000 });
      return policy;
    } catch {
      return fresh?.policy ?? null;
    }
  }
}
