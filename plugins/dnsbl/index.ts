/**
 * dnsbl: DNS block- and allowlists (RFC 5782) for the client address, and domain lists (DBL,
 * RHSBL) for the HELO name, the sender domain and the forward-confirmed PTR name. Each lookup is a
 * finding (listed | clean | error); the batch of one phase yields at most one verdict: allowlisted,
 * listed or error. Zones that list the test point, refuse our resolver, or list far too much are ignored and reported.
 *
 * Lookups go through the shared resolver, not the `dnsbl` package, which reports DNS errors as
 * "not listed" and Spamhaus error codes as listings.
 */
import { definePlugin, type HookContext, hostName, reverseIpLabels, settle, verdict } from "../../core/index.js";
import {
  type BrokenReason,
  classifyAnswer,
  decideBatch,
  decidesAlone,
  isListingCode,
  probeProblem,
  txtText,
  type ZoneFinding,
} from "./answer.js";
import { ListingShare } from "./health.js";
import { DnsblFindings, DnsblOptions, type DnsblTarget, type ZoneOptions } from "./schema.js";

export type { ZoneFinding } from "./answer.js";

export interface DnsblFacts {
  /** Every lookup of the connection (and of the transaction's sender), in zone order per phase. */
  readonly findings: readonly ZoneFinding[];
  /** A zone that blocks or scores listed the client on this connection (or transaction). */
  readonly listed: boolean;
  /** The `allow` zone that listed the client; later checks are skipped. */
  readonly allowlisted: string | null;
  /** The listing that decided: a zone that decides alone first, else the first scoring zone: zone, listed name, codes, TXT. */
  readonly zone: string | null;
  readonly name: string | null;
  readonly codes: readonly string[];
  readonly txt: string | null;
  /** The TXT, or the return codes when the zone publishes no TXT: for reply texts. */
  readonly reason: string | null;
  /** Zones judged broken in these findings (ignored). */
  readonly broken: readonly string[];
}

declare module "../../core/index.js" {
  interface Facts {
    dnsbl: DnsblFacts;
  }
}

type CheckContext = Pick<HookContext<"connect">, "facts" | "dns" | "signal" | "clock" | "log" | "addScore">;

interface Lookup {
  readonly zone: ZoneOptions;
  readonly target: DnsblTarget;
  /** The name as listed: the client address, or a domain. */
  readonly name: string;
  /** The labels put in front of the zone. */
  readonly labels: string;
}

/** The warning for a zone that broke: what is wrong and what to do, since the zone now counts for nothing. */
const BROKEN_MESSAGES: Record<BrokenReason, (zone: string) => string> = {
  "test-point": (zone) => `DNSBL zone ${zone} lists its test point (it answers everything); ignoring it`,
  refused: (zone) =>
    `your resolver is refused by ${zone}: use your own recursive resolver (not a public one) in dns.servers; ignoring the zone`,
  "listed-share": (zone) => `DNSBL zone ${zone} lists too large a share of the names it is asked; ignoring it`,
};

