/**
 * Delivery Status Notifications (RFC 3464): a multipart/report with a human-readable part, a
 * machine-readable message/delivery-status part, and the original message (RET=FULL) or its header
 * (RET=HDRS). Pure: the worker gathers the facts and stores the result as a new message from the
 * null sender, which is never bounced in turn.
 */
import { randomBytes } from "node:crypto";
import type { Reply } from "../contract/decision.js";
import { rfc5322Date } from "../delivery/received.js";
import { oneLine } from "../toolkit/client-text.js";

const CRLF = Buffer.from("\r\n");

export interface DsnRecipient {
  readonly address: string;
  /** ORCPT as given by the client (`rfc822;user@example.test`). */
  readonly orcpt?: string;
  readonly action: "failed" | "delayed" | "delivered" | "relayed" | "expanded";
  readonly reply: Reply;
  /** The host that gave the reply, when one did. */
  readonly remoteMta?: string;
  readonly lastAttempt?: Date;
}

export interface DsnInput {
  /** Our host name: the Reporting-MTA and the From domain. */
  readonly reportingMta: string;
  /** The envelope sender of the original message: the DSN's recipient. */
  readonly to: string;
  readonly envid?: string;
  readonly arrivalDate: Date;
  readonly date: Date;
  readonly recipients: readonly DsnRecipient[];
  /** The original message (RET=FULL) or only its header section (RET=HDRS). */
  readonly returned: { readonly kind: "full" | "headers"; readonly content: Buffer };
}

/** Header-safe text: no CR/LF or other control characters from remote replies or client input. */
function safe(text: string): string {
  return oneLine(text, 900);
}

/**
 * Builds the DSN message (CRLF line ends).
 *
 * @example
 * buildDsn({ reportingMta: "gw.test", to: "a@x.test", arrivalDate, date, recipients: [{ address: "b@y.test",
 *   action: "failed", reply: { code: 550, enhanced: "5.1.1", text: "no such user" }, remoteMta: "mx.y.test" }],
 *   returned: { kind: "headers", content } })
 */
export function buildDsn(input: DsnInput): { messageId: string; raw: Buffer } {
  const boundary = `=_portcullis_${randomBytes(12).toString("hex")}`;
  const messageId = `<${randomBytes(12).toString("hex")}@${input.reportingMta}>`;
  const failed = input.recipients.filter((r) => r.action === "failed");
  const subject = failed.length > 0 ? "Undelivered Mail Returned to Sender" : "Delivery Status Notification";
  const lines = (...parts: string[]) => `${parts.join("\r\n")}\r\n`;

  const human = lines(
    `This is the mail system at ${input.reportingMta}.`,
    "",
    failed.length > 0
      ? "Your message could not be delivered to one or more recipients. It is attached below."
      : "This is a report on the delivery of your message.",
    "",
    ...input.recipients.map(
      (r) => `<${safe(r.address)}>: ${r.action}: ${r.reply.code} ${r.reply.enhanced} ${safe(r.reply.text)}`,
    ),
  );

  const perMessage = [
    `Reporting-MTA: dns; ${input.reportingMta}`,
    ...(input.envid !== undefined ? [`Original-Envelope-Id: ${safe(input.envid)}`] : []),
    `Arrival-Date: ${rfc5322Date(input.arrivalDate)}`,
  ];
  const perRecipient = input.recipients.map((r) =>
    [
      ...(r.orcpt !== undefined ? [`Original-Recipient: ${safe(r.orcpt)}`] : []),
      `Final-Recipient: rfc822; ${safe(r.address)}`,
      `Action: ${r.action}`,
      `Status: ${r.reply.enhanced}`,
      ...(r.remoteMta !== undefined ? [`Remote-MTA: dns; ${safe(r.remoteMta)}`] : []),
      `Diagnostic-Code: smtp; ${r.reply.code} ${r.reply.enhanced} ${safe(r.reply.text)}`,
      ...(r.lastAttempt !== undefined ? [`Last-Attempt-Date: ${rfc5322Date(r.lastAttempt)}`] : []),
    ].join("\r\n"),
  );
  const status = `${[perMessage.join("\r\n"), ...perRecipient].join("\r\n\r\n")}\r\n`;

  const head = lines(
    `From: Mail Delivery System <MAILER-DAEMON@${input.reportingMta}>`,
    `To: <${safe(input.to)}>`,
    `Subject: ${subject}`,
    `Date: ${rfc5322Date(input.date)}`,
    `Message-ID: ${messageId}`,
    "Auto-Submitted: auto-replied",
    "MIME-Version: 1.0",
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    "",
    "This is a MIME-encapsulated message.",
    "",
    `--${boundary}`,
    "Content-Type: text/plain; charset=utf-8",
    "Content-Description: Notification",
    "",
  );
  const middle = lines(
    `--${boundary}`,
    "Content-Type: message/delivery-status",
    "Content-Description: Delivery report",
    "",
  );
  const returnedHead = lines(
    `--${boundary}`,
    input.returned.kind === "full" ? "Content-Type: message/rfc822" : "Content-Type: text/rfc822-headers",
    input.returned.kind === "full"
      ? "Content-Description: Undelivered Message"
      : "Content-Description: Message Headers",
    "",
  );
  const content = input.returned.content;
  const tail = `${content.subarray(-2).equals(CRLF) ? "" : "\r\n"}--${boundary}--\r\n`;
  return {
    messageId,
    raw: Buffer.concat([
      Buffer.from(head + human + middle + status + returnedHead, "utf8"),
      content,
      Buffer.from(tail),
    ]),
  };
}

/** The header section of a message (up to and including the blank line), at most `max` bytes. */
export function headerSection(message: Buffer, max = 64 * 1024): Buffer {
  const end = message.indexOf("\r\n\r\n");
  return message.subarray(0, Math.min(end < 0 ? message.length : end + 4, max));
}
