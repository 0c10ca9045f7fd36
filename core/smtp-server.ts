/**
 * smtp-server with two changes the gateway needs (both reach into smtp-server internals, so the
 * package is pinned to an exact version and test/smtp-server.test.ts fails loudly if an upgrade
 * breaks them):
 *
 * - the greeting delay is ours to choose, per client: smtp-server hard-codes 100 ms before every
 *   greeting, which caps throughput at low concurrency, while an early-talker check wants seconds;
 * - replies whose text already starts with an enhanced status code are sent as they are; otherwise
 *   smtp-server would put its own code from a fixed table in front (`550 5.1.1 5.7.1 …`).
 */
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import { SMTPConnection } from "smtp-server/lib/smtp-connection.js";
import type { NetworkList } from "./netaddr.js";

const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;

export interface GatewayServerOptions extends SMTPServerOptions {
  /** Milliseconds to wait before the greeting for this client; a client that talks first is an early talker. */
  greetingDelay(remoteAddress: string): number;
  /** Peers allowed to send a PROXY header (a load balancer); everyone else speaks SMTP directly. */
  proxyTrusted?: NetworkList;
  /** Called when a client sends before the greeting; returns the reply to send before closing. */
  onEarlyTalker?(connection: GatewayConnection): { code: number; text: string };
}

export class GatewayConnection extends SMTPConnection {
  declare _server: GatewaySMTPServer;

  override init(): void {
    this._setListeners(() => {
      const { maxClients } = this._server.options;
      if (maxClients && this._server.connections.size > maxClients) {
        this.send(421, "4.7.0 Too many connections, try again later", false);
        this.close();
        return;
      }
      const delay = this._server.gatewayOptions.greetingDelay(this.remoteAddress);
      if (delay <= 0) {
        setImmediate(() => this.connectionReady());
        return;
      }
      setTimeout(() => this.connectionReady(), delay).unref();
    });
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (typeof data === "string" && ENHANCED_PREFIX.test(data)) {
      super.send(code, data, false);
      return;
    }
    if (code === 421 && typeof data === "string" && data.endsWith(" You talk too soon")) {
      const early = this._server.gatewayOptions.onEarlyTalker?.(this);
      if (early) {
        super.send(early.code, early.text, false);
        return;
      }
    }
    super.send(code, data, context);
  }
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

  /** Sends nothing more and closes the connection (after a `disconnect` decision's reply). */
  closeSession(id: string): void {
    const connection = this.byId.get(id);
    if (connection) setImmediate(() => connection.close());
  }
}
