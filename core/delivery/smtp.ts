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
import type {
  default as SMTPConnection,
  SMTPConnectionEnvelope,
  SMTPConnectionSendInfo,
  SMTPEnvelope,
} from "nodemailer/lib/smtp-connection";
import type { Reply } from "../contract/decision.js";
import { oneLine } from "../toolkit/client-text.js";
import { formatHostPort } from "../toolkit/netaddr.js";
import { type ConnectionPool, type Lease, Link } from "./pool.js";
import { type DeliveryResult, nextHopReply, outcome, type RecipientOutcome } from "./result.js";
import type { SmarthostCredentials } from "./smarthost.js";

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
  /** RFC 3461 parameters, passed on when the next hop offers DSN (one NOTIFY/ORCPT for all recipients). */
  readonly dsn?: {
    readonly ret?: "FULL" | "HDRS";
    readonly envid?: string;
    readonly notify?: readonly string[];
    readonly orcpt?: string;
  };
}

/** "implicit" is TLS from the first byte (port 465 submission), the others use STARTTLS. */
export type TlsMode = "none" | "opportunistic" | "required" | "implicit";

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
  /** Trusted CAs instead of Node's bundle (a private CA of internal next hops). */
  readonly ca?: string | Buffer;
  /** Local address to connect from. */
  readonly localAddress?: string;
  /** Keeps connections open between messages; without one each attempt opens and quits its own. */
  readonly pool?: ConnectionPool;
  /** Most connections to this next hop at once (the pool's default when unset). */
  readonly connectionLimit?: number;
  /** AUTH (PLAIN/LOGIN, whichever the server offers) after EHLO; needs tls required or implicit. */
  readonly auth?: SmarthostCredentials;
  /** Told each transaction's outcome the moment it is known (see `SettledListener`). */
  readonly onSettled?: SettledListener;
}

/**
 * Called synchronously with a transaction's per-recipient outcome as soon as the next hop's reply
 * (or the loss of the connection) decides it, before anything else is sent on that connection and
 * before the attempt's promise resolves. The queue writes its "delivered" marks here: a crash in
 * the gap between a next hop's 250 and a mark written later would deliver the message again. It
 * must not throw.
 */
export type SettledListener = (result: DeliveryResult) => void;

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
  // The policy schema refuses this too; a password must never go out unencrypted.
  if (options.auth && mode !== "required" && mode !== "implicit")
    throw new TypeError(`deliverSmtp: AUTH needs tls "required" or "implicit", not "${mode}"`);
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

/**
 * What a delivery attempt sends, made anew for each attempt. A Buffer when the bytes are in memory:
 * nodemailer writes it at once, where a stream costs a pipe per message.
 */
export type MessageSource = () => Readable | Buffer;

type Attempt = { kind: "done" | "tls-failed"; result: DeliveryResult };

type ConnectionError = Error & { code?: string; originalCode?: string; response?: string; command?: string };

/** What nodemailer records on the envelope object it is given (typed in its declarations). */
type TrackedEnvelope = SMTPEnvelope & Partial<Pick<SMTPConnectionEnvelope, "accepted" | "rejectedErrors">>;

interface Connection {
  readonly nextHop: string;
  readonly rejectUnauthorized: boolean;
  readonly servername: string | undefined;
}

function connectionOf(target: SmtpTarget, options: SmtpDeliveryOptions, mode: TlsMode): Connection {
  return {
    nextHop: describeHop(target),
    rejectUnauthorized: options.rejectUnauthorized ?? (mode === "required" || mode === "implicit"),
    servername: target.servername ?? (isIP(target.host) === 0 ? target.host : undefined),
  };
}

/** Everything that makes two connections interchangeable. */
function poolKey(target: SmtpTarget, options: SmtpDeliveryOptions, mode: TlsMode, c: Connection): string {
  return JSON.stringify([
    target.lmtp === true,
    target.host,
    target.port,
    mode,
    c.rejectUnauthorized,
    c.servername ?? null,
    options.localAddress ?? null,
    options.name,
    options.ca ? String(options.ca).length : 0,
    options.auth?.user ?? null, // A connection is logged in as this user
  ]);
}

