/**
 * Hands a received message to its next hops: each recipient gets a route (`planRecipients`),
 * recipients are grouped by route and DSN parameters, each group is delivered (`deliverPlanned`),
 * and in proxy mode the per-recipient outcomes become one DATA reply (SMTP has one reply per message).
 * The queue's delivery worker uses the same `deliverPlanned`, so both modes route identically.
 */
import { Readable } from "node:stream";
import type { Address, TransactionContext } from "../contract/api.js";
import { coreReject, type RefusingDecision, type Reply } from "../contract/decision.js";
import type { DnsResolver } from "../dns/resolver.js";
import type { GatewayObserver } from "../observability/observe.js";
import { isDomainlessPostmaster } from "../policy/relay.js";
import type { HeaderField, SpooledMessage } from "../smtp/message.js";
import { headerFieldBytes } from "../toolkit/client-text.js";
import { deliverMaildir } from "./maildir.js";
import type { MtaStsCache } from "./mta-sts.js";
import { deliverMx } from "./mx.js";
import type { ConnectionPool } from "./pool.js";
import { type DeliveryResult, type RecipientOutcome, sameForAll } from "./result.js";
import { plainRoute, type RouteQuery, type Router, type RouteSpec, routeKey } from "./routes.js";
import { loadCredentials } from "./smarthost.js";
import {
  deliverSmtp,
  type MessageSource,
  type SettledListener,
  type SmtpDeliveryOptions,
  type SmtpEnvelope,
} from "./smtp.js";
import { formatRouteTarget, parseRouteTarget, type RouteTarget } from "./target.js";

export interface DeliveryOptions {
  readonly hostname: string;
  readonly timeoutMs: number;
  readonly dns: DnsResolver;
  readonly signal?: AbortSignal;
  /** Next-hop connections kept between messages; each attempt opens its own without. */
  readonly pool?: ConnectionPool;
  /** The port MX hosts are contacted on (policy `delivery.mxPort`). */
  readonly mxPort?: number;
  /** Whether an MX host is this gateway (loop detection). */
  readonly isSelf?: (exchange: string, address: string) => boolean;
  readonly mtaSts?: Pick<MtaStsCache, "policyFor">;
  /** Told each route's per-recipient outcomes (deliveries, deferrals, bounces by route). */
  readonly observer?: Pick<GatewayObserver, "delivery">;
  /** Told each next hop's answer the moment it arrives, before anything else happens (`SettledListener`). */
  readonly onSettled?: SettledListener;
}

/** One recipient with where it goes and its RFC 3461 parameters: what the queue stores per recipient. */
export interface PlannedRecipient {
  /** ASCII envelope form. */
  readonly address: string;
  readonly route: RouteSpec;
  /** NOTIFY values (NEVER, or some of SUCCESS, FAILURE, DELAY); absent when the client gave none. */
  readonly notify?: readonly string[];
  /** ORCPT as given: `rfc822;user@example.test`. */
  readonly orcpt?: string;
}

/** The envelope-level RFC 3461 parameters of MAIL FROM. */
export interface EnvelopeDsn {
  readonly ret?: "FULL" | "HDRS";
  readonly envid?: string;
}

/**
 * The message as it leaves: our trace and added header fields first, incoming fields that a hook
 * asked to remove dropped, everything else byte for byte as received. `head` replaces the bytes of
 * the original before `bodyStart`; the queue stores exactly these two parts.
 */
export interface OutgoingMessage {
  readonly head: Buffer;
  readonly source: SpooledMessage;
  readonly bodyStart: number;
  readonly size: number;
  /** For a delivery attempt: one Buffer when the message is in memory, else a stream from its file. */
  content(): Readable | Buffer;
}

const CRLF = Buffer.from("\r\n");

function asStream(content: Readable | Buffer): Readable {
  return Buffer.isBuffer(content) ? Readable.from([content], { objectMode: false }) : content;
}

export function composeMessage(message: SpooledMessage, tx: TransactionContext, received: string): OutgoingMessage {
  const added = headerFieldBytes([received, ...tx.headers.prepend]);
  const removals = tx.headers.remove;
  const kept = message.headers.filter(
    (field, index) => !removals.some((remove) => remove(field.name, field.value, index)),
  );
  const rewriteHeader = kept.length !== message.headers.length;
  // Kept fields are copied as bytes from the header section received, never re-encoded from text.
  const head = rewriteHeader
    ? Buffer.concat([
        added,
        ...kept.flatMap((field) => [message.headerSection.subarray(field.start, field.end), CRLF]),
        CRLF,
      ])
    : added;
  const bodyStart = rewriteHeader ? message.headerLength : 0;
  return {
    head,
    source: message,
    bodyStart,
    size: head.length + message.size - bodyStart,
    content: () => {
      const held = message.inMemory();
      if (held) return Buffer.concat([head, held.subarray(bodyStart)]);
      return Readable.from(
        (async function* () {
          yield head;
          yield* message.stream(bodyStart);
        })(),
      );
    },
  };
}

