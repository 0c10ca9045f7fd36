/**
 * Route targets: where a group of recipients goes. The policy writes them as text
 * (`smtp://relay.example:2525`, `mx`, `maildir:/var/mail/inbox`…); delivery works on the parsed union.
 */
import { isIP } from "node:net";
import { isAbsolute } from "node:path";
import { formatHostPort } from "../toolkit/netaddr.js";

export type RouteTarget =
  /** A fixed next hop speaking SMTP (a smarthost or an internal server). */
  | { readonly kind: "smtp"; readonly host: string; readonly port: number }
  /** A fixed next hop speaking LMTP (RFC 2033): one DATA reply per recipient. */
  | { readonly kind: "lmtp"; readonly host: string; readonly port: number }
  /** The recipient domain's MX hosts. */
  | { readonly kind: "mx" }
  /** Final delivery into a local Maildir. */
  | { readonly kind: "maildir"; readonly path: string }
  /** Accepted and dropped. */
  | { readonly kind: "discard" };

/** SMTP's well-known port, and LMTP's IANA port (RFC 2033 names none, 24 is the registered one). */
const DEFAULT_PORT = { smtp: 25, lmtp: 24 } as const;

const HOSTNAME =
  /^(?=.{1,253}\.?$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i;

/**
 * Parses a route target; undefined when the text is none of the known forms.
 *
 * @example
 * parseRouteTarget("smtp://[2001:db8::25]:2525") // { kind: "smtp", host: "2001:db8::25", port: 2525 }
 * parseRouteTarget("lmtp://127.0.0.1")           // { kind: "lmtp", host: "127.0.0.1", port: 24 }
 * parseRouteTarget("maildir:/var/mail/in")       // { kind: "maildir", path: "/var/mail/in" }
 */
export function parseRouteTarget(text: string): RouteTarget | undefined {
  const source = text.trim();
  if (source === "mx") return { kind: "mx" };
  if (source === "discard") return { kind: "discard" };
  if (source.startsWith("maildir:")) {
    const path = source.slice("maildir:".length);
    // A relative path would depend on the working directory the gateway happens to start in.
    if (!isAbsolute(path) || path.includes("\0")) return undefined;
    return { kind: "maildir", path };
  }
  const match = /^(smtp|lmtp):\/\/(?:\[([0-9a-f:.]+)\]|([^\s:/[\]@?#]+))(?::(\d{1,5}))?\/?$/i.exec(source);
  if (!match) return undefined;
  const kind = match[1].toLowerCase() as "smtp" | "lmtp";
  const host = match[2] ?? match[3];
  if (match[2] !== undefined ? isIP(host) !== 6 : isIP(host) === 0 && !HOSTNAME.test(host)) return undefined;
  const port = match[4] === undefined ? DEFAULT_PORT[kind] : Number(match[4]);
  if (port < 1 || port > 65535) return undefined;
  return { kind, host: isIP(host) === 0 ? host.toLowerCase() : host, port };
}

/** The canonical text form; `parseRouteTarget(formatRouteTarget(t))` gives `t` back. */
export function formatRouteTarget(target: RouteTarget): string {
  switch (target.kind) {
    case "smtp":
    case "lmtp":
      return `${target.kind}://${formatHostPort(target)}`;
    case "maildir":
      return `maildir:${target.path}`;
    case "mx":
    case "discard":
      return target.kind;
  }
}