/**
 * A place among the pooled connections to this target (with an idle connection in it when there is
 * one); undefined without a pool; "busy" when no place came free before the deadline or the abort.
 */
async function leaseFor(
  target: SmtpTarget,
  options: SmtpDeliveryOptions,
  mode: TlsMode,
  c: Connection,
  deadline: number,
): Promise<Lease | undefined | "busy"> {
  if (!options.pool) return undefined;
  try {
    return await options.pool.acquire(poolKey(target, options, mode, c), options.connectionLimit, {
      until: deadline,
      signal: options.signal,
    });
  } catch {
    return "busy";
  }
}

/**
 * One attempt on one connection: a pooled idle one when there is one, else a new one. A pooled
 * connection can turn out to be dead only now (the server dropped it as we wrote); when nothing of
 * the transaction was answered, the attempt is made again on a fresh connection.
 */
async function attempt(
  target: SmtpTarget,
  envelope: SmtpEnvelope,
  message: Readable | Buffer,
  options: SmtpDeliveryOptions,
  mode: TlsMode,
  deadline: number,
): Promise<Attempt> {
  const c = connectionOf(target, options, mode);
  const allDeferred = (text: string, enhanced = "4.4.1"): Attempt => ({
    kind: "done",
    result: {
      nextHop: c.nextHop,
      unreachable: true,
      recipients: envelope.to.map((r) => outcome(r, { code: 451, enhanced, text })),
    },
  });
  const pool = options.pool;
  const lease = await leaseFor(target, options, mode, c, deadline);
  if (lease === "busy") {
    return allDeferred(
      options.signal?.aborted ? "Delivery aborted" : `Timed out waiting for a connection to ${c.nextHop}`,
    );
  }
  let link: Link | null = lease?.link ?? null;
  let keep = false;
  let envelopeOpen = false;
  try {
    if (link) {
      const reused = await transact(link, c, envelope, message, options, deadline);
      if (!reused.stale || (!Buffer.isBuffer(message) && message.readableDidRead)) {
        keep = reused.reusable;
        envelopeOpen = reused.envelopeOpen;
        return { kind: "done", result: reused.result };
      }
      link.close();
    }
    const opened = await open(target, c, options, mode, deadline);
    if ("unreachable" in opened) {
      link = null;
      return {
        kind: opened.tlsFailed ? "tls-failed" : "done",
        result: allDeferred(opened.unreachable, opened.enhanced).result,
      };
    }
    link = opened.link;
    const sent = await transact(link, c, envelope, message, options, deadline);
    keep = sent.reusable;
    envelopeOpen = sent.envelopeOpen;
    return { kind: "done", result: sent.result };
  } finally {
    if (lease && pool) {
      if (keep && link && envelopeOpen) resetThenRelease(pool, lease, link);
      else pool.release(lease, keep ? link : null);
      if (!keep) link?.close();
    } else if (link) {
      if (keep) link.conn.quit();
      else link.close();
    }
  }
}

/**
 * RSET clears an envelope a refusal left open on the server (a refused MAIL or every RCPT refused);
 * only a connection that answered it goes back to the pool. After the reply to the end of data the
 * server has cleared the transaction itself (RFC 5321 §4.1.1.4), so no RSET is sent then: it was a
 * write, a read and a reply parse per message. A pooled connection that died meanwhile
 * is caught at its next use, which then goes to a fresh connection (`attempt`).
 */
function resetThenRelease(pool: ConnectionPool, lease: Lease, link: Link): void {
  let released = false;
  const release = (keep: boolean) => {
    if (released) return;
    released = true;
    if (!keep) link.close();
    pool.release(lease, keep ? link : null);
  };
  link.handler = () => release(false);
  link.conn.reset((error) => release(!error));
}