/** Envelope addresses leave with ASCII domains (smtp-server hands IDNs over in Unicode). */
export function envelopeAddress(local: string, domain: string): string {
  if (local === "" && domain === "") return "";
  return domain === "" ? local : `${local}@${domain}`;
}

function stringArg(address: Address, key: string): string | undefined {
  const value = address.args[key];
  return typeof value === "string" && value !== "" ? value : undefined;
}

export function envelopeDsn(sender: Address): EnvelopeDsn {
  const ret = stringArg(sender, "RET")?.toUpperCase();
  const envid = stringArg(sender, "ENVID");
  return {
    ...(ret === "FULL" || ret === "HDRS" ? { ret } : {}),
    ...(envid !== undefined ? { envid } : {}),
  };
}

/** What routes are matched on for one recipient of a transaction (at RCPT time and at delivery). */
export function routeQuery(tx: TransactionContext, recipient: Address): RouteQuery & { readonly recipient: string } {
  return {
    recipientDomain: recipient.domain,
    recipient: envelopeAddress(recipient.local, recipient.domain),
    senderDomain: tx.sender.domain,
    clientIp: tx.connection.client.ip,
    listener: tx.connection.local,
    tags: tx.tags,
  };
}

/**
 * Each recipient's route: a hook's `ctx.transaction.route` wins, then the policy's `routes:`. Our
 * own `<postmaster>` is the exception: it goes where `relay.postmaster` says, never where an
 * override would send the rest of the message (a smarthost, another organisation).
 */
export function planRecipients(tx: TransactionContext, router: Router): PlannedRecipient[] {
  return tx.recipients.map((recipient) => {
    const query = routeQuery(tx, recipient);
    const { address, route } =
      tx.route !== null && !isDomainlessPostmaster(recipient)
        ? { address: query.recipient, route: plainRoute(tx.route) }
        : // null only for a <postmaster> the rcpt phase refused, which never reaches delivery
          (router.destinationFor(query) ?? { address: query.recipient, route: router.routeFor(query) });
    const notify = stringArg(recipient, "NOTIFY")?.toUpperCase().split(",");
    const orcpt = stringArg(recipient, "ORCPT");
    return { address, route, ...(notify ? { notify } : {}), ...(orcpt ? { orcpt } : {}) };
  });
}

export function groupBy<T, K>(items: Iterable<T>, key: (item: T) => K): Map<K, T[]> {
  const groups = new Map<K, T[]>();
  for (const item of items) {
    const k = key(item);
    const group = groups.get(k);
    if (group) group.push(item);
    else groups.set(k, [item]);
  }
  return groups;
}

export interface RoutedDelivery {
  readonly outcomes: RecipientOutcome[];
  readonly nextHops: string[];
}

/**
 * Delivers to every recipient, one attempt each: groups of the same route (and the same NOTIFY and
 * ORCPT, which SMTP sends once per envelope in nodemailer) go concurrently. Never rejects.
 */
export async function deliverPlanned(
  from: string,
  recipients: readonly PlannedRecipient[],
  dsn: EnvelopeDsn,
  message: MessageSource,
  options: DeliveryOptions,
): Promise<RoutedDelivery> {
  const groups = groupBy(recipients, (r) => `${routeKey(r.route)}|${r.notify?.join(",") ?? ""}|${r.orcpt ?? ""}`);
  const results = await Promise.all(
    [...groups.values()].map((group) => {
      const { route, notify, orcpt } = group[0];
      const envelope: SmtpEnvelope = {
        from,
        to: group.map((r) => r.address),
        ...(notify || orcpt || dsn.ret || dsn.envid ? { dsn: { ...dsn, notify, orcpt } } : {}),
      };
      return deliverRoute(route, envelope, message, options).then((result) => {
        options.observer?.delivery(route.to.join(","), result.recipients);
        return result;
      });
    }),
  );
  return {
    outcomes: results.flatMap((result) => result.recipients),
    nextHops: results.map((result) => result.nextHop),
  };
}

/** A route's targets in order; the next one is tried only when the previous could not be reached. */
async function deliverRoute(
  route: RouteSpec,
  envelope: SmtpEnvelope,
  message: MessageSource,
  options: DeliveryOptions,
): Promise<DeliveryResult> {
  let last: DeliveryResult | undefined;
  for (const text of route.to) {
    const target = parseRouteTarget(text);
    if (!target) {
      return {
        nextHop: text,
        recipients: envelope.to.map((recipient) => ({
          recipient,
          status: "deferred" as const,
          reply: { code: 451, enhanced: "4.3.5", text: `Route target "${text}" is not usable` },
        })),
      };
    }
    last = await deliverTo(target, route, envelope, message, options);
    if (!last.unreachable || options.signal?.aborted) return last;
  }
  return last!;
}

