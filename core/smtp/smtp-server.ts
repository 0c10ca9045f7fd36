/**
 * smtp-server with the changes the gateway needs (all reach into smtp-server internals, so the
 * package is pinned to an exact version and test/smtp/smtp-server.test.ts fails loudly if an upgrade
 * breaks them):
 *
 * - the greeting delay is ours to choose, per client: smtp-server hard-codes 100 ms before every
 *   greeting, which caps throughput at low concurrency, while an early-talker check wants seconds;
 * - a command sent before the greeting can be held instead of refused, so the policy (not
 *   smtp-server's fixed 421) decides what talking first costs;
 * - replies whose text already starts with an enhanced status code are sent as they are; otherwise
 *   smtp-server would put its own code from a fixed table in front (`550 5.1.1 5.7.1 …`);
 * - an address whose domain holds an IDNA dot other than "." is handed on as written, not as
 *   smtp-server's punycode step rewrote it, so the policy refuses it (core/toolkit/address.ts).
 * - slow clients are bounded: each byte resets smtp-server's idle timeout, so a client trickling
 *   one byte at a time could hold a slot for ever. Each command gets a deadline that bytes do not
 *   extend, each connection a lifetime, each client a slot before any work is done for it, and a
 *   listener near maxClients shortens the deadlines (postscreen's stress mode).
 */
import { isUtf8 } from "node:buffer";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import { SMTPConnection } from "smtp-server/lib/smtp-connection.js";
import type { PregreetRun } from "../engine/pipeline.js";
import { pathAsWritten } from "../toolkit/address.js";
import { oneLine } from "../toolkit/client-text.js";
import type { NetworkList } from "../toolkit/netaddr.js";
import { sessionId } from "../toolkit/random.js";
import { ownReplyOverride } from "./hardening.js";
import { readProxyHeader } from "./proxy-v2.js";

const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;

/** smtp-server's reply when its idle timeout fires (rewritten in core/smtp/hardening.ts). */
const IDLE_TIMEOUT_TEXT = "Timeout - closing connection";

/** Why the listener ended a connection on its own, before or without any hook deciding. */
export type CutReason = "max-clients" | "per-client" | "idle" | "command-timeout" | "connection-time" | "evicted";

/** What a listener reports about its limits, so each cut and each change of stress is logged and counted. */
export type ListenerEvent =
  | { readonly kind: "cut"; readonly reason: CutReason; readonly id: string; readonly remoteAddress: string }
  | { readonly kind: "stress"; readonly on: boolean; readonly connections: number; readonly maxClients: number };

/** Deadlines against slow clients, in milliseconds (the policy's `server.limits`). */
export interface SlowClientLimits {
  readonly commandTimeout: number;
  readonly maxConnectionTime: number;
  /** Share of maxClients at which the listener is under stress. */
  readonly stressThreshold: number;
  readonly stressTimeout: number;
}

export interface GatewayServerOptions extends SMTPServerOptions {
  /** Milliseconds to wait before the greeting for this client (a promise when it takes a lookup). */
  greetingDelay(remoteAddress: string): Promise<PregreetRun>;
  /** Peers allowed to send a PROXY header (a load balancer); everyone else speaks SMTP directly. */
  proxyTrusted?: NetworkList;
  /** Peers allowed to send XCLIENT; smtp-server itself only matches exact addresses. */
  xclientTrusted?: NetworkList;
  /** Error replies (5xx) a client may collect before it is disconnected; an accepted message resets the count. */
  maxErrors?: number;
  /**
   * Whether a command sent before the greeting is held until the greeting is out (and the connection
   * marked in `pregreet.talkedEarly` for a connect hook to judge). Otherwise smtp-server answers it
   * with 421 "You talk too soon" and closes.
   */
  holdEarlyTalk?(): boolean;
  /**
   * Takes the client's slot for a new connection (per-client limits); false refuses it with 421
   * 4.7.0 before the greeting delay, any lookup or any hook. The gateway frees the slot when the
   * connection closes.
   */
  admit?(id: string, remoteAddress: string): boolean;
  slowClients?: SlowClientLimits;
  /** Hears every connection the listener cuts or refuses on its own, and each change of stress. */
  onLimit?(event: ListenerEvent): void;
}

