/**
 * Route matching: the policy's `routes:` list, first match wins. Pure: tested by tables in
 * test/delivery/routes.test.ts; delivery asks `routeFor` and gets a `RouteSpec`, a plain value that the queue
 * stores with each recipient (the facts a route may depend on — tags, the listener — are gone once
 * the transaction has ended).
 */
import { asciiDomain, DomainSet } from "../toolkit/address.js";
import { NetworkList, normalizeIp, parseHostPort } from "../toolkit/netaddr.js";
import type { SmarthostAuth } from "./smarthost.js";
import type { TlsMode } from "./smtp.js";

export interface RouteMatchConfig {
  readonly recipientDomain?: string | readonly string[];
  /** Whole addresses; `*` matches any run of characters (`postmaster@*`, `*+bulk@example.test`). */
  readonly recipient?: string | readonly string[];
  readonly senderDomain?: string | readonly string[];
  readonly clientNetwork?: string | readonly string[];
  /** The listener the transaction came in on: a port (`587`) or `host:port`. */
  readonly listener?: number | string | ReadonlyArray<number | string>;
  /** Tags set by hooks or rules on the transaction; any one of them matches. */
  readonly tag?: string | readonly string[];
}

export interface RouteTlsConfig {
  readonly mode: TlsMode;
  /** Verify the next hop's certificate; default: only in mode `required`. */
  readonly verify?: boolean;
  /** The TLS server name (SNI) and the name the certificate must carry. */
  readonly sni?: string;
}

export interface RouteConfig {
  readonly match?: RouteMatchConfig;
  /** One target, or several smtp/lmtp hosts tried in order. */
  readonly to: string | readonly string[];
  readonly tls?: TlsMode | RouteTlsConfig;
  /** Most simultaneous connections to each next hop of this route. */
  readonly connections?: number;
  /** Local address outgoing connections are bound to. */
  readonly sourceAddress?: string;
  /** AUTH at a smarthost; where the password is, not the password. */
  readonly auth?: SmarthostAuth;
  /** `rcpt`: recipients of relay domains routed here are asked of its next hop before they are accepted. */
  readonly verify?: "rcpt";
}

/**
 * Where a recipient goes, and how: what the queue stores per recipient and what delivery reads.
 * `to` is a list of route target texts (parsed with `parseRouteTarget` at delivery time).
 */
export interface RouteSpec {
  readonly to: readonly string[];
  readonly tls?: RouteTlsConfig;
  readonly connections?: number;
  readonly sourceAddress?: string;
  /** Safe to store in the spool, it holds no secret. */
  readonly auth?: SmarthostAuth;
}

export interface RouteQuery {
  readonly recipientDomain: string;
  /** The whole recipient address; routes with `recipient:` conditions never match without it. */
  readonly recipient?: string;
  readonly senderDomain: string;
  /** Undefined for mail this gateway makes itself (DSNs): `clientNetwork` conditions do not match it. */
  readonly clientIp?: string;
  readonly listener?: { readonly ip: string; readonly port: number };
  readonly tags?: ReadonlySet<string>;
}

function list<T>(value: T | readonly T[] | undefined): readonly T[] | undefined {
  return value === undefined ? undefined : Array.isArray(value) ? (value as readonly T[]) : [value as T];
}

/** `*` is the only wildcard; everything else matches itself, case-insensitively. */
export function addressPattern(pattern: string): RegExp {
  const body = pattern
    .split("*")
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  return new RegExp(`^${body}$`, "i");
}

/** A listener condition: a bare port matches that port on any address. */
function listenerTest(spec: number | string): (listener: { ip: string; port: number }) => boolean {
  if (typeof spec === "number" || /^\d+$/.test(spec)) {
    const port = Number(spec);
    return (listener) => listener.port === port;
  }
  const hostPort = parseHostPort(spec);
  if (!hostPort) throw new Error(`"${spec}" is not a port or host:port`);
  const ip = normalizeIp(hostPort.host);
  const wildcard = ip === "0.0.0.0" || ip === "::";
  return (listener) => listener.port === hostPort.port && (wildcard || normalizeIp(listener.ip) === ip);
}

type RouteTest = (query: RouteQuery) => boolean;

function compileMatch(match: RouteMatchConfig | undefined): RouteTest[] {
  const tests: RouteTest[] = [];
  const recipientDomains = list(match?.recipientDomain);
  if (recipientDomains) {
    const set = new DomainSet(recipientDomains);
    tests.push((q) => set.has(q.recipientDomain));
  }
  const recipients = list(match?.recipient)?.map(addressPattern);
  if (recipients) {
    tests.push((q) => q.recipient !== undefined && recipients.some((pattern) => pattern.test(q.recipient!)));
  }
  const senderDomains = list(match?.senderDomain);
  if (senderDomains) {
    const set = new DomainSet(senderDomains);
    tests.push((q) => set.has(q.senderDomain));
  }
  const networks = list(match?.clientNetwork);
  if (networks) {
    const set = new NetworkList(networks);
    tests.push((q) => q.clientIp !== undefined && set.has(q.clientIp));
  }
  const listeners = list(match?.listener)?.map(listenerTest);
  if (listeners) {
    tests.push((q) => q.listener !== undefined && listeners.some((test) => test(q.listener!)));
  }
  const tags = list(match?.tag);
  if (tags) {
    tests.push((q) => q.tags !== undefined && tags.some((tag) => q.tags!.has(tag)));
  }
  return tests;
}

