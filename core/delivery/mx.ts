/**
 * Delivery by MX (RFC 5321 §5.1): which hosts a domain's mail goes to, and trying them in order.
 * `resolveMxHosts` is pure logic over the resolver's answers (tested with a fake resolver);
 * `deliverMx` walks the plan with `deliverSmtp`.
 */
import type { Reply } from "../contract/decision.js";
import type { DnsResolver } from "../dns/resolver.js";
import { type MtaStsCache, mxMatches } from "./mta-sts.js";
import { type DeliveryResult, sameForAll } from "./result.js";
import { deliverSmtp, type MessageSource, type SmtpDeliveryOptions, type SmtpEnvelope } from "./smtp.js";

/** The only resolver methods MX delivery uses, so tests can fake just these. */
export type MxResolver = Pick<DnsResolver, "resolveMx" | "resolve4" | "resolve6">;

export interface MxHost {
  /** Lower-case, without the trailing dot. */
  readonly exchange: string;
  readonly priority: number;
  /** IPv4 first, then IPv6: a gateway without IPv6 routing still reaches the host at once. */
  readonly addresses: string[];
}

export type MxPlan =
  | { readonly kind: "hosts"; readonly hosts: MxHost[] }
  /** RFC 7505: the domain says it accepts no mail. */
  | { readonly kind: "nullMx" }
  /** NXDOMAIN, or neither MX nor address records: nobody can receive mail for it. */
  | { readonly kind: "nodomain" }
  /** A lookup failed temporarily (SERVFAIL, timeout…); `code` is the resolver's error code. */
  | { readonly kind: "temperror"; readonly code: string };

/**
 * Works out where mail for `domain` (lower-case ASCII) goes. Hosts are ordered by preference,
 * equal preferences in random order (RFC 5321 §5.1 asks senders to spread load). A domain without
 * MX records is its own host (implicit MX). Hosts whose addresses cannot be found are left out;
 * if that leaves none and a lookup failed temporarily, the plan is `temperror`.
 */
export async function resolveMxHosts(
  domain: string,
  dns: MxResolver,
  signal?: AbortSignal,
  random: () => number = Math.random,
): Promise<MxPlan> {
  let records: Array<{ exchange: string; priority: number }>;
  try {
    records = await dns.resolveMx(domain, signal);
  } catch (error) {
    const code = errorCode(error);
    if (code === "ENOTFOUND") return { kind: "nodomain" };
    if (code !== "ENODATA") return { kind: "temperror", code };
    records = [];
  }

  if (records.length === 0) {
    const implicit = await addressesOf(domain, dns, signal);
    if (implicit.temperror) return { kind: "temperror", code: implicit.temperror };
    if (implicit.addresses.length === 0) return { kind: "nodomain" };
    return { kind: "hosts", hosts: [{ exchange: domain, priority: 0, addresses: implicit.addresses }] };
  }

  const named = records
    .map((record) => ({ exchange: record.exchange.toLowerCase().replace(/\.$/, ""), priority: record.priority }))
    // A lone "." (Node reports the root as "") is a null MX; among real hosts it is just unusable.
    .filter((record, _, all) => record.exchange !== "" || all.length === 1);
  if (named.length === 1 && named[0].exchange === "") return { kind: "nullMx" };

  const ordered = shuffle(named, random).sort((a, b) => a.priority - b.priority);
  const resolved = await Promise.all(ordered.map((record) => addressesOf(record.exchange, dns, signal)));
  const hosts = ordered
    .map((record, i) => ({ ...record, addresses: resolved[i].addresses }))
    .filter((host) => host.addresses.length > 0);
  const temperror = resolved.find((r) => r.temperror)?.temperror;
  if (hosts.length === 0 && temperror) return { kind: "temperror", code: temperror };
  return { kind: "hosts", hosts };
}

/** At most this many addresses per attempt (Postfix's smtp_mx_address_limit): a domain listing dozens
 * of dead hosts must not hold a delivery slot for dozens of connect timeouts. */
const MAX_ADDRESSES = 5;

export interface MxDeliveryOptions extends SmtpDeliveryOptions {
  /** For tests: the order among MX hosts of equal preference. */
  readonly random?: () => number;
  /** For tests: the port to connect to (25 in real life). */
  readonly port?: number;
  /** Whether an MX host is this gateway (its name, or one of its listening addresses on `port`). */
  readonly isSelf?: (exchange: string, address: string) => boolean;
  /** MTA-STS policies of recipient domains; none looked up when absent. */
  readonly mtaSts?: Pick<MtaStsCache, "policyFor">;
}

