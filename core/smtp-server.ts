/**
 * smtp-server with the changes the gateway needs (all reach into smtp-server internals, so the
 * package is pinned to an exact version and test/smtp-server.test.ts fails loudly if an upgrade
 * breaks them):
 *
 * - the greeting delay is ours to choose, per client: smtp-server hard-codes 100 ms before every
 *   greeting, which caps throughput at low concurrency, while an early-talker check wants seconds;
 * - a command sent before the greeting can be held instead of refused, so the policy (not
 *   smtp-server's fixed 421) decides what talking first costs;
 * - replies whose text already starts with an enhanced status code are sent as they are; otherwise
 *   smtp-server would put its own code from a fixed table in front (`550 5.1.1 5.7.1 …`);
 * - an address whose domain holds an IDNA dot other than "." is handed on as written, not as
 *   smtp-server's punycode step rewrote it, so the policy refuses it (core/address.ts).
 */
import { isUtf8 } from "node:buffer";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import { SMTPConnection } from "smtp-server/lib/smtp-connection.js";
import { pathAsWritten } from "./address.js";
import { oneLine } from "./client-text.js";
import { ownReplyOverride } from "./hardening.js";
import type { NetworkList } from "./netaddr.js";
import { readProxyHeader } from "./proxy-v2.js";
import { sessionId } from "./random.js";

const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;

export interface GatewayServerOptions extends SMTPServerOptions {
  /** Milliseconds to wait before the greeting for this client (a promise when it takes a lookup). */
  greetingDelay(remoteAddress: string): number | Promise<number>;
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
}

export class GatewayConnection extends SMTPConnection {
  declare _server: GatewaySMTPServer;
  #errors = 0;
  /** The wait before the greeting; the gateway hands this object to the session as `ConnectionContext.pregreet`. */
  readonly pregreet = { delayMs: 0, talkedEarly: false };
  #holdEarlyTalk = false;
  /** The command that arrived before the greeting; the parser sends no other until this one is answered. */
  #held: (() => void) | null = null;

  override init(): void {
    this._setListeners(() => {
      const { maxClients } = this._server.options;
      if (maxClients && this._server.connections.size > maxClients) {
        this.send(421, "4.7.0 Too many connections, try again later", false);
        this.close();
        return;
      }
      this.#holdEarlyTalk = this._server.gatewayOptions.holdEarlyTalk?.() ?? false;
      const start = (delay: number) => {
        this.pregreet.delayMs = delay;
        const ready = () => this.connectionReady(() => this.#releaseHeld());
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
      this.#held = () => this.#command(command, callback);
      return;
    }
    this.#command(command, callback);
  }

  /**
   * smtp-server decodes a command as UTF-8, turning bytes that are not UTF-8 into U+FFFD, and takes
   * a non-ASCII address without SMTPUTF8: both are refused here, where the bytes are still at hand.
   */
  #command(command: Buffer, callback?: () => void): void {
    const refusal = this._ready && !this._upgrading ? addressEncodingRefusal(command, this.session.envelope) : null;
    if (!refusal) {
      super._onCommand(command, callback);
      return;
    }
    this.send(553, refusal);
    callback?.();
  }

  /** Runs once the greeting is out (never, when the session was refused instead). */
  #releaseHeld(): void {
    const held = this.#held;
    this.#held = null;
    held?.();
  }

  /** A path with an IDNA dot other than "." reaches the policy as written, to be refused there (core/address.ts). */
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
    // smtp-server's own replies get our codes and texts (core/hardening.ts).
    const own = typeof data === "string" ? ownReplyOverride(data) : undefined;
    if (own) {
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
      return;
    }
    super.send(code, data, context);
    this.#countErrors(code, context);
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

export class GatewaySMTPServer extends SMTPServer {
  /** Connections by session id, so a handler can close the connection it answers for. */
  readonly byId = new Map<string, GatewayConnection>();

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
    connection.on("error", (err: Error) => this._onError(err));
    connection.on("connect", (data) => this._onClientConnect(data));
    connection.init();
  }

  /** PROXY v2 (binary) is parsed here; a v1 text header goes on to smtp-server (core/proxy-v2.ts). */
  override _handleProxy(
    socket: Socket,
    callback: (
      err: Error | null,
      socketOptions?: { id: string; remoteAddress?: string; remotePort?: number; ignore?: boolean },
    ) => void,
  ): void {
    if (!this._expectsProxyHeader(socket)) {
      // smtp-server's own version, with the session id from a pooled block of random bytes instead
      // of a crypto call and a BigInt conversion per connection (issue 11); same id form.
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
