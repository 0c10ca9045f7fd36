/**
 * helo: checks the HELO/EHLO name: syntax, address literals against the client, names and
 * addresses of this gateway, dynamic-looking names, and whether the name has an address. Every
 * finding is recorded; the first in precedence order is the verdict the policy acts on.
 */

import { asciiDomain, definePlugin, settle, verdict } from "../../core/index.js";
import {
  dnsFindings,
  type HeloFacts,
  type HeloFinding,
  HeloFindings,
  parseHelo,
  sortFindings,
  staticFindings,
} from "./check.js";
import { HeloOptions } from "./schema.js";

export type { HeloFacts, HeloFinding } from "./check.js";

declare module "../../core/index.js" {
  interface Facts {
    helo: HeloFacts;
  }
}

const REJECTED = "Helo command rejected:";

export default definePlugin({
  name: "helo",
  options: HeloOptions,
  findings: { helo: HeloFindings },
  verdicts: {
    "our-address": { action: "reject", reply: `550 5.7.1 <{helo}>: ${REJECTED} that address is mine, not yours` },
    "our-name": { action: "reject", reply: `550 5.7.1 <{helo}>: ${REJECTED} that name is mine, not yours` },
    invalid: { action: "reject", reply: `501 5.5.2 <{helo}>: ${REJECTED} invalid name` },
    "bare-ip": { action: "ignore", reply: `501 5.5.2 <{helo}>: ${REJECTED} an address must be in brackets` },
    "literal-mismatch": { action: "ignore", reply: `550 5.7.1 <{helo}>: ${REJECTED} you are [{client.ip}]` },
    unqualified: { action: "ignore", reply: `504 5.5.2 <{helo}>: ${REJECTED} need fully-qualified hostname` },
    dynamic: { action: "ignore", reply: `550 5.7.1 <{helo}>: ${REJECTED} name looks like a dynamic address` },
    "no-address": { action: "ignore", reply: `550 5.7.1 <{helo}>: ${REJECTED} host not found` },
    // Ignored like no-address, whose lookup failed: deferring over an answer that would be ignored helps nobody.
    temperror: { action: "ignore", reply: `451 4.4.3 <{helo}>: ${REJECTED} DNS lookup failed, try again later` },
  },
  setup: (options, services) => {
    const ourNames = [asciiDomain(services.hostname) ?? services.hostname.toLowerCase(), ...options.ourNames];
    return {
      helo: async (ctx) => {
        if (options.skipTrusted && ctx.connection.trusted) return undefined;
        const name = ctx.helo.toLowerCase();
        const { ip } = ctx.connection.client;
        const parsed = parseHelo(name);
        const found = staticFindings(parsed, {
          clientIp: ip,
          ourNames,
          ourAddresses: [ctx.connection.local.ip, ...options.ourAddresses],
          dynamicPatterns: options.dynamicPatterns,
        });
        // Only a plausible host name of someone else is worth a lookup.
        const lookUp =
          options.dns && parsed.kind === "name" && !found.some((f) => f === "our-name" || f === "unqualified");
        let dns: ReturnType<typeof dnsFindings> | null = null;
        if (lookUp) {
          const [a, aaaa] = await Promise.all([
            settle(ctx.dns.resolve4(parsed.domain, ctx.signal)),
            settle(ctx.dns.resolve6(parsed.domain, ctx.signal)),
          ]);
          dns = dnsFindings(a, aaaa, ip);
        }
        // staticFindings returns them sorted already; only a DNS finding needs placing.
        const findings: HeloFinding[] = dns?.finding ? sortFindings([...found, dns.finding]) : found;
        const facts: HeloFacts = {
          name,
          kind: parsed.kind,
          address: parsed.kind === "literal" || parsed.kind === "bare-ip" ? parsed.address : null,
          findings,
          addresses: dns?.addresses ?? null,
          matchesClient: dns?.matchesClient ?? null,
          dnsErrors: dns?.errors ?? [],
        };
        ctx.facts.helo = facts;
        ctx.log.debug({ event: "finding", plugin: "helo", helo: facts }, "helo");
        return findings.length > 0 ? verdict(findings[0]) : undefined;
      },
    };
  },
});
