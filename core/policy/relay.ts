/**
 * Who may send to which recipient: the gate that keeps Portcullis from being an open relay.
 * Outsiders reach only the domains we receive for (`relay.domains`); trusted networks and, when the
 * policy allows it, authenticated clients reach anywhere.
 */

import type { Address } from "../contract/api.js";
import { type Reply, reply } from "../contract/decision.js";
import { asciiDomain, DomainSet } from "../toolkit/address.js";
import { NetworkList } from "../toolkit/netaddr.js";
import { compileList, type ListItem } from "./lists.js";

export interface RelayConfig {
  /** Exact names (any case, Unicode or punycode, trailing dot allowed) or `*.name` for all subdomains of name. */
  domains: string[];
  /** IPv4/IPv6 addresses or CIDR networks. */
  networks: string[];
  authenticatedUsersMayRelay: boolean;
  /** Address patterns of the recipients that exist in `domains`; unset, every recipient there is taken. */
  recipients?: readonly ListItem[];
}

export interface RelayAccess {
  /**
   * null = allowed; else the refusal reply (550 5.7.1 Relaying denied). `recipient` must come from
   * `parseEnvelopeAddress`: an outsider is only let through for a domain already in canonical form,
   * the very form delivery will route on.
   */
  check(recipient: Address, client: { ip: string; authUser: string | null }): Reply | null;
  /** Whether `domain` (any case, Unicode or punycode) is one of `relay.domains`; address literals never are. */
  isLocalDomain(domain: string): boolean;
  /**
   * Whether the client is one of ours: in `relay.networks` or authenticated (whether or not it may
   * relay). Outbound signing needs this, and sender checks skip enforcement for it.
   */
  isTrustedClient(client: { ip: string; authUser: string | null }): boolean;
  /**
   * null = the recipient may exist; else 550 5.1.1 User unknown: its domain is one of `relay.domains`
   * and `relay.recipients` lists no such address. Refusing here, while the client waits, is what
   * keeps us from accepting mail that the next hop would refuse and we would have to bounce.
   */
  unknownRecipient(recipient: Address): Reply | null;
}

/** `<postmaster>` without a domain: RFC 5321 §4.5.1 reserves it for this host's postmaster, whoever writes. */
export function isDomainlessPostmaster(recipient: Pick<Address, "local" | "domain">): boolean {
  return recipient.domain === "" && recipient.local.toLowerCase() === "postmaster";
}

export function userUnknown(address: string, why = "User unknown"): Reply {
  return reply(550, "5.1.1", `<${address}>: Recipient address rejected: ${why}`);
}

const RELAYING_DENIED = reply(550, "5.7.1", "Relaying denied");

/**
 * `%` (percent hack), `!` (UUCP bang path) and `@` (in a quoted local part) make some MTAs behind us
 * forward the mail elsewhere, so a local domain is no reason to accept such a local part from outsiders.
 */
const ROUTING_IN_LOCAL_PART = /[%!@]/;

/** Throws on an entry that is neither a domain, a `*.domain`, nor (for networks) an address or CIDR. */
export function compileRelayAccess(config: RelayConfig): RelayAccess {
  let domains: DomainSet;
  try {
    domains = new DomainSet(config.domains);
  } catch (error) {
    throw new Error(`relay.domains: ${(error as Error).message} (write "example.test" or "*.example.test")`);
  }
  let networks: NetworkList;
  try {
    networks = new NetworkList(config.networks);
  } catch (error) {
    throw new Error(`relay.networks: ${(error as Error).message}`);
  }

  const listed = config.recipients ? compileList("address", config.recipients) : null;

  return {
    isLocalDomain(domain) {
      const ascii = asciiDomain(domain);
      return ascii !== undefined && domains.has(ascii);
    },

    isTrustedClient(client) {
      return networks.has(client.ip) || (client.authUser !== null && client.authUser !== "");
    },

    check(recipient, client) {
      if (networks.has(client.ip)) return null;
      if (config.authenticatedUsersMayRelay && client.authUser !== null && client.authUser !== "") return null;
      if (recipient.domain === "") return isDomainlessPostmaster(recipient) ? null : RELAYING_DENIED;
      const canonical = asciiDomain(recipient.domain) === recipient.domain;
      if (canonical && domains.has(recipient.domain) && !ROUTING_IN_LOCAL_PART.test(recipient.local)) return null;
      return RELAYING_DENIED;
    },

    unknownRecipient(recipient) {
      if (!listed || !domains.has(recipient.domain)) return null;
      // Every domain we receive for must take mail for its postmaster (RFC 5321 §4.5.1).
      if (recipient.local.toLowerCase() === "postmaster") return null;
      const address = `${recipient.local}@${recipient.domain}`;
      return listed(address) ? null : userUnknown(address);
    },
  };
}
