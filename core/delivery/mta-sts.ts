/**
 * MTA-STS for outbound mail (RFC 8461): a recipient domain publishes `_mta-sts.DOMAIN` TXT and a
 * policy file over HTTPS listing its MX names; in `enforce` mode we deliver only to those MX hosts,
 * only over TLS with a certificate valid for the MX name.
 *
 * Parsing is pure (tested by tables); `MtaStsCache` does the lookups, caches policies for their
 * max_age, and takes the fetch as a function, so tests serve policies from loopback. A domain whose
 * policy cannot be had (no record, or a fetch that fails for any reason) has no policy, unless one
 * fetched earlier has not yet expired: that one still applies (§3.3, §5.1).
 */
import { request as httpsRequest } from "node:https";
import { isIP } from "node:net";
import type { Clock } from "../contract/api.js";
import type { DnsResolver } from "../dns/resolver.js";

export interface MtaStsPolicy {
  readonly mode: "enforce" | "testing" | "none";
  /** MX patterns: exact names or `*.example.test` (one leftmost label). */
  readonly mx: readonly string[];
  /** Seconds. */
  readonly maxAge: number;
}

/** The lookups MTA-STS needs: the `_mta-sts` record and the policy host's address. */
export type PolicyHostResolver = Pick<DnsResolver, "resolve4" | "resolve6">;

/**
 * Gets the policy text of a domain, finding the policy host through `dns`; throws when there is
 * none to be had (HTTP error, refused certificate, timeout…).
 */
export type PolicyFetch = (domain: string, dns: PolicyHostResolver, signal?: AbortSignal) => Promise<string>;

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

export interface PolicyFetchOptions {
  readonly timeoutMs?: number;
  /** Trust anchors for the policy host's certificate (PEM); the system's when absent. */
  readonly ca?: string | Buffer | Array<string | Buffer>;
}

/**
 * Fetches the policy from `urlTemplate` with `{domain}` filled in (in real life
 * `https://mta-sts.{domain}/.well-known/mta-sts.txt`, the policy's `delivery.mtaSts.policyUrl`) with the
 * protections of §3.3: HTTPS only, the certificate verified for the policy host's name, a redirect
 * is a failure (not followed), the media type must be text/plain, and a body past 64 KiB is
 * abandoned as it arrives. The host is looked up through `dns`, the gateway's own resolver, like
 * every other name the gateway needs.
 */
export function httpPolicyFetch(urlTemplate: string, options: PolicyFetchOptions = {}): PolicyFetch {
  return async (domain, dns, signal) => {
    const url = new URL(urlTemplate.replaceAll("{domain}", domain));
    if (url.protocol !== "https:") throw new Error(`MTA-STS policy of ${domain}: ${url.protocol} is not HTTPS`);
    const deadline = AbortSignal.timeout(options.timeoutMs ?? 10_000);
    const abort = signal ? AbortSignal.any([signal, deadline]) : deadline;
    const host = url.hostname.replace(/^\[|\]$/g, "");
    const address = isIP(host) ? host : await addressOf(host, dns, abort);
    return new Promise<string>((resolve, reject) => {
      const fail = (why: string) => reject(new Error(`MTA-STS policy of ${domain}: ${why}`));
      const request = httpsRequest(
        {
          host: address,
          port: url.port || 443,
          path: `${url.pathname}${url.search}`,
          headers: { host: url.host },
          // The certificate must be valid for the name in the URL, not for the address we connect to.
          servername: isIP(host) ? undefined : host,
          ...(options.ca ? { ca: options.ca } : {}),
          rejectUnauthorized: true,
          agent: false,
          signal: abort,
        },
        (response) => {
          const refuse = (why: string) => {
            fail(why);
            response.destroy();
          };
          const type = (response.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
          if (response.statusCode !== 200) return refuse(`HTTP ${response.statusCode}`);
          if (type !== "text/plain") return refuse(`content type "${type}", not text/plain`);
          const chunks: Buffer[] = [];
          let size = 0;
          response.on("data", (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_POLICY_BYTES) return refuse(`larger than ${MAX_POLICY_BYTES} bytes`);
            chunks.push(chunk);
          });
          response.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
          response.on("error", (error) => fail(error.message));
        },
      );
      request.on("error", (error) => fail(error.message));
      request.end();
    });
  };
}

async function addressOf(host: string, dns: PolicyHostResolver, signal: AbortSignal): Promise<string> {
  const answers = await Promise.allSettled([dns.resolve4(host, signal), dns.resolve6(host, signal)]);
  const address = answers.flatMap((answer) => (answer.status === "fulfilled" ? answer.value : []))[0];
  if (address === undefined) throw new Error(`MTA-STS policy host ${host} has no address`);
  return address;
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
    private readonly dns: Pick<DnsResolver, "resolveTxt"> & PolicyHostResolver,
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
      const policy = parseMtaStsPolicy(await this.fetchPolicy(domain, this.dns, signal));
      if (!policy) return fresh?.policy ?? null;
      this.#cache.set(domain, { id, policy, expiresAt: now + policy.maxAge * 1000 });
      return policy;
    } catch {
      return fresh?.policy ?? null;
    }
  }
}
