/**
 * What a transaction costs each limit, as a pure function of what is known of it so far. Counting
 * only accepted mail checks this demand early (without taking anything) and takes it at the end;
 * counting attempts takes the growth of the demand at each step.
 */
import { type Address, type ConnectionContext, clientNet } from "../../core/index.js";
import type { Count, KeyPart } from "./schema.js";

export interface LimitShape {
  readonly key: readonly KeyPart[];
  readonly count: Count;
}

export interface TransactionView {
  readonly connection: ConnectionContext;
  /** Absent before MAIL (the connect phase). */
  readonly sender?: Address;
  readonly recipients: readonly Address[];
  /** Bytes: the message size once known, else the declared SIZE (or 1) when checking, 0 when counting. */
  readonly size: number;
}

function part(name: KeyPart, view: TransactionView, recipient: Address | undefined): string | null {
  const { connection, sender } = view;
  switch (name) {
    case "client.ip":
      return connection.client.ip;
    case "client.net":
      return clientNet(connection.client.ip);
    case "helo":
      return connection.helo;
    case "auth.user":
      return connection.authUser?.toLowerCase() ?? null;
    case "sender":
      return sender ? sender.address.toLowerCase() || "<>" : null;
    case "sender.domain":
      return sender ? sender.domain || "<>" : null;
    case "recipient":
      return recipient?.address.toLowerCase() ?? null;
    case "recipient.domain":
      return recipient?.domain ?? null;
  }
}

/** The key value of a limit for a transaction (and recipient); null when a part is unknown, e.g. no AUTH. */
export function keyValue(limit: LimitShape, view: TransactionView, recipient?: Address): string | null {
  const parts = limit.key.map((name) => part(name, view, recipient));
  return parts.some((value) => value === null) ? null : parts.join(",");
}

export function perRecipient(limit: LimitShape): boolean {
  return limit.key.some((name) => name === "recipient" || name === "recipient.domain");
}

/**
 * Key value → units. A message counts once per key value: a message to three people at one domain
 * is one message for that domain (and three recipients).
 */
export function demand(limit: LimitShape, view: TransactionView): Map<string, number> {
  const costs = new Map<string, number>();
  const unit = (recipients: number) => {
    switch (limit.count) {
      case "connections":
        return view.sender ? 0 : 1;
      case "messages":
        return view.sender ? 1 : 0;
      case "recipients":
        return recipients;
      case "bytes":
        return view.size;
    }
  };
  if (!perRecipient(limit)) {
    const key = keyValue(limit, view);
    if (key !== null) costs.set(key, unit(view.recipients.length));
  } else {
    const groups = new Map<string, number>();
    for (const recipient of view.recipients) {
      const key = keyValue(limit, view, recipient);
      if (key !== null) groups.set(key, (groups.get(key) ?? 0) + 1);
    }
    for (const [key, recipients] of groups) costs.set(key, unit(recipients));
  }
  for (const [key, cost] of costs) if (cost <= 0) costs.delete(key);
  return costs;
}

/** What `after` costs beyond `before` (the units a step of an attempt adds). */
export function growth(before: Map<string, number>, after: Map<string, number>): Map<string, number> {
  const added = new Map<string, number>();
  for (const [key, cost] of after) {
    const more = cost - (before.get(key) ?? 0);
    if (more > 0) added.set(key, more);
  }
  return added;
}
