/**
 * Decisions are values. A hook, a rule or the core itself answers with one of these; the SMTP
 * listener is the only place that turns them into protocol replies.
 */

/** One SMTP reply: `code` is the basic reply (RFC 5321), `enhanced` the RFC 3463 status code. */
export interface Reply {
  readonly code: number;
  readonly enhanced: string;
  readonly text: string;
}

/** Who made a decision. Logged and kept in the trace; never shown to the client. */
export interface DecidedBy {
  readonly source: "plugin" | "rule" | "core";
  readonly name: string;
}

export type Decision =
  | { readonly kind: "continue" }
  /** Skip the remaining hooks of this phase; the transaction goes on. */
  | { readonly kind: "accept"; readonly by: DecidedBy }
  | { readonly kind: "reject"; readonly reply: Reply; readonly by: DecidedBy; readonly reason?: string }
  | { readonly kind: "defer"; readonly reply: Reply; readonly by: DecidedBy; readonly reason?: string }
  /** Reply, then close the connection. */
  | { readonly kind: "disconnect"; readonly reply: Reply; readonly by: DecidedBy; readonly reason?: string };

export type FinalDecision = Exclude<Decision, { kind: "continue" }>;
export type RefusingDecision = Extract<Decision, { reply: Reply }>;

export const CONTINUE: Decision = Object.freeze({ kind: "continue" });

export function isTemporary(reply: Reply): boolean {
  return reply.code >= 400 && reply.code < 500;
}

const REPLY_PATTERN = /^([245]\d\d)(?:[ -]([245])\.(\d{1,3})\.(\d{1,3}))?(?:\s+(.*))?$/s;

export class ReplySyntaxError extends Error {}

/**
 * Parses `"550 5.7.1 Relaying denied"`. The enhanced code is optional in the text (it then defaults
 * to `X.0.0`, "other undefined status"), but when given its class must match the reply's class.
 */
export function parseReply(source: string): Reply {
  const match = REPLY_PATTERN.exec(source.trim());
  if (!match) {
    throw new ReplySyntaxError(
      `"${source}" is not an SMTP reply: expected "<code> [<x.y.z>] <text>", e.g. "550 5.7.1 Rejected"`,
    );
  }
  const [, codeText, enhancedClass, subject, detail, text = ""] = match;
  const code = Number(codeText);
  const replyClass = codeText[0];
  if (enhancedClass !== undefined && enhancedClass !== replyClass) {
    throw new ReplySyntaxError(
      `"${source}": enhanced status ${enhancedClass}.${subject}.${detail} does not match reply class ${replyClass}xx`,
    );
  }
  const enhanced = enhancedClass === undefined ? `${replyClass}.0.0` : `${enhancedClass}.${subject}.${detail}`;
  return { code, enhanced, text: text.trim() };
}

export function reply(code: number, enhanced: string, text: string): Reply {
  return { code, enhanced, text };
}

export function formatReply(r: Reply): string {
  return `${r.code} ${r.enhanced} ${r.text}`.trimEnd();
}

const CORE: DecidedBy = Object.freeze({ source: "core", name: "core" });

export function coreReject(r: Reply, reason?: string, name = "core"): RefusingDecision {
  const kind = isTemporary(r) ? "defer" : "reject";
  return { kind, reply: r, by: name === "core" ? CORE : { source: "core", name }, reason };
}

/** Exhaustiveness guard for switches over unions. */
export function unreachable(value: never): never {
  throw new Error(`unhandled case: ${JSON.stringify(value)}`);
}