function routeSpec(route: RouteConfig): RouteSpec {
  // A password never travels in clear text, so a smarthost route without `tls` requires it.
  const tls =
    typeof route.tls === "string"
      ? { mode: route.tls }
      : (route.tls ?? (route.auth ? { mode: "required" as const } : undefined));
  return {
    to: list(route.to) ?? [],
    ...(tls ? { tls } : {}),
    ...(route.connections !== undefined ? { connections: route.connections } : {}),
    ...(route.sourceAddress !== undefined ? { sourceAddress: route.sourceAddress } : {}),
    ...(route.auth !== undefined ? { auth: route.auth } : {}),
  };
}

/** The route of mail with no matching route, and of a hook's `ctx.transaction.route` override. */
export function plainRoute(target: string): RouteSpec {
  return { to: [target] };
}

/** One text per distinct route: recipients with equal keys are delivered together. */
export function routeKey(route: RouteSpec): string {
  return JSON.stringify([
    route.to,
    route.tls ?? null,
    route.connections ?? null,
    route.sourceAddress ?? null,
    route.auth ?? null,
  ]);
}

/** Where one recipient is delivered: the address it leaves with, and the route. */
export interface Destination {
  readonly address: string;
  readonly route: RouteSpec;
}

interface CompiledRoute {
  readonly tests: RouteTest[];
  readonly spec: RouteSpec;
  readonly verify: boolean;
}

export class Router {
  readonly #routes: CompiledRoute[];
  readonly #postmaster: string | undefined;

  /** `postmaster`: policy `relay.postmaster`, an address or a `maildir:` target (anchored). */
  constructor(routes: readonly RouteConfig[], options: { readonly postmaster?: string } = {}) {
    this.#routes = routes.map((route) => ({
      tests: compileMatch(route.match),
      spec: routeSpec(route),
      verify: route.verify === "rcpt",
    }));
    this.#postmaster = options.postmaster;
  }

  #match(query: RouteQuery): CompiledRoute | undefined {
    return this.#routes.find((route) => route.tests.every((test) => test(query)));
  }

  /** The route for one recipient; `mx` when no route matches. */
  routeFor(query: RouteQuery): RouteSpec {
    return this.#match(query)?.spec ?? plainRoute("mx");
  }

  /**
   * Where a recipient goes. `<postmaster>` without a domain means our own postmaster (RFC 5321
   * §4.5.1): it goes to `relay.postmaster`, or else only to a route whose conditions take it — a
   * catch-all route (a smarthost, MX) would relay it to someone else's postmaster, so then null:
   * there is nowhere to deliver it.
   */
  destinationFor(query: RouteQuery & { readonly recipient: string }): Destination | null {
    if (query.recipientDomain !== "" || query.recipient.toLowerCase() !== "postmaster") {
      return { address: query.recipient, route: this.routeFor(query) };
    }
    const postmaster = this.#postmaster;
    if (postmaster === undefined) {
      const route = this.#routes.find((r) => r.tests.length > 0 && r.tests.every((test) => test(query)));
      return route ? { address: query.recipient, route: route.spec } : null;
    }
    if (postmaster.startsWith("maildir:")) return { address: query.recipient, route: plainRoute(postmaster) };
    const at = postmaster.lastIndexOf("@");
    const domain = asciiDomain(postmaster.slice(at + 1)) ?? postmaster.slice(at + 1).toLowerCase();
    const address = `${postmaster.slice(0, at)}@${domain}`;
    return { address, route: this.routeFor({ ...query, recipient: address, recipientDomain: domain }) };
  }

  /** The route to ask about a recipient before accepting it (`verify: rcpt`), or null. */
  verifyingRoute(query: RouteQuery): RouteSpec | null {
    const route = this.#match(query);
    return route?.verify ? route.spec : null;
  }

  /** Indices of the routes with no condition, which take every recipient no earlier route took. */
  catchAllRoutes(): number[] {
    return this.#routes.flatMap((route, index) => (route.tests.length === 0 ? [index] : []));
  }

  /** The route's targets as one text (several hosts joined by ", "), for dry runs and logs. */
  targetFor(query: RouteQuery): string {
    return this.routeFor(query).to.join(", ");
  }
}
