/**
 * Protocol hardening decisions that do not belong to any plugin: what a received message must not
 * contain (end-of-data lookalikes, bare line endings, NUL bytes and over-long lines when the policy
 * forbids them, an oversized header section), and the enhanced codes for the replies smtp-server
 * writes on its own.
 */
import type { RefusingDecision, Reply } from "../contract/decision.js";
import type { PolicyConfig } from "../policy/schema.js";
import { MAX_LINE_LENGTH, type NulSeen, type OverlongLine } from "./smuggling.js";

/** What the DATA stream showed, as counted by MessageWriter. */
export interface ReceivedShape {
  readonly endOfDataLookalike: boolean;
  readonly bareLineEndings: number;
  readonly nulBytes: number;
  readonly firstNul: NulSeen | null;
  readonly firstOverlongLine: OverlongLine | null;
  readonly headerTooLarge: boolean;
}

/** `reason` says where in the message the problem is; it is logged, never sent to the client. */
function limit(reply: Reply, reason?: string): RefusingDecision {
  return { kind: "reject", reply, by: { source: "core", name: "limits" }, reason };
}

/** Why a received message is refused before any data hook sees it; null when it is not. */
export function messageRefusal(
  shape: ReceivedShape,
  headerCount: number,
  server: PolicyConfig["server"],
): RefusingDecision | null {
  if (shape.endOfDataLookalike) {
    // Another MTA might take the lookalike for the end of DATA and the rest for a second message.
    return limit({ code: 550, enhanced: "5.5.2", text: "Message contains an end-of-data lookalike" });
  }
  if (shape.bareLineEndings > 0 && server.bareLineEndings === "reject") {
    return limit({ code: 550, enhanced: "5.5.2", text: "Bare CR or LF not allowed; lines must end with CRLF" });
  }
  if (shape.firstNul && server.nulBytes === "reject") {
    // RFC 5322 text never holds NUL, and MTAs disagree on it (some drop it, some end a string at it),
    // so the next hop might read another message than the one checked here. X.6.0: a media error.
    const { line, offset } = shape.firstNul;
    return limit(
      { code: 550, enhanced: "5.6.0", text: "Message contains NUL characters" },
      `${shape.nulBytes} NUL byte(s), the first on line ${line} at offset ${offset}`,
    );
  }
  if (shape.firstOverlongLine && server.longLines === "reject") {
    // X.6.0, not 5.3.4: the message is malformed (RFC 5322 §2.1.1), not too big; a smaller one with
    // the same line would fail the same way. A next hop may split or cut such a line.
    const { line, length } = shape.firstOverlongLine;
    return limit(
      { code: 550, enhanced: "5.6.0", text: `Message has a line longer than ${MAX_LINE_LENGTH} characters` },
      `line ${line} is ${length} octets long`,
    );
  }
  if (shape.headerTooLarge) {
    return limit({ code: 552, enhanced: "5.3.4", text: "Message header section too large" });
  }
  if (headerCount > server.limits.maxHeaderCount) {
    return limit({ code: 552, enhanced: "5.3.4", text: "Too many header fields" });
  }
  return null;
}

/**
 * smtp-server's own replies, with the enhanced code and text we send instead. Keyed by its exact text.
 * - Limits: its table would give `421 4.4.2` to every 421, whatever the cause.
 * - HELO/EHLO refusals: it sends them without any enhanced code (RFC 2034 exempts replies to
 *   HELO/EHLO, but a client or log reader matching on codes gets nothing). 5.5.2, as Postfix does:
 *   the argument's syntax is wrong, not its value out of range (which would be 5.5.4).
 * - Shutdown: sent to any command, HELO/EHLO included; X.3.2 names "an imminent shutdown".
 */
const OWN_REPLIES: ReadonlyMap<string, { code: number; text: string }> = new Map([
  ["Error: Command line too long", { code: 500, text: "5.5.2 Line too long" }],
  ["Error: too many unrecognized commands", { code: 421, text: "4.7.0 Too many unrecognized commands" }],
  ["Error: too many unauthenticated commands", { code: 421, text: "4.7.0 Too many unauthenticated commands" }],
  ["Timeout - closing connection", { code: 421, text: "4.4.2 Idle timeout, closing connection" }],
  ["Error: Bad hostname syntax", { code: 501, text: "5.5.2 Bad hostname syntax" }],
  ["Error: syntax: EHLO hostname", { code: 501, text: "5.5.2 Syntax: EHLO hostname" }],
  ["Error: Syntax: HELO hostname", { code: 501, text: "5.5.2 Syntax: HELO hostname" }],
  ["Server shutting down", { code: 421, text: "4.3.2 Server shutting down" }],
]);

/** Our reply for one of smtp-server's own; undefined for any other text. */
export function ownReplyOverride(text: string): { code: number; text: string } | undefined {
  return OWN_REPLIES.get(text);
}