/**
 * RFC 5321 §5.1: when this gateway is itself one of the MX hosts, only hosts more preferred than
 * ourselves may be tried; if none is, the mail would loop back to us. Pure.
 */
export function pruneSelf(hosts: readonly MxHost[], isSelf: (exchange: string, address: string) => boolean): MxHost[] {
  const own = hosts.filter((host) => host.addresses.some((address) => isSelf(host.exchange, address)));
  if (own.length === 0) return [...hosts];
  const ownPriority = Math.min(...own.map((host) => host.priority));
  return hosts.filter((host) => host.priority < ownPriority);
}

/**
 * Delivers to `domain`'s MX hosts. Addresses are tried in plan order until one holds an SMTP
 * session; its answer (accept, 4xx, 5xx) ends the attempt. `message` is called once per address
 * tried, since a stream can be read only once. `options.timeoutMs` applies to each address.
 */
export async function deliverMx(
  domain: string,
  envelope: SmtpEnvelope,
  message: MessageSource,
  dns: MxResolver,
  options: MxDeliveryOptions,
): Promise<DeliveryResult> {
  const plan = await resolveMxHosts(domain, dns, options.signal, options.random);
  const all = (reply: Reply) => sameForAll(envelope.to, reply, domain);
  switch (plan.kind) {
    case "nullMx":
      return all({ code: 550, enhanced: "5.1.10", text: "Recipient address has null MX" });
    case "nodomain":
      return all({ code: 550, enhanced: "5.1.2", text: "Bad destination domain" });
    case "temperror":
      return all({ code: 451, enhanced: "4.4.3", text: `DNS lookup failed (${plan.code})` });
    case "hosts":
      break;
  }
  let hosts = plan.hosts;
  if (options.isSelf) {
    hosts = pruneSelf(hosts, options.isSelf);
    if (hosts.length === 0 && plan.hosts.length > 0) {
      return all({ code: 550, enhanced: "5.4.6", text: `Mail for ${domain} loops back to myself` });
    }
  }
  // RFC 8461 §5: in enforce mode only MX hosts the policy names, only over verified TLS.
  const sts = await options.mtaSts?.policyFor(domain, options.signal);
  const enforce = sts?.mode === "enforce";
  if (enforce) {
    hosts = hosts.filter((host) => mxMatches(sts, host.exchange));
    if (hosts.length === 0) {
      return all({ code: 451, enhanced: "4.7.5", text: `No MX host of ${domain} matches its MTA-STS policy` });
    }
  }
  const candidates = hosts
    .flatMap((host) => host.addresses.map((address) => ({ exchange: host.exchange, address })))
    .slice(0, MAX_ADDRESSES);
  if (candidates.length === 0) {
    return all({ code: 451, enhanced: "4.4.4", text: `No address found for any MX host of ${domain}` });
  }
  const tls: Partial<SmtpDeliveryOptions> = enforce ? { tls: "required", rejectUnauthorized: true } : {};
  let last: DeliveryResult | undefined;
  for (const { exchange, address } of candidates) {
    if (options.signal?.aborted) break;
    last = await deliverSmtp({ host: address, port: options.port ?? 25, servername: exchange }, envelope, message(), {
      ...options,
      ...tls,
    });
    if (!last.unreachable) return last;
  }
  return last ?? all({ code: 451, enhanced: "4.4.1", text: "Delivery aborted" });
}

async function addressesOf(
  name: string,
  dns: MxResolver,
  signal: AbortSignal | undefined,
): Promise<{ addresses: string[]; temperror?: string }> {
  const answers = await Promise.allSettled([dns.resolve4(name, signal), dns.resolve6(name, signal)]);
  const addresses: string[] = [];
  let temperror: string | undefined;
  for (const answer of answers) {
    if (answer.status === "fulfilled") addresses.push(...answer.value);
    else {
      const code = errorCode(answer.reason);
      if (code !== "ENOTFOUND" && code !== "ENODATA") temperror ??= code;
    }
  }
  // One family answering is enough to deliver; a temporary error only matters when nothing answered.
  return addresses.length > 0 ? { addresses } : { addresses, temperror };
}

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : "EUNKNOWN";
}

/** Fisher–Yates; `sort` is stable, so the shuffle survives within each preference. */
function shuffle<T>(items: T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}