export class GatewayConnection extends SMTPConnection {
  declare _server: GatewaySMTPServer;
  #errors = 0;
  /** The wait before the greeting; the gateway hands this object to the session as `ConnectionContext.pregreet`. */
  readonly pregreet = { delayMs: 0, talkedEarly: false };
  /** What the `pregreet` hooks came to (null until they ran): the session judges a failed one. */
  pregreetRun: PregreetRun | null = null;
  #holdEarlyTalk = false;
  /** The command that arrived before the greeting; the parser sends no other until this one is answered. */
  #held: (() => void) | null = null;
  /**
   * When the gateway became ready for the client's next command (greeting or reply sent); null
   * while the gateway owes a reply or a message is being received (that phase has dataTimeout).
   */
  #waitingSince: number | null = null;
  /** Ends the wait for a command, however many bytes of it have trickled in. */
  #commandDeadline: NodeJS.Timeout | undefined;
  #lifetime: NodeJS.Timeout | undefined;
  /** The lifetime ran out while a command or message was in progress: the cut waits for its reply. */
  #expired = false;
  /** Some command of this connection got a positive reply (2xx or 3xx). */
  #answered = false;
  /** The short deadline applies (see #awaitCommand). */
  #stressed = false;
  #lastReplyCode = 0;
  /** DATA was accepted: command deadlines pause until the message's reply. */
  #inMessage = false;

