/**
 * One delivery attempt to one next hop over SMTP or LMTP, on nodemailer's SMTPConnection.
 *
 * Contract: the promise always resolves with a per-recipient result — refused connections,
 * timeouts, TLS trouble, lost connections and aborts become deferrals, the next hop's 4xx/5xx
 * replies become deferrals/failures of the recipients they concern. It rejects only for programming
 * errors (an envelope address holding CR, LF, `<` or `>`, an empty recipient list).
 *
 * The caller hands over ASCII envelope addresses: nodemailer would otherwise ask for SMTPUTF8 on
 * its own, and a next hop without it would get raw UTF-8.
 */
import { isIP } from "node:net";
import type { Readable } from "node:stream";
import SMTPConnection, {
  type SMTPConnectionEnvelope,
  type SMTPConnectionSendInfo,
  type SMTPEnvelope,
} from "nodemailer/lib/smtp-connection";
import type { Reply } from "../decision.js";
import { formatHostPort } from "../netaddr.js";
import { cleanText, type DeliveryResult, nextHopReply, outcome, type RecipientOutcome } from "./result.js";

export interface SmtpTarget {
  /** An IP address, or a hostname that nodemailer then resolves with the system resolver. */
  readonly host: string;
  readonly port: number;
  readonly lmtp?: boolean;
  /** The name we expect on the other end: TLS SNI and certificate check when `host` is an IP. */
  readonly servername?: string;
}

export interface SmtpEnvelope {
  /** "" is the null sender (bounces). */
  readonly from: string;
  readonly to: readonly string[];
}

export type TlsMode = "none" | "opportunistic" | "required";

export interface SmtpDeliveryOptions {
  /** Our EHLO/LHLO name. */
  readonly name: string;
  /** Deadline for the whole attempt: connecting, the transaction and the message. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** Default "opportunistic": STARTTLS when offered, and a failed handshake falls back to plain text. */
  readonly tls?: TlsMode;
  /** Default: false for opportunistic (a self-signed MX certificate beats plain text), true for required. */
  readonly rejectUnauthorized?: boolean;
}

/** Outgoing commands are written on one line each; these would break a command or forge another. */
const UNSAFE_ADDRESS = /[\r\n<>]/;

/**
 * Delivers one message to one next hop and reports per recipient.
 *
 * `message` is consumed, or destroyed when the attempt ends before the data phase, so a stream
 * over a spool file never leaks its descriptor. Its bytes go out unchanged apart from what SMTP
 * requires: dot-stuffing, and bare CR/LF turned into CRLF (the smuggling-safe form).
 *
 * @example
 * const result = await deliverSmtp({ host: "192.0.2.25", port: 25 }, { from: "a@x.test", to: ["b@y.test"] },
 *   message, { name: "gw.example", timeoutMs: 120_000 });
 */
export async function deliverSmtp(
  target: SmtpTarget,
  envelope: SmtpEnvelope,
  message: Readable | Buffer,
  options: SmtpDeliveryOptions,
): Promise<DeliveryResult> {
  if (envelope.to.length === 0) throw new TypeError("deliverSmtp: the envelope has no recipients");
  for (const address of [envelope.from, ...envelope.to]) {
    if (UNSAFE_ADDRESS.test(address))
      throw new TypeError(`deliverSmtp: unsafe envelope address ${JSON.stringify(address)}`);
  }
  const deadline = Date.now() + options.timeoutMs;
  const mode = options.tls ?? "opportunistic";
  try {
    const first = await attempt(target, envelope, message, options, mode, deadline);
    // Opportunistic TLS must never make mail undeliverable: a server whose STARTTLS handshake fails
    // gets the message in plain text (what Postfix does at security level "may").
    if (first.kind === "tls-failed" && mode === "opportunistic" && !options.signal?.aborted && Date.now() < deadline) {
      return (await attempt(target, envelope, message, options, "none", deadline)).result;
    }
    return first.result;
  } finally {
    if (!Buffer.isBuffer(message) && !message.readableEnded) message.destroy();
  }
}

type Attempt = { kind: "done" | "tls-failed"; result: DeliveryResult };

type ConnectionError = Error & { code?: string; originalCode?: string; response?: string; command?: string };

/** What nodemailer records on the envelope object it is given (typed in its declarations). */
type TrackedEnvelope = SMTPEnvelope & Partial<Pick<SMTPConnectionEnvelope, "accepted" | "rejectedErrors">>;

