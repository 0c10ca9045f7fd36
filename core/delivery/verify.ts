/**
 * Recipient verification at RCPT time (a route's `verify: rcpt`): before a recipient of one of our
 * domains is accepted, the route's next hop is asked whether it exists, so mail for unknown users is
 * refused while the client waits instead of accepted and bounced later (to a sender that is
 * usually forged: backscatter). Postfix's `reject_unverified_recipient` is the model.
 *
 * Answers are cached: a recipient the next hop took is known for `positiveTtl`, one it refused for
 * the shorter `negativeTtl` (a new mailbox should not stay refused for long). Having no answer —
 * next hop down, 4xx, timeout — is never cached and never accepts: the client hears 4xx and retries.
 */
import type { Clock } from "../contract/api.js";
import type { Reply } from "../contract/decision.js";
import type { ConnectionPool } from "./pool.js";
import { type RouteSpec, routeKey } from "./routes.js";
import { probeRecipient } from "./smtp.js";
import { parseRouteTarget } from "./target.js";

export type Verification =
  | { readonly kind: "exists" }
  /** The next hop refused the recipient (5xx): its reply. */
  | { readonly kind: "unknown"; readonly reply: Reply }
  /** No answer to go by; `reason` is for the log, never for the client. */
  | { readonly kind: "unverified"; readonly reason: string };

export interface VerifySettings {
  /** Our EHLO name. */
  readonly hostname: string;
  readonly timeoutMs: number;
  readonly positiveTtlMs: number;
  readonly negativeTtlMs: number;
  readonly cacheSize: number;
}

export interface RecipientVerifier {
  verify(route: RouteSpec, address: string, settings: VerifySettings): Promise<Verification>;
}

/** For engines without next-hop connections (the test kit, `portcullis try`): nothing is verified. */
export const NO_VERIFIER: RecipientVerifier = Object.freeze({
  verify: async () => ({ kind: "unverified" as const, reason: "recipient verification needs a running gateway" }),
});

/** Asks next hops over the delivery connection pool and remembers their answers. */
export class NextHopVerifier implements RecipientVerifier {
  /** Key → answer and expiry; Map order is insertion order, so the first entry is the oldest. */
  readonly #cache = new Map<string, { answer: Verification; expires: number }>();
  /** Probes in flight, so concurrent RCPTs for one address ask the next hop once. */
  readonly #asking = new Map<string, Promise<Verification>>();
  /** Probes sent to next hops so far (tests and metrics). */
  probes = 0;

  constructor(
    private readonly pool: ConnectionPool,
    private readonly clock: Clock,
  ) {}

  async verify(route: RouteSpec, address: string, settings: VerifySettings): Promise<Verification> {
    const key = `${routeKey(route)}\n${address.toLowerCase()}`;
    const cached = this.#cache.get(key);
    if (cached && cached.expires > this.clock.now()) return cached.answer;
    if (cached) this.#cache.delete(key);
    let asking = this.#asking.get(key);
    if (!asking) {
      asking = this.#ask(route, address, settings).finally(() => this.#asking.delete(key));
      this.#asking.set(key, asking);
    }
    const answer = await asking;
    if (answer.kind !== "unverified") this.#remember(key, answer, settings);
    return answer;
  }

  #remember(key: string, answer: Verification, settings: VerifySettings): void {
    const ttl = answer.kind === "exists" ? settings.positiveTtlMs : settings.negativeTtlMs;
    this.#cache.delete(key);
    this.#cache.set(key, { answer, expires: this.clock.now() + ttl });
    while (this.#cache.size > settings.cacheSize) this.#cache.delete(this.#cache.keys().next().value!);
  }

  /** The route's hosts in order; the next one is asked only when the previous could not be reached. */
  async #ask(route: RouteSpec, address: string, settings: VerifySettings): Promise<Verification> {
    let reason = "the route has no next hop to ask";
    for (const text of route.to) {
      const target = parseRouteTarget(text);
      if (target?.kind !== "smtp" && target?.kind !== "lmtp")
        return { kind: "unverified", reason: `cannot ask ${text}` };
      this.probes++;
      const probe = await probeRecipient(
        { host: target.host, port: target.port, lmtp: target.kind === "lmtp", servername: route.tls?.sni },
        address,
        {
          name: settings.hostname,
          timeoutMs: settings.timeoutMs,
          pool: this.pool,
          ...(route.tls ? { tls: route.tls.mode, rejectUnauthorized: route.tls.verify } : {}),
          ...(route.connections ? { connectionLimit: route.connections } : {}),
          ...(route.sourceAddress ? { localAddress: route.sourceAddress } : {}),
        },
      );
      if (probe.kind === "answered") {
        if (probe.reply.code < 300) return { kind: "exists" };
        if (probe.reply.code >= 500) return { kind: "unknown", reply: probe.reply };
        return {
          kind: "unverified",
          reason: `${probe.nextHop}: ${probe.reply.code} ${probe.reply.enhanced} ${probe.reply.text}`,
        };
      }
      reason = probe.reason;
      if (!probe.unreachable) break;
    }
    return { kind: "unverified", reason };
  }
}