  override init(): void {
    this._setListeners(() => {
      const { maxClients } = this._server.options;
      if (maxClients && this._server.connections.size > maxClients && !this._server.evictSlowest()) {
        this.#cut("max-clients", "4.7.0 Too many connections, try again later");
        return;
      }
      if (!(this._server.gatewayOptions.admit?.(this.id, this.remoteAddress) ?? true)) {
        this.#cut("per-client", "4.7.0 Too many connections from your address");
        return;
      }
      this.#startLifetime();
      this.#holdEarlyTalk = this._server.gatewayOptions.holdEarlyTalk?.() ?? false;
      const start = (run: PregreetRun) => {
        this.pregreetRun = run;
        const delay = run.delayMs;
        this.pregreet.delayMs = delay;
        const ready = () =>
          this.connectionReady(() => {
            this.#awaitCommand();
            this.#releaseHeld();
          });
        if (delay <= 0) setImmediate(ready);
        else setTimeout(ready, delay).unref();
      };
      // A rejection would be unhandled here and end the process; it only costs this connection.
      Promise.resolve()
        .then(() => this._server.gatewayOptions.greetingDelay(this.remoteAddress))
        .then(start, (error: Error) => {
          this._server.logger.error({ tnx: "connection", cid: this.id, err: error }, "greeting delay failed");
          this.send(421, "4.3.0 Temporary server error, try again later", false);
        });
    });
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    // During a TLS handshake smtp-server discards input itself; after close nothing is answered.
    if (this.#holdEarlyTalk && !this._ready && !this._upgrading && !this._closing) {
      this.pregreet.talkedEarly = true;
      this.#held = () => this._onCommand(command, callback);
      return;
    }
    clearTimeout(this.#commandDeadline);
    this.#waitingSince = null;
    // smtp-server decodes a command as UTF-8, turning bytes that are not UTF-8 into U+FFFD, and takes
    // a non-ASCII address without SMTPUTF8: both are refused here, where the bytes are still at hand.
    const refusal = this._ready && !this._upgrading ? addressEncodingRefusal(command, this.session.envelope) : null;
    if (refusal) {
      this.send(553, refusal);
      this.#awaitCommand();
      callback?.();
      return;
    }
    // smtp-server calls back once the command is answered and the reply flushed.
    super._onCommand(command, () => {
      if (this.#lastReplyCode >= 200 && this.#lastReplyCode < 400) this.#answered = true;
      if (this._dataStream) this.#inMessage = true;
      else this.#awaitCommand();
      callback?.();
    });
  }

  /**
   * The gateway is ready for the client's next command: it must arrive complete within the
   * deadline, counted from now. Under stress the short deadline applies, and a connection that met
   * stress before any command of it was accepted keeps it after the stress ends: it has shown
   * nothing that earns it the long one.
   */
  #awaitCommand(): void {
    if (this._closing || this._closed) return;
    if (this.#expired) {
      this.#cut("connection-time", "4.4.2 Connection time limit reached, closing connection");
      return;
    }
    const limits = this._server.gatewayOptions.slowClients;
    if (!limits) return;
    if (this._server.underStress) this.#stressed = true;
    else if (this.#answered) this.#stressed = false;
    this.#waitingSince = performance.now();
    this.#armCommandDeadline(this.#stressed ? shortDeadline(limits) : limits.commandTimeout);
  }

  #armCommandDeadline(ms: number): void {
    clearTimeout(this.#commandDeadline);
    this.#commandDeadline = setTimeout(
      () => this.#cut("command-timeout", "4.4.2 Command timeout, closing connection"),
      ms,
    ).unref();
  }

  /** How long this connection has made the gateway wait for its current command; 0 when it owes nothing. */
  waitedMs(now: number): number {
    return this.#waitingSince === null ? 0 : now - this.#waitingSince;
  }

  /** Gives this connection's slot to a new client (see GatewaySMTPServer#evictSlowest). */
  evict(): void {
    this.#cut("evicted", "4.4.2 Too slow while the server is full, closing connection");
  }

  /** The listener came under stress: a wait in progress ends stressTimeout after it began (now, if that is past). */
  stressBegan(): void {
    const limits = this._server.gatewayOptions.slowClients;
    if (!limits || this._closing || this._closed) return;
    this.#stressed = true;
    if (this.#waitingSince === null) return;
    this.#armCommandDeadline(Math.max(0, this.#waitingSince + shortDeadline(limits) - performance.now()));
  }

  /**
   * maxConnectionTime: a connection waiting for a command (or still before its greeting) is cut at
   * once; one in the middle of a command or message is cut when that is answered, so a message the
   * gateway may already have accepted is never cut off from its reply.
   */
  #startLifetime(): void {
    const limits = this._server.gatewayOptions.slowClients;
    if (!limits) return;
    this.#lifetime = setTimeout(() => {
      if (this.#waitingSince !== null || !this._ready) {
        this.#cut("connection-time", "4.4.2 Connection time limit reached, closing connection");
      } else this.#expired = true;
    }, limits.maxConnectionTime).unref();
  }

  /** Sends a 421 (which closes the connection) and reports the cut. */
  #cut(reason: CutReason, text: string): void {
    if (this._closing || this._closed) return;
    this._server.gatewayOptions.onLimit?.({ kind: "cut", reason, id: this.id, remoteAddress: this.remoteAddress });
    this.send(421, text, false);
  }

  override close(): void {
    super.close();
    this._server.loadChanged();
  }

  /**
   * After the 221 to QUIT the session is over (RFC 5321 §4.1.1.10): once the reply is in the
   * kernel, the connection closes at once, as Postfix's smtpd does, instead of half-closing and
   * reading on until the client's FIN. A client that resets its side after QUIT (smtp-source does)
   * would otherwise cost a read error, an error object with its stack and its handling per
   * connection. Over TLS, and while the reply still waits to be written, the half-close stays.
   */
  override handler_QUIT(command: Buffer, callback: () => void): void {
    super.handler_QUIT(command, callback);
    const socket = this._socket;
    if (!this.secure && !socket.destroyed && socket.writableLength === 0) socket.destroy();
  }

  override _onClose(): void {
    clearTimeout(this.#commandDeadline);
    clearTimeout(this.#lifetime);
    super._onClose();
    this._server.loadChanged();
  }

  /** Runs once the greeting is out (never, when the session was refused instead). */
  #releaseHeld(): void {
    const held = this.#held;
    this.#held = null;
    held?.();
  }

  /** A path with an IDNA dot other than "." reaches the policy as written, to be refused there (core/toolkit/address.ts). */
  override _parseAddressCommand(
    name: string,
    command: Buffer | string,
  ): ReturnType<SMTPConnection["_parseAddressCommand"]> {
    const parsed = super._parseAddressCommand(name, command);
    const written = parsed ? pathAsWritten(command.toString()) : undefined;
    return parsed && written !== undefined ? { ...parsed, address: written } : parsed;
  }

  override send(code: number, rawData?: string | string[] | null, context?: string | false): void {
    this.#coalesce(code);
    // Reply texts carry client text (addresses, HELO names) and a next hop's; each line stays one line.
    const data = Array.isArray(rawData)
      ? rawData.map((line) => oneLine(line, Number.POSITIVE_INFINITY))
      : typeof rawData === "string"
        ? oneLine(rawData, Number.POSITIVE_INFINITY)
        : rawData;
    this.#lastReplyCode = code;
    // smtp-server's own replies get our codes and texts (core/smtp/hardening.ts).
    const own = typeof data === "string" ? ownReplyOverride(data) : undefined;
    if (own) {
      if (data === IDLE_TIMEOUT_TEXT && !this._closing) {
        this._server.gatewayOptions.onLimit?.({
          kind: "cut",
          reason: "idle",
          id: this.id,
          remoteAddress: this.remoteAddress,
        });
      }
      super.send(own.code, own.text, false);
      if (code === 421) this.close();
      else this.#countErrors(own.code, context);
      return;
    }
    if (code >= 400 && typeof data === "string" && !ENHANCED_PREFIX.test(data) && !enhancedCodeAdded(context)) {
      super.send(code, `${fallbackEnhancedCode(code)} ${data}`, false);
      this.#countErrors(code, context);
      return;
    }
    if (typeof data === "string" && ENHANCED_PREFIX.test(data)) {
      super.send(code, data, false);
      this.#countErrors(code, context);
    } else {
      super.send(code, data, context);
      this.#countErrors(code, context);
    }
    // The message's reply is out (smtp-server clears _dataStream just before it): commands again.
    if (this.#inMessage && !this._dataStream) {
      this.#inMessage = false;
      this.#awaitCommand();
    }
  }

  /**
   * smtp-server writes every reply line on its own; replies made in the same turn of the event loop
   * (a pipelined MAIL/RCPT/DATA group) now leave in one write (~4% of the relay's CPU was spent in
   * per-reply writes). 220 is never held back: after "220 Ready to start TLS" the TLS handshake
   * takes the socket over, and the reply must already be on the wire. end() flushes what is held.
   */
  #coalesce(code: number): void {
    const socket = this._socket;
    if (code === 220 || socket.writableCorked > 0 || socket.destroyed) return;
    socket.cork();
    process.nextTick(() => socket.uncork());
  }

  /** Postfix's hard error limit: a client that only collects 5xx replies is cut off. */
  #countErrors(code: number, context?: string | false): void {
    if (context === "DATA_OK") this.#errors = 0;
    else if (code >= 500 && ++this.#errors >= (this._server.gatewayOptions.maxErrors ?? Number.POSITIVE_INFINITY)) {
      super.send(421, "4.7.0 Too many errors, closing connection", false);
    }
  }

  /** XCLIENT only from trusted networks (smtp-server matches exact addresses); XFORWARD never. */
  override _proxyCommandAllowed(command: string): boolean {
    const trusted = this._server.gatewayOptions.xclientTrusted;
    return command === "XCLIENT" && !this._xClient.has("ADDR") && (trusted?.has(this._originalRemoteAddress) ?? false);
  }

  /** AUTH is neither offered nor accepted before TLS: credentials never cross the wire in clear. */
  override _isDisabled(command: string): boolean {
    return (command === "AUTH" && !this.secure) || super._isDisabled(command);
  }
}

