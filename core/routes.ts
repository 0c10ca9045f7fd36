/**
 * Route matching: the policy's `routes:` list, first match wins. Pure: tested by tables in
 * test/routes.test.ts; the delivery code only asks `targetFor`.
 */
import { asciiDomain } from "./address.js";
import { NetworkList } from "./netaddr.js";

export interface RouteMatchConfig {
  readonly recipientDomain?: string | readonly string[];
  readonly senderDomain?: string | readonly string[];
  readonly clientNetwork?: string | readonly string[];
}

export interface RouteConfig {
  readonly match?: RouteMatchConfig;
  readonly to: string;
}

export interface RouteQuery {
  readonly recipientDomain: string;
  readonly senderDomain: string;
  readonly clientIp: string;
}

/** Matches a lower-case ASCII domain against exact names and `*.parent` wildcards (subdomains only). */
export class DomainSet {
  readonly #exact = new Set<string>();
  readonly #parents: string[] = [];

  constructor(patterns: Iterable<string>) {
    for (const pattern of patterns) {
      const wildcard = pattern.startsWith("*.");
      const domain = asciiDomain(wildcard ? pattern.slice(2) : pattern);
      if (domain === undefined) throw new Error(`"${pattern}" is not a domain name`);
      if (wildcard) this.#parents.push(`.${domain}`);
      else this.#exact.add(domain);
    }
  }

  has(domain: string): boolean {
    if (this.#exact.has(domain)) return true;
    return this.#parents.some((parent) => domain.endsWith(parent));
  }
}

function list(value: string | readonly string[] | undefined): readonly string[] | undefined {
  return value === undefined ? undefined : typeof value === "string" ? [value] : value;
}

type RouteTest = (query: RouteQuery) => boolean;

function compileMatch(match: RouteMatchConfig | undefined): RouteTest[] {
  const tests: RouteTest[] = [];
  const recipientDomains = list(match?.recipientDomain);
  if (recipientDomains) {
    const set = new DomainSet(recipientDomains);
    tests.push((q) => set.has(q.recipientDomain));
  }
  const senderDomains = list(match?.senderDomain);
  if (senderDomains) {
    const set = new DomainSet(senderDomains);
    tests.push((q) => set.has(q.senderDomain));
  }
  const networks = list(match?.clientNetwork);
  if (networks) {
    const set = new NetworkList(networks);
    tests.push((q) => set.has(q.clientIp));
  }
  return tests;
}

export class Router {
  readonly #routes: Array<{ tests: RouteTest[]; to: string }>;

  constructor(routes: readonly RouteConfig[]) {
    this.#routes = routes.map((route) => ({ tests: compileMatch(route.match), to: route.to }));
  }

  /** The route target for one recipient; `mx` when no route matches. */
  targetFor(query: RouteQuery): string {
    for (const route of this.#routes) {
      if (route.tests.every((test) => test(query))) return route.to;
    }
    return "mx";
  }
}