function attempt(
  target: SmtpTarget,
  envelope: SmtpEnvelope,
  message: Readable | Buffer,
  options: SmtpDeliveryOptions,
  mode: TlsMode,
  deadline: number,
): Promise<Attempt> {
  const nextHop = describeHop(target);
  const remaining = Math.max(1, deadline - Date.now());
  const rejectUnauthorized = options.rejectUnauthorized ?? mode === "required";
  const servername = target.servername ?? (isIP(target.host) === 0 ? target.host : undefined);
  const conn = new SMTPConnection({
    host: target.host,
    port: target.port,
    name: options.name,
    lmtp: target.lmtp === true,
    ignoreTLS: mode === "none",
    requireTLS: mode === "required",
    opportunisticTLS: mode === "opportunistic",
    servername,
    tls: { rejectUnauthorized, servername },
    connectionTimeout: remaining,
    greetingTimeout: remaining,
    socketTimeout: remaining,
    socketCloseTimeout: 1000,
    logger: false,
  });
  const tracked: TrackedEnvelope = { from: envelope.from === "" ? false : envelope.from, to: [...envelope.to] };
  let connected = false;

  return new Promise<Attempt>((resolve) => {
    let settled = false;
    const finish = (value: Attempt, close: "quit" | "close") => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      if (close === "quit") conn.quit();
      else conn.close();
      resolve(value);
    };

    const unreachable = (reason: string, tlsFailed = false) =>
      finish(
        {
          kind: tlsFailed ? "tls-failed" : "done",
          result: {
            nextHop,
            unreachable: true,
            recipients: envelope.to.map((r) => outcome(r, { code: 451, enhanced: "4.4.1", text: reason })),
          },
        },
        "close",
      );

    /** The session broke mid-transaction: keep definite per-recipient answers, defer the rest. */
    const lost = (reason: string) =>
      finish(
        {
          kind: "done",
          result: transactionResult(envelope, tracked, nextHop, { code: 451, enhanced: "4.4.2", text: reason }),
        },
        "close",
      );

    const timer = setTimeout(() => {
      const text = `Timed out after ${options.timeoutMs} ms ${connected ? "talking to" : "connecting to"} ${nextHop}`;
      if (connected) lost(text);
      else unreachable(text);
    }, remaining);

    const onAbort = () => {
      const text = "Delivery aborted";
      if (connected) lost(text);
      else unreachable(text);
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });

    // nodemailer reports most failures only as 'error' events; without a listener they crash the process.
    conn.on("error", (error: ConnectionError) => {
      if (connected) lost(`Connection to ${nextHop} lost: ${describeError(error)}`);
      // A failed handshake surfaces as a socket error while `upgrading`, a refused STARTTLS as ETLS.
      else
        unreachable(
          `Cannot connect to ${nextHop}: ${describeError(error)}`,
          error.code === "ETLS" || conn.upgrading === true,
        );
    });
    conn.on("end", () => {
      if (connected) lost(`Connection to ${nextHop} closed`);
      else unreachable(`Connection to ${nextHop} closed before the greeting`);
    });

    conn.connect((error) => {
      if (error) return unreachable(`Cannot connect to ${nextHop}: ${describeError(error)}`);
      connected = true;
      conn.send(tracked, message, (sendError: ConnectionError | null, info?: SMTPConnectionSendInfo) => {
        if (sendError) {
          finish({ kind: "done", result: failedTransaction(envelope, tracked, nextHop, sendError) }, "close");
          return;
        }
        const response = cleanText(info?.response ?? "");
        // nodemailer hands over only LMTP's last reply, which belongs to the last recipient: the
        // others get a plain 250 rather than a reply that names someone else or says "failed".
        const delivered = target.lmtp
          ? { code: 250, enhanced: "2.0.0", text: `Delivered by ${nextHop}` }
          : nextHopReply(info?.response, { code: 250, enhanced: "2.0.0", text: "Accepted" });
        const result = transactionResult(envelope, tracked, nextHop, delivered);
        finish({ kind: "done", result: { ...result, response } }, "quit");
      });
    });
  });
}

/**
 * The transaction ended with an error reply. MAIL FROM refused: that reply for everyone (RCPT replies
 * after a refused MAIL only say "bad sequence"). Otherwise per-recipient RCPT replies stand and the
 * DATA reply (or the connection failure) applies to the recipients the next hop had accepted.
 */
function failedTransaction(
  envelope: SmtpEnvelope,
  tracked: TrackedEnvelope,
  nextHop: string,
  error: ConnectionError,
): DeliveryResult {
  const fallback: Reply = error.response
    ? { code: 451, enhanced: "4.4.2", text: `Unexpected reply from ${nextHop}` }
    : { code: 451, enhanced: "4.4.2", text: `Delivery to ${nextHop} failed: ${describeError(error)}` };
  const reply = nextHopReply(error.response, fallback);
  if (error.command === "MAIL FROM") {
    return {
      nextHop,
      response: cleanText(error.response ?? ""),
      recipients: envelope.to.map((r) => outcome(r, reply, nextHop)),
    };
  }
  return { ...transactionResult(envelope, tracked, nextHop, reply), response: cleanText(error.response ?? "") };
}

/** Recipients with their own RCPT (or LMTP DATA) reply keep it; all others get `rest`. */
function transactionResult(
  envelope: SmtpEnvelope,
  tracked: TrackedEnvelope,
  nextHop: string,
  rest: Reply,
): DeliveryResult {
  const own = new Map<string, string>();
  for (const rejected of tracked.rejectedErrors ?? []) {
    const recipient = (rejected as { recipient?: unknown }).recipient;
    if (typeof recipient === "string" && rejected.response) own.set(recipient, rejected.response);
  }
  const recipients: RecipientOutcome[] = envelope.to.map((r) => {
    const response = own.get(r.trim());
    if (response === undefined) return outcome(r, rest, nextHop);
    return outcome(r, nextHopReply(response, { code: 451, enhanced: "4.4.2", text: "Unexpected reply" }), nextHop);
  });
  return { nextHop, recipients };
}

function describeHop(target: SmtpTarget): string {
  const hostPort = formatHostPort(target);
  const address = isIP(target.host) === 6 ? hostPort : `[${target.host}]:${target.port}`;
  return target.servername ? `${target.servername}${address}` : hostPort;
}

function describeError(error: ConnectionError): string {
  const code = error.originalCode ?? error.code;
  const text = cleanText(error.message, 200);
  return code && !text.includes(code) ? `${code} ${text}` : text;
}