export async function deliverTo(
  target: RouteTarget,
  route: RouteSpec,
  envelope: SmtpEnvelope,
  message: MessageSource,
  options: DeliveryOptions,
): Promise<DeliveryResult> {
  const smtp: SmtpDeliveryOptions = {
    name: options.hostname,
    timeoutMs: options.timeoutMs,
    signal: options.signal,
    pool: options.pool,
    onSettled: options.onSettled,
    ...(route.tls ? { tls: route.tls.mode, rejectUnauthorized: route.tls.verify } : {}),
    ...(route.connections ? { connectionLimit: route.connections } : {}),
    ...(route.sourceAddress ? { localAddress: route.sourceAddress } : {}),
  };
  switch (target.kind) {
    case "smtp":
    case "lmtp": {
      // A smarthost's password is read at each attempt and goes no further than the login;
      // when it cannot be read the mail waits (4xx) under a reason naming the route and the source.
      const login = route.auth ? await loadCredentials(route.auth) : undefined;
      if (login && !login.ok) {
        const text = `Smarthost ${formatRouteTarget(target)} as ${route.auth!.user}: ${login.problem}`;
        return sameForAll(envelope.to, { code: 451, enhanced: "4.7.0", text }, formatRouteTarget(target));
      }
      return deliverSmtp(
        { host: target.host, port: target.port, lmtp: target.kind === "lmtp", servername: route.tls?.sni },
        envelope,
        message(),
        login ? { ...smtp, auth: login.credentials } : smtp,
      );
    }
    case "mx":
      return deliverMxGroups(envelope, message, smtp, options);
    case "maildir":
      return settled(
        await deliverMaildir(target.path, envelope, asStream(message()), { returnPath: envelope.from }),
        options,
      );
    case "discard":
      return settled(
        {
          nextHop: "discard",
          recipients: envelope.to.map((recipient) => ({
            recipient,
            status: "delivered" as const,
            reply: { code: 250, enhanced: "2.0.0", text: "Discarded by route" },
          })),
        },
        options,
      );
  }
}

/** Local routes have no next-hop reply to wait for: their outcome is settled when they return. */
function settled(result: DeliveryResult, options: DeliveryOptions): DeliveryResult {
  options.onSettled?.(result);
  return result;
}

/** MX delivery goes per recipient domain: each domain has its own exchangers. */
async function deliverMxGroups(
  envelope: SmtpEnvelope,
  message: MessageSource,
  smtp: SmtpDeliveryOptions,
  options: DeliveryOptions,
): Promise<DeliveryResult> {
  const byDomain = groupBy(envelope.to, (address) => address.slice(address.lastIndexOf("@") + 1).toLowerCase());
  const results = await Promise.all(
    [...byDomain].map(([domain, to]) =>
      deliverMx(domain, { ...envelope, to }, message, options.dns, {
        ...smtp,
        port: options.mxPort,
        isSelf: options.isSelf,
        mtaSts: options.mtaSts,
      }),
    ),
  );
  return { nextHop: "mx", recipients: results.flatMap((result) => result.recipients) };
}

/**
 * Proxy mode's one DATA reply. When the next hops took the message for some recipients, the gateway
 * takes responsibility for the others (`takeOver`): deferred ones are queued and retried, failed ones
 * get a DSN, and the client hears 250 — replying 4xx would make it resend to everyone, and the
 * delivered recipients would get duplicates. When nobody got it, the next hop's answer passes
 * through: 4xx if any recipient may succeed later (the client keeps the message), else 5xx.
 */
export function proxyReply(outcomes: readonly RecipientOutcome[], id: string): { reply: Reply; takeOver: boolean } {
  const delivered = outcomes.filter((o) => o.status === "delivered").length;
  if (delivered > 0) {
    return {
      reply: { code: 250, enhanced: "2.0.0", text: `Ok: delivered as ${id}` },
      takeOver: delivered < outcomes.length,
    };
  }
  const deferred = outcomes.find((o) => o.status === "deferred");
  return { reply: (deferred ?? outcomes[0]).reply, takeOver: false };
}

/** RFC 5321 §6.3: a message that went through more hops than this is looping. */
export function tooManyHops(headers: readonly HeaderField[], maxReceived: number): RefusingDecision | null {
  const hops = headers.filter((field) => field.name.toLowerCase() === "received").length;
  return hops > maxReceived
    ? coreReject(
        { code: 554, enhanced: "5.4.6", text: "Too many hops: mail loop detected" },
        `${hops} Received headers`,
      )
    : null;
}