/** Connects (and says EHLO, and STARTTLS per `mode`); a failure says why and whether TLS was the cause. */
async function open(
  target: SmtpTarget,
  c: Connection,
  options: SmtpDeliveryOptions,
  mode: TlsMode,
  deadline: number,
): Promise<{ link: Link } | { unreachable: string; tlsFailed: boolean; enhanced?: string }> {
  // nodemailer's client (~10 MB) loads with the first connection to a next hop, not with the gateway.
  const { default: SMTPConnection } = await import("nodemailer/lib/smtp-connection");
  const remaining = Math.max(1, deadline - Date.now());
  const tls = {
    rejectUnauthorized: c.rejectUnauthorized,
    servername: c.servername,
    ...(options.ca ? { ca: options.ca } : {}),
  };
  const link = new Link(
    new SMTPConnection({
      host: target.host,
      port: target.port,
      name: options.name,
      lmtp: target.lmtp === true,
      ignoreTLS: mode === "none",
      requireTLS: mode === "required",
      // Undefined keeps nodemailer's own default (implicit TLS on port 465).
      secure: mode === "implicit" ? true : undefined,
      opportunisticTLS: mode === "opportunistic",
      servername: c.servername,
      localAddress: options.localAddress,
      tls,
      connectionTimeout: remaining,
      greetingTimeout: remaining,
      // Our own timers bound every transaction; this only reaps a pooled connection gone silent.
      socketTimeout: 10 * 60_000,
      socketCloseTimeout: 1000,
      logger: false,
    }),
  );
  return new Promise((resolve) => {
    let settled = false;
    const fail = (reason: string, tlsFailed = false, enhanced?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      link.close();
      resolve({ unreachable: reason, tlsFailed, ...(enhanced ? { enhanced } : {}) });
    };
    const timer = setTimeout(
      () => fail(`Timed out after ${options.timeoutMs} ms connecting to ${c.nextHop}`),
      remaining,
    );
    const onAbort = () => fail("Delivery aborted");
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    link.handler = (event) => {
      if (event.kind === "end") return fail(`Connection to ${c.nextHop} closed before the greeting`);
      // A failed handshake surfaces as a socket error while `upgrading`, a refused STARTTLS as ETLS.
      const error = event.error as ConnectionError;
      fail(
        `Cannot connect to ${c.nextHop}: ${describeError(error)}`,
        error.code === "ETLS" || link.conn.upgrading === true,
      );
    };
    const opened = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      link.handler = null;
      resolve({ link });
    };
    link.conn.connect((error) => {
      if (error) return fail(`Cannot connect to ${c.nextHop}: ${describeError(error as ConnectionError)}`);
      if (settled) return;
      if (!options.auth) return opened();
      // A refused login defers (the operator can fix the credentials; nothing bounces).
      // The reason names the user and the next hop; nodemailer's error text carries only the reply.
      const { user } = options.auth;
      link.conn.login(options.auth, (authError) => {
        if (!authError) return opened();
        fail(
          `Authentication as ${user} at ${c.nextHop} failed: ${describeError(authError as ConnectionError)}`,
          false,
          "4.7.0",
        );
      });
    });
  });
}

/**
 * One transaction on an open link. `reusable`: the session is in a known state (a reply ended the
 * transaction). `envelopeOpen`: that reply came before the end of data, so the server still holds
 * the envelope and needs an RSET before the next message. `stale`: the link died before the server
 * answered anything of this transaction.
 */
