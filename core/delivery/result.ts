/**
 * What a delivery attempt says about each recipient. Every route (SMTP, LMTP, MX, Maildir) answers
 * with this shape, so retry, bounce and the DATA reply logic never look at transport details.
 */

import type { Reply } from "../contract/decision.js";
import { oneLine } from "../toolkit/client-text.js";

export type DeliveryStatus = "delivered" | "deferred" | "failed";

export interface RecipientOutcome {
  readonly recipient: string;
  /** delivered: the next hop took responsibility; deferred: try again later; failed: bounce. */
  readonly status: DeliveryStatus;
  /** The next hop's reply (enhanced code parsed from its text when present) or one we made up. */
  readonly reply: Reply;
  /** The host that gave the reply, when one did. */
  readonly nextHop?: string;
}

export interface DeliveryResult {
  readonly recipients: RecipientOutcome[];
  /** The host (or route) the attempt ended at, for the log. */
  readonly nextHop: string;
  /** The next hop's final reply to the message, verbatim (control characters removed). */
  readonly response?: string;
  /**
   * Set when no SMTP session was established (refused, timeout, no greeting, TLS or EHLO failure):
   * nothing of the transaction happened, so another address of the same destination may be tried.
   */
  readonly unreachable?: boolean;
}

export function statusOf(reply: Reply): DeliveryStatus {
  if (reply.code >= 200 && reply.code < 300) return "delivered";
  return reply.code >= 500 ? "failed" : "deferred";
}

export function outcome(recipient: string, reply: Reply, nextHop?: string): RecipientOutcome {
  return nextHop === undefined
    ? { recipient, status: statusOf(reply), reply }
    : { recipient, status: statusOf(reply), reply, nextHop };
}

/** Every recipient gets the same reply (a connection failure, a rejected sender, a Maildir write). */
export function sameForAll(recipients: readonly string[], reply: Reply, nextHop: string): DeliveryResult {
  return { recipients: recipients.map((r) => outcome(r, reply)), nextHop };
}

const LINE = /^([2-5]\d\d)(?:[ -]|$)(.*)$/;
const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)/;

/**
 * Turns a next hop's reply (`"550-5.1.1 first\n550 5.1.1 second"`, as nodemailer hands it over)
 * into a Reply. The enhanced code is taken from the text when the server sent one whose class
 * matches; otherwise it is derived from the basic code as `X.0.0`. A reply without a valid code
 * gives `fallback`, with the text kept for diagnosis.
 */
export function nextHopReply(response: string | undefined, fallback: Reply): Reply {
  const lines = (response ?? "").split(/\r?\n/).filter((line) => line.trim() !== "");
  const first = lines.length > 0 ? LINE.exec(lines[0]) : null;
  if (!first) {
    const text = oneLine(lines.join(" "));
    return text === "" ? fallback : { ...fallback, text: `${fallback.text}: ${text}` };
  }
  const code = Number(first[1]);
  let enhanced = `${first[1][0]}.0.0`;
  const parts = lines.map((line, i) => {
    const rest = (LINE.exec(line)?.[2] ?? line).trim();
    const found = ENHANCED.exec(rest);
    if (!found) return rest;
    if (i === 0 && found[1] === first[1][0]) enhanced = `${found[1]}.${found[2]}.${found[3]}`;
    return rest.slice(found[0].length);
  });
  return { code, enhanced, text: oneLine(parts.join(" ")) };
}