/** Contexts for which smtp-server sends a refusal without an enhanced code (RFC 2034 exempts only greetings and EHLO's 250). */
const BARE_CONTEXTS: ReadonlySet<string | false | undefined> = new Set([false, "HELO", "EHLO", "LHLO"]);

function enhancedCodeAdded(context: string | false | undefined): boolean {
  return !BARE_CONTEXTS.has(context);
}

/** RFC 3463 for a refusal that came without a code: a syntax class for 500/501, else the basic "other". */
function fallbackEnhancedCode(code: number): string {
  if (code === 500 || code === 501) return "5.5.2";
  if (code === 502 || code === 503) return "5.5.1";
  if (code === 504) return "5.5.4";
  return `${String(code)[0]}.0.0`;
}

const ADDRESS_COMMAND = /^(?:MAIL|RCPT)\s/i;

/**
 * Why a MAIL or RCPT command's address cannot be taken as sent (RFC 6531 §3.5, 553 5.6.7): bytes
 * that are not UTF-8, or non-ASCII without SMTPUTF8 on the MAIL command. Null for any other command.
 */
export function addressEncodingRefusal(
  command: Buffer,
  envelope: { readonly smtpUtf8?: boolean; readonly mailFrom?: unknown },
): string | null {
  const verb = command.subarray(0, 5).toString();
  if (!ADDRESS_COMMAND.test(verb)) return null;
  // A RCPT outside a transaction gets smtp-server's own 503 first.
  if (/^RCPT/i.test(verb) && !envelope.mailFrom) return null;
  if (!isUtf8(command)) return "5.6.7 Address is not valid UTF-8";
  if (!command.some((byte) => byte > 0x7f)) return null;
  // The parameters follow the address's closing bracket (an address never holds one).
  const parameters = command.subarray(command.indexOf(">") + 1).toString();
  const smtpUtf8 = /^MAIL/i.test(verb) ? /(?:^|\s)SMTPUTF8(?:\s|$)/i.test(parameters) : envelope.smtpUtf8 === true;
  return smtpUtf8 ? null : "5.6.7 Non-ASCII address requires SMTPUTF8";
}

/** Under stress, commands get stressTimeout, or commandTimeout if that is shorter. */
function shortDeadline(limits: SlowClientLimits): number {
  return Math.min(limits.stressTimeout, limits.commandTimeout);
}