function transact(
  link: Link,
  c: Connection,
  envelope: SmtpEnvelope,
  message: Readable | Buffer,
  options: SmtpDeliveryOptions,
  deadline: number,
): Promise<{ result: DeliveryResult; reusable: boolean; envelopeOpen: boolean; stale: boolean }> {
  const { nextHop } = c;
  const tracked: TrackedEnvelope = {
    from: envelope.from === "" ? false : envelope.from,
    to: [...envelope.to],
    ...(envelope.dsn
      ? {
          dsn: {
            ret: envelope.dsn.ret,
            envid: envelope.dsn.envid,
            notify: envelope.dsn.notify ? [...envelope.dsn.notify] : undefined,
            orcpt: envelope.dsn.orcpt,
          },
        }
      : {}),
  };
  link.uses++;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (result: DeliveryResult, reusable: boolean, envelopeOpen: boolean, stale = false) => {
      if (settled) return;
      settled = true;
      options.onSettled?.(result);
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      link.handler = null;
      if (!reusable) link.close();
      resolve({ result, reusable, envelopeOpen, stale });
    };
    /** The session broke mid-transaction: keep definite per-recipient answers, defer the rest. */
    const lost = (reason: string) => {
      const answered = (tracked.accepted?.length ?? 0) + (tracked.rejectedErrors?.length ?? 0) > 0;
      finish(
        transactionResult(envelope, tracked, nextHop, { code: 451, enhanced: "4.4.2", text: reason }),
        false,
        true,
        !answered,
      );
    };
    const timer = setTimeout(
      () => lost(`Timed out after ${options.timeoutMs} ms talking to ${nextHop}`),
      Math.max(1, deadline - Date.now()),
    );
    const onAbort = () => lost("Delivery aborted");
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    link.handler = (event) =>
      lost(
        event.kind === "end"
          ? `Connection to ${nextHop} closed`
          : `Connection to ${nextHop} lost: ${describeError(event.error as ConnectionError)}`,
      );
    link.conn.send(tracked, message, (sendError: ConnectionError | null, info?: SMTPConnectionSendInfo) => {
      if (sendError) {
        // A reply ended the transaction (refused MAIL, RCPTs, DATA): the session itself is fine.
        const replied = typeof sendError.response === "string" && sendError.code !== "ECONNECTION";
        finish(failedTransaction(envelope, tracked, nextHop, sendError), replied && !link.dead, true);
        return;
      }
      const response = oneLine(info?.response ?? "");
      // nodemailer hands over only LMTP's last reply, which belongs to the last recipient: the
      // others get a plain 250 rather than a reply that names someone else or says "failed".
      const delivered = link.conn.options.lmtp
        ? { code: 250, enhanced: "2.0.0", text: `Delivered by ${nextHop}` }
        : nextHopReply(info?.response, { code: 250, enhanced: "2.0.0", text: "Accepted" });
      finish({ ...transactionResult(envelope, tracked, nextHop, delivered), response }, !link.dead, false);
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
      response: oneLine(error.response ?? ""),
      recipients: envelope.to.map((r) => outcome(r, reply, nextHop)),
    };
  }
  return { ...transactionResult(envelope, tracked, nextHop, reply), response: oneLine(error.response ?? "") };
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
  const text = oneLine(error.message, 200);
  return code && !text.includes(code) ? `${code} ${text}` : text;
}

/**
 * What a next hop says about a recipient when asked without a message: `reply` is its answer to
 * RCPT TO; `unanswered` says why there is none (unreachable, the null sender refused, no reply in
 * time). `unreachable` is set when no session was established, so another host may be asked.
 */
export type RecipientProbe =
  | { readonly kind: "answered"; readonly reply: Reply; readonly nextHop: string }
  | { readonly kind: "unanswered"; readonly reason: string; readonly unreachable: boolean };

/**
 * The reply-by-reply dialogue nodemailer runs its own commands with (`reset()` is written this way).
 * Its public API has no MAIL and RCPT without DATA, and a probe must never reach DATA.
 */
interface CommandChannel {
  _sendCommand(line: string): void;
  _responseActions: Array<(reply: string) => void>;
}

function commandChannel(conn: SMTPConnection): CommandChannel {
  const channel = conn as unknown as Partial<CommandChannel>;
  if (typeof channel._sendCommand !== "function" || !Array.isArray(channel._responseActions)) {
    // A nodemailer without them cannot probe: every probe stays unanswered (fail safe, 4xx).
    throw new Error("this nodemailer cannot send single commands");
  }
  return channel as CommandChannel;
}

/** One command and its reply on a link; "lost" when the link failed or the deadline passed first. */
function command(link: Link, line: string, deadline: number): Promise<{ reply: string } | { lost: string }> {
  const channel = commandChannel(link.conn);
  return new Promise((resolve) => {
    let settled = false;
    const done = (result: { reply: string } | { lost: string }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      link.handler = null;
      resolve(result);
    };
    const timer = setTimeout(() => done({ lost: "no reply in time" }), Math.max(1, deadline - Date.now()));
    link.handler = (event) =>
      done({ lost: event.kind === "end" ? "connection closed" : describeError(event.error as ConnectionError) });
    channel._responseActions.push((reply) => done({ reply }));
    channel._sendCommand(line);
  });
}

