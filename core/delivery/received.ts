/**
 * The Received trace header (RFC 5321 §4.4) every hop prepends. Much of it is client-supplied
 * (HELO name, DNS name, recipient), so each piece is reduced to a safe character set before it is
 * written: no CR/LF, no comment or `;` delimiters, bounded length — header injection is impossible.
 */
import { isIP } from "node:net";
import { normalizeIp } from "../toolkit/netaddr.js";

export type ReceivedProtocol = "SMTP" | "ESMTP" | "ESMTPS" | "ESMTPA" | "ESMTPSA" | "LMTP";

export interface ReceivedInput {
  /** The HELO/EHLO argument as the client sent it; null when it sent none. */
  readonly heloName: string | null;
  readonly clientIp: string;
  /** The client's forward-confirmed DNS name, when one was established. */
  readonly verifiedName: string | null;
  /** Our own hostname. */
  readonly byHost: string;
  readonly protocol: ReceivedProtocol;
  readonly tls?: { readonly protocol: string; readonly cipher: string } | null;
  /** Our transaction id. */
  readonly id: string;
  /** Only when the message has exactly one recipient: listing several would disclose Bcc recipients. */
  readonly recipient?: string;
  readonly date: Date;
}

const MAX_PART = 255;
const LINE_WIDTH = 78;

/**
 * @example
 * receivedHeader({ heloName: "mail.example", clientIp: "192.0.2.1", verifiedName: "mail.example",
 *   byHost: "gw.example", protocol: "ESMTPS", tls: { protocol: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384" },
 *   id: "abc123", recipient: "rcpt@example.org", date })
 * // "Received: from mail.example (mail.example [192.0.2.1])\r\n\tby gw.example with ESMTPS
 * //  (TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n\tid abc123 for <rcpt@example.org>;\r\n\tThu, 26 Nov 2026 …"
 */
export function receivedHeader(input: ReceivedInput): string {
  const ip = addressLiteral(input.clientIp);
  const helo = input.heloName === null ? "" : safe(input.heloName, /[^A-Za-z0-9.:_[\]-]/g);
  const verified = input.verifiedName === null ? "" : safe(input.verifiedName, /[^A-Za-z0-9._-]/g);
  const tcpInfo = verified === "" ? ip : `${verified} ${ip}`;
  const tlsParts = input.tls ? [input.tls.protocol, input.tls.cipher].map((p) => safe(p, /[^A-Za-z0-9._-]/g)) : [];
  const tls = tlsParts.some((p) => p !== "") ? ` (${tlsParts.filter((p) => p !== "").join(" ")})` : "";
  const recipient = input.recipient === undefined ? "" : safeMailbox(input.recipient);

  const clauses = [
    `from ${helo === "" ? "unknown" : helo}`,
    `(${tcpInfo})`,
    `by ${safe(input.byHost, /[^A-Za-z0-9._-]/g) || "localhost"}`,
    `with ${input.protocol}${tls}`,
    `id ${safe(input.id, /[^A-Za-z0-9._-]/g) || "unknown"}`,
  ];
  if (recipient !== "") clauses.push(`for <${recipient}>`);
  clauses[clauses.length - 1] += ";";
  clauses.push(rfc5322Date(input.date));
  return fold("Received:", clauses);
}

/** Keeps only characters outside `unsafe`, capped in length. */
function safe(value: string, unsafe: RegExp): string {
  return value.replace(unsafe, "").slice(0, MAX_PART);
}

/** A mailbox that needs anything beyond plain atoms is left out rather than rewritten into a false one. */
function safeMailbox(address: string): string {
  return address.length <= MAX_PART && /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+$/.test(address) ? address : "";
}

function addressLiteral(ip: string): string {
  const normalized = normalizeIp(ip);
  switch (isIP(normalized)) {
    case 4:
      return `[${normalized}]`;
    case 6:
      return `[IPv6:${normalized}]`;
    default:
      return "[unknown]";
  }
}

/** Clauses joined by spaces, a new line (CRLF TAB) started when the next one would pass 78 columns. */
function fold(name: string, clauses: string[]): string {
  const lines: string[] = [];
  let line = name;
  for (const clause of clauses) {
    if (line !== name && line.length + 1 + clause.length > LINE_WIDTH) {
      lines.push(line);
      line = `\t${clause}`;
    } else {
      line += ` ${clause}`;
    }
  }
  lines.push(line);
  return lines.join("\r\n");
}

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** RFC 5322 §3.3 date-time in UTC: `Thu, 26 Nov 2026 09:05:03 +0000`. */
export function rfc5322Date(date: Date): string {
  const two = (n: number) => String(n).padStart(2, "0");
  return (
    `${DAYS[date.getUTCDay()]}, ${date.getUTCDate()} ${MONTHS[date.getUTCMonth()]} ${date.getUTCFullYear()} ` +
    `${two(date.getUTCHours())}:${two(date.getUTCMinutes())}:${two(date.getUTCSeconds())} +0000`
  );
}