/**
 * At maxClients a new client may take the slot of the connection that has kept the gateway waiting
 * longest for a command, once that wait exceeds this. A real client sends each command within a
 * round trip; a slow client never does, so however fast a flood of slow clients reconnects, a real
 * one still gets in (a newcomer is the freshest waiter of all, so the flood evicts itself).
 */
const EVICTABLE_AFTER_MS = 1000;

/** Stress ends once the connections fall this far below the number that started it (no flapping). */
const STRESS_END_RATIO = 0.9;

export class GatewaySMTPServer extends SMTPServer {
  /** Connections by session id, so a handler can close the connection it answers for. */
  readonly byId = new Map<string, GatewayConnection>();
  #underStress = false;

  /** Whether this listener is near maxClients (slowClients.stressThreshold), so deadlines are short. */
  get underStress(): boolean {
    return this.#underStress;
  }

  /** Cuts the connection waiting longest for a command past EVICTABLE_AFTER_MS; false when there is none. */
  evictSlowest(): boolean {
    const now = performance.now();
    let slowest: GatewayConnection | undefined;
    let longest = EVICTABLE_AFTER_MS;
    for (const connection of this.connections) {
      const waited = (connection as GatewayConnection).waitedMs(now);
      if (waited > longest) {
        longest = waited;
        slowest = connection as GatewayConnection;
      }
    }
    slowest?.evict();
    return slowest !== undefined;
  }

  /** Called whenever a connection is added or leaves `connections`: stress starts or ends here. */
  loadChanged(): void {
    const { maxClients } = this.options;
    const limits = this.gatewayOptions.slowClients;
    if (!limits || !maxClients) return;
    const connections = this.connections.size;
    const stressAt = Math.ceil(maxClients * limits.stressThreshold);
    if (!this.#underStress && connections >= stressAt) {
      this.#underStress = true;
      this.gatewayOptions.onLimit?.({ kind: "stress", on: true, connections, maxClients });
      for (const connection of this.connections) (connection as GatewayConnection).stressBegan();
    } else if (this.#underStress && connections < stressAt * STRESS_END_RATIO) {
      this.#underStress = false;
      this.gatewayOptions.onLimit?.({ kind: "stress", on: false, connections, maxClients });
    }
  }

  constructor(readonly gatewayOptions: GatewayServerOptions) {
    super({ ...gatewayOptions, useProxy: gatewayOptions.proxyTrusted !== undefined });
  }

  /** smtp-server only matches exact addresses; the policy trusts networks. */
  override _expectsProxyHeader(socket: Socket): boolean {
    return this.gatewayOptions.proxyTrusted?.has(socket.remoteAddress ?? "") ?? false;
  }

  override connect(socket: Socket | TLSSocket, socketOptions?: ConstructorParameters<typeof SMTPConnection>[2]): void {
    const connection = new GatewayConnection(this, socket, socketOptions);
    this.connections.add(connection);
    this.byId.set(connection.id, connection);
    this.loadChanged();
    connection.on("error", (err: Error) => this._onError(err));
    connection.on("connect", (data) => this._onClientConnect(data));
    connection.init();
  }

  /** PROXY v2 (binary) is parsed here; a v1 text header goes on to smtp-server (core/smtp/proxy-v2.ts). */
  override _handleProxy(
    socket: Socket,
    callback: (
      err: Error | null,
      socketOptions?: { id: string; remoteAddress?: string; remotePort?: number; ignore?: boolean },
    ) => void,
  ): void {
    if (!this._expectsProxyHeader(socket)) {
      // smtp-server's own version, with the session id from a pooled block of random bytes instead
      // of a crypto call and a BigInt conversion per connection; same id form.
      const ignore = this.options.ignoredHosts?.includes(socket.remoteAddress ?? "") ?? false;
      setImmediate(() => callback(null, { id: sessionId(), ignore }));
      return;
    }
    readProxyHeader(socket, (err, header) => {
      if (err) callback(err);
      else if (header === "v1") {
        super._handleProxy(socket, (v1Error, options) => {
          // smtp-server ends a refused socket but stops reading it: the client's FIN would go unread
          // (and the socket stay open, keeping server.close() waiting) until an unref'd 1 s linger.
          if (v1Error) socket.resume();
          callback(v1Error, options);
        });
      } else callback(null, header);
    });
  }

  /** Ends a session now with a 421 (a limit ran out while the client was still sending). */
  abortSession(id: string, text: string): void {
    this.byId.get(id)?.send(421, text, false);
  }

  /** Sends nothing more and closes the connection (after a `disconnect` decision's reply). */
  closeSession(id: string): void {
    const connection = this.byId.get(id);
    if (connection) setImmediate(() => connection.close());
  }
}