/**
 * Asks a next hop whether it would take mail for `address`: MAIL FROM:<>, RCPT TO, then RSET, on a
 * pooled connection when there is one (the one deliveries use). Postfix's address verification
 * does the same; the null sender keeps the next hop from ever treating the probe as mail from
 * someone. Resolves, never rejects, except for an unsafe address (a programming error).
 */
export async function probeRecipient(
  target: SmtpTarget,
  address: string,
  options: SmtpDeliveryOptions,
): Promise<RecipientProbe> {
  if (UNSAFE_ADDRESS.test(address)) throw new TypeError(`probeRecipient: unsafe address ${JSON.stringify(address)}`);
  const deadline = Date.now() + options.timeoutMs;
  const mode = options.tls ?? "opportunistic";
  const first = await probeOnce(target, address, options, mode, deadline);
  if (first.tlsFailed && mode === "opportunistic" && Date.now() < deadline) {
    return (await probeOnce(target, address, options, "none", deadline)).probe;
  }
  return first.probe;
}

async function probeOnce(
  target: SmtpTarget,
  address: string,
  options: SmtpDeliveryOptions,
  mode: TlsMode,
  deadline: number,
): Promise<{ probe: RecipientProbe; tlsFailed: boolean }> {
  const c = connectionOf(target, options, mode);
  const unanswered = (reason: string, unreachable = false, tlsFailed = false) => ({
    probe: { kind: "unanswered" as const, reason, unreachable },
    tlsFailed,
  });
  const pool = options.pool;
  const lease = await leaseFor(target, options, mode, c, deadline);
  if (lease === "busy") return unanswered(`no connection to ${c.nextHop} became free in time`);
  let link: Link | null = lease?.link ?? null;
  let keep = false;
  try {
    if (link) {
      const reused = await ask(link, address, c.nextHop, deadline);
      // A pooled connection the server dropped while it was idle answers nothing: ask on a new one.
      if (!reused.stale) {
        keep = reused.reusable;
        return { probe: reused.probe, tlsFailed: false };
      }
      link.close();
    }
    const opened = await open(target, c, options, mode, deadline);
    if ("unreachable" in opened) {
      link = null;
      return unanswered(opened.unreachable, true, opened.tlsFailed);
    }
    link = opened.link;
    const asked = await ask(link, address, c.nextHop, deadline);
    keep = asked.reusable;
    return { probe: asked.probe, tlsFailed: false };
  } catch (error) {
    return unanswered(`cannot ask ${c.nextHop}: ${(error as Error).message}`);
  } finally {
    if (lease && pool) pool.release(lease, keep ? link : null);
    if (!keep) link?.close();
    else if (!lease) link?.conn.quit();
  }
}

/**
 * The probe's dialogue. `reusable`: RSET was answered, so the session is clean for the next user.
 * `stale`: the link failed before any reply (a reused connection the server had dropped).
 */
async function ask(
  link: Link,
  address: string,
  nextHop: string,
  deadline: number,
): Promise<{ probe: RecipientProbe; reusable: boolean; stale: boolean }> {
  const lost = (why: string, stale = false) => ({
    probe: { kind: "unanswered" as const, reason: `${nextHop}: ${why}`, unreachable: false },
    reusable: false,
    stale,
  });
  const mail = await command(link, "MAIL FROM:<>", deadline);
  if ("lost" in mail) return lost(mail.lost, true);
  let probe: RecipientProbe;
  if (!mail.reply.startsWith("2")) {
    probe = {
      kind: "unanswered",
      reason: `${nextHop} refused the null sender: ${oneLine(mail.reply)}`,
      unreachable: false,
    };
  } else {
    const rcpt = await command(link, `RCPT TO:<${address}>`, deadline);
    if ("lost" in rcpt) return lost(rcpt.lost);
    probe = {
      kind: "answered",
      reply: nextHopReply(rcpt.reply, { code: 451, enhanced: "4.4.2", text: "Unexpected reply" }),
      nextHop,
    };
  }
  const reset = await command(link, "RSET", deadline);
  return { probe, reusable: "reply" in reset && reset.reply.startsWith("2") && !link.dead, stale: false };
}
