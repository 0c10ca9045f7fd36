/**
 * Hands a received message to its next hops: recipients are grouped by route target, each group is
 * delivered, and the per-recipient outcomes become one DATA reply (SMTP has one reply per message).
 */
import { Readable } from "node:stream";
import type { TransactionContext } from "./api.js";
import type { Reply } from "./decision.js";
import { deliverMaildir } from "./delivery/maildir.js";
import { deliverMx } from "./delivery/mx.js";
import type { DeliveryResult, RecipientOutcome } from "./delivery/result.js";
import { deliverSmtp } from "./delivery/smtp.js";
import { parseRouteTarget, type RouteTarget } from "./delivery/target.js";
import type { DnsResolver } from "./dns.js";
import type { SpooledMessage } from "./message.js";
import type { Router } from "./routes.js";

export interface Envelope {
  readonly from: string;
  readonly to: readonly string[];
}

export interface DeliveryOptions {
  readonly hostname: string;
  readonly timeoutMs: number;
  readonly dns: DnsResolver;
  readonly signal?: AbortSignal;
}

/**
 * The message as it leaves: our trace and added header fields first, incoming fields that a hook
 * asked to remove dropped, everything else byte for byte as received.
 */
export function composeMessage(message: SpooledMessage, tx: TransactionContext, received: string): () => Readable {
  const prepend = received + tx.headers.prepend.map((field) => `${field}\r\n`).join("");
  const removals = tx.headers.remove;
  const kept = message.headers.filter((field) => !removals.some((remove) => remove(field.name, field.value)));
  const rewriteHeader = kept.length !== message.headers.length;
  const head = rewriteHeader
    ? Buffer.from(prepend + kept.map((field) => `${field.raw}\r\n`).join("") + "\r\n", "latin1")
    : Buffer.from(prepend, "latin1");
  const bodyStart = rewriteHeader ? message.headerLength : 0;
  return () =>
    Readable.from(
      (async function* () {
        yield head;
        yield* message.stream(bodyStart);
      })(),
    );
}

export async function deliverTo(
  target: RouteTarget,
  envelope: Envelope,
  message: () => Readable,
  options: DeliveryOptions,
): Promise<DeliveryResult> {
  switch (target.kind) {
    case "smtp":
    case "lmtp":
      return deliverSmtp(
        { host: target.host, port: target.port, lmtp: target.kind === "lmtp" },
        { from: envelope.from, to: [...envelope.to] },
        message(),
        { name: options.hostname, timeoutMs: options.timeoutMs, signal: options.signal },
      );
    case "mx":
      return deliverMxGroups(envelope, message, options);
    case "maildir":
      return deliverMaildir(target.path, { from: envelope.from, to: [...envelope.to] }, message(), {
        returnPath: envelope.from,
      });
    case "discard":
      return {
        nextHop: "discard",
        recipients: envelope.to.map((recipient) => ({
          recipient,
          status: "delivered" as const,
          reply: { code: 250, enhanced: "2.0.0", text: "Discarded by route" },
        })),
      };
  }
}

/** MX delivery goes per recipient domain: each domain has its own exchangers. */
async function deliverMxGroups(
  envelope: Envelope,
  message: () => Readable,
  options: DeliveryOptions,
): Promise<DeliveryResult> {
  const byDomain = groupBy(envelope.to, (address) => address.slice(address.lastIndexOf("@") + 1).toLowerCase());
  const results = await Promise.all(
    [...byDomain].map(([domain, to]) =>
      deliverMx(domain, { from: envelope.from, to }, message, options.dns, {
        name: options.hostname,
        timeoutMs: options.timeoutMs,
        signal: options.signal,
      }),
    ),
  );
  return { nextHop: "mx", recipients: results.flatMap((result) => result.recipients) };
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

/** Splits the recipients by route and delivers every group concurrently. */
export async function forwardTransaction(
  tx: TransactionContext,
  router: Router,
  message: () => Readable,
  options: DeliveryOptions,
): Promise<RoutedDelivery> {
  const groups = groupBy(
    tx.recipients,
    (recipient) =>
      tx.route ??
      router.targetFor({
        recipientDomain: recipient.domain,
        senderDomain: tx.sender.domain,
        clientIp: tx.connection.client.ip,
      }),
  );
  const results = await Promise.all(
    [...groups].map(([targetText, recipients]) => {
      const target = parseRouteTarget(targetText);
      const to = recipients.map((r) => envelopeAddress(r.local, r.domain));
      if (!target) {
        return Promise.resolve<DeliveryResult>({
          nextHop: targetText,
          recipients: to.map((recipient) => ({
            recipient,
            status: "deferred" as const,
            reply: { code: 451, enhanced: "4.3.5", text: `Route target "${targetText}" is not usable` },
          })),
        });
      }
      return deliverTo(target, { from: envelopeAddress(tx.sender.local, tx.sender.domain), to }, message, options);
    }),
  );
  return {
    outcomes: results.flatMap((result) => result.recipients),
    nextHops: results.map((result) => result.nextHop),
  };
}

/** Envelope addresses leave with ASCII domains (smtp-server hands IDNs over in Unicode). */
export function envelopeAddress(local: string, domain: string): string {
  if (local === "" && domain === "") return "";
  return domain === "" ? local : `${local}@${domain}`;
}

/**
 * One DATA reply for all recipients (proxy mode). Any temporary failure makes the whole message
 * temporary: the client retries, and recipients that already got it may see it twice — duplicates
 * rather than loss. All permanent → the next hop's reason. All delivered → 250.
 */
export function dataReply(outcomes: readonly RecipientOutcome[], id: string): Reply {
  const deferred = outcomes.find((o) => o.status === "deferred");
  if (deferred) return deferred.reply;
  const delivered = outcomes.filter((o) => o.status === "delivered");
  if (delivered.length === 0) return outcomes[0].reply;
  return { code: 250, enhanced: "2.0.0", text: `Ok: delivered as ${id}` };
}
