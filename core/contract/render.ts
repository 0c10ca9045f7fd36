import { oneLine } from "../toolkit/client-text.js";
import type { ConnectionContext, Facts } from "./api.js";
import { parseReply, type Reply } from "./decision.js";

/** Values a reply template may name, besides findings by path (`{dnsbl.txt}`, `{spf.result}`). */
export interface TemplateScope {
  readonly connection: ConnectionContext;
  readonly facts: Partial<Facts>;
  readonly sender?: string;
  readonly recipient?: string;
  readonly rule?: string;
}

const MAX_VALUE_LENGTH = 200;

function lookup(scope: TemplateScope, path: string): unknown {
  switch (path) {
    case "client.ip":
      return scope.connection.client.ip;
    case "client.name":
      return scope.connection.verifiedName;
    case "helo":
      return scope.connection.helo;
    case "sender":
      return scope.sender;
    case "recipient":
      return scope.recipient;
    case "rule":
      return scope.rule;
  }
  let value: unknown = scope.facts;
  for (const key of path.split(".")) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

function printable(value: unknown): string {
  if (value === undefined || value === null) return "";
  // A reply or a header field is one line: client-controlled values (HELO, addresses, TXT records) must not split it.
  return oneLine(Array.isArray(value) ? value.join(" ") : String(value), MAX_VALUE_LENGTH);
}

/** Fills `{path}` placeholders; a placeholder with no value becomes empty. */
export function renderTemplate(template: string, scope: TemplateScope): string {
  return template.replace(/\{([a-zA-Z0-9_.-]+)\}/g, (_, path: string) => printable(lookup(scope, path)));
}

/**
 * The reply a reject/defer/disconnect sends. A verdict has one reply text, written for its usual
 * action; when the policy picks another action the class is converted (a 550 text deferred becomes
 * 450 4.x.x), so a bare `defer` never sends a permanent code.
 */
export function adaptReply(source: Reply, kind: "reject" | "defer" | "disconnect"): Reply {
  const wantTemporary = kind === "defer" || (kind === "disconnect" && source.code < 500);
  const isTemporary = source.code < 500;
  if (kind === "disconnect") {
    const code = wantTemporary ? 421 : 554;
    return { code, enhanced: `${String(code)[0]}${source.enhanced.slice(1)}`, text: source.text };
  }
  if (wantTemporary === isTemporary) return source;
  const code = wantTemporary ? (source.code === 550 ? 450 : 451) : source.code === 450 ? 550 : 554;
  return { code, enhanced: `${wantTemporary ? 4 : 5}${source.enhanced.slice(1)}`, text: source.text };
}

export function renderReply(template: string, scope: TemplateScope, kind: "reject" | "defer" | "disconnect"): Reply {
  return adaptReply(parseReply(renderTemplate(template, scope)), kind);
}