export default definePlugin({
  name: "dnsbl",
  options: DnsblOptions,
  findings: { dnsbl: DnsblFindings },
  verdicts: {
    listed: {
      action: "reject",
      reply: "554 5.7.1 Service unavailable; {dnsbl.name} blocked using {dnsbl.zone}; {dnsbl.reason}",
    },
    allowlisted: { action: "ignore" },
    error: { action: "defer", reply: "451 4.4.3 Blocklist lookup failed for [{client.ip}], try again later" },
  },
  setup(options) {
    const { guard } = options;
    const shares = new Map<string, ListingShare>();
    if (guard.maxListedShare !== undefined) {
      for (const zone of options.zones) {
        shares.set(zone.zone, new ListingShare(guard.window, guard.maxListedShare, guard.minQueries));
      }
    }
    /** Zones broken at the last look, so a change is logged once rather than on every connection. */
    const broken = new Map<string, BrokenReason>();

    function health(ctx: CheckContext, zone: ZoneOptions, reason: BrokenReason | null): void {
      if (reason === (broken.get(zone.zone) ?? null)) return;
      if (reason) {
        broken.set(zone.zone, reason);
        ctx.log.warn({ event: "dnsbl-zone-broken", zone: zone.zone, reason }, BROKEN_MESSAGES[reason](zone.zone));
      } else {
        broken.delete(zone.zone);
        ctx.log.info({ event: "dnsbl-zone-recovered", zone: zone.zone }, "DNSBL zone answers sanely again");
      }
    }

    async function lookUp(ctx: CheckContext, { zone, target, name, labels }: Lookup): Promise<ZoneFinding> {
      const query = `${labels}.${zone.zone}`;
      const testPoint = `${zone.type === "ip" ? "1.0.0.127" : "invalid"}.${zone.zone}`;
      const [answer, probe] = await Promise.all([
        settle(ctx.dns.resolve4(query, ctx.signal)),
        guard.testPoint ? settle(ctx.dns.resolve4(testPoint, ctx.signal)) : undefined,
      ]);
      const share = shares.get(zone.zone);
      const now = ctx.clock.now();
      if (share && answer.kind !== "error") {
        share.record(query, answer.kind === "answer" && answer.value.some(isListingCode), now);
      }
      // Without a test point, the answer itself shows a refusal (it cannot show a listed test point).
      const problem = probe ? probeProblem(probe) : probeProblem(answer) === "refused" ? "refused" : null;
      const reason: BrokenReason | null = problem ?? (share?.exceeded(now) ? "listed-share" : null);
      health(ctx, zone, reason);
      const status = classifyAnswer(answer, zone.codes);
      // TXT is its own lookup, after the listing: its absence (common) must not undo the listing.
      const txt =
        status.status === "listed" && zone.txt && !reason
          ? txtText(await settle(ctx.dns.resolveTxt(query, ctx.signal)))
          : undefined;
      return {
        ...status,
        zone: zone.zone,
        target,
        name,
        score: zone.score,
        allow: zone.allow,
        broken: reason,
        ...(txt === undefined ? {} : { txt }),
      };
    }

    /** Runs one phase's lookups at once and merges them into the facts; `replaces` drops older findings of a re-checked target. */
    async function check(ctx: CheckContext, lookups: readonly Lookup[], replaces?: DnsblTarget) {
      const previous = ctx.facts.dnsbl;
      if (previous?.allowlisted || lookups.length === 0) return undefined;
      const findings = await Promise.all(lookups.map((lookup) => lookUp(ctx, lookup)));
      const decision = decideBatch(findings, deciding);
      for (const { points, reason } of decision.scores) ctx.addScore(points, `dnsbl: ${reason}`);
      const all = [...(previous?.findings ?? []).filter((finding) => finding.target !== replaces), ...findings];
      const decider =
        decision.verdict !== "allowlisted" && decision.decider?.status === "listed" ? decision.decider : null;
      const codes = decider?.status === "listed" ? decider.codes : (previous?.codes ?? []);
      const facts: DnsblFacts = {
        findings: all,
        listed: decider !== null || (previous?.listed ?? false),
        allowlisted: decision.verdict === "allowlisted" ? decision.decider!.zone : null,
        zone: decider?.zone ?? previous?.zone ?? null,
        name: decider?.name ?? previous?.name ?? null,
        codes,
        txt: decider ? (decider.txt ?? null) : (previous?.txt ?? null),
        reason: decider ? (decider.txt ?? codes.join(" ")) : (previous?.reason ?? null),
        broken: [...new Set(all.filter((finding) => finding.broken).map((finding) => finding.zone))],
      };
      ctx.facts.dnsbl = facts;
      ctx.log.debug({ event: "finding", plugin: "dnsbl", dnsbl: facts }, "dnsbl");
      return decision.verdict ? verdict(decision.verdict) : undefined;
    }

    const deciding = new Set(options.zones.filter(decidesAlone).map((zone) => zone.zone));
    const ipZones = options.zones.filter((zone) => zone.type === "ip");
    /** Lookups of a domain at the domain zones that check `target`; none when the name cannot be queried. */
    const domainLookups = (target: Exclude<DnsblTarget, "ip">, name: string | null | undefined): Lookup[] => {
      const domain = name ? hostName(name) : undefined;
      // A single label (or an address literal) is no registered domain, so no list can hold it.
      if (!domain?.includes(".")) return [];
      return options.zones
        .filter((zone) => zone.check.includes(target) && hostName(`${domain}.${zone.zone}`))
        .map((zone) => ({ zone, target, name: domain, labels: domain }));
    };

    return {
      connect: async (ctx) => {
        const { ip } = ctx.connection.client;
        const labels = reverseIpLabels(ip);
        return check(ctx, [
          ...ipZones.map((zone) => ({ zone, target: "ip" as const, name: ip, labels })),
          ...domainLookups("ptr", ctx.connection.verifiedName),
        ]);
      },
      helo: async (ctx) => check(ctx, domainLookups("helo", ctx.helo), "helo"),
      mail: async (ctx) => check(ctx, domainLookups("sender", ctx.transaction.sender.domain)),
    };
  },
});
