/**
 * DMARC (RFC 7489) after DATA: is the From domain authenticated by an aligned SPF pass or an
 * aligned DKIM pass, and what does its owner ask for when not? mailauth finds the record (with the
 * organizational-domain fallback and sp=); alignment, pct and overrides are decided here.
 */

import { asciiDomain, type DMARCResult, definePlugin, dmarc, type HookContext, verdict } from "../../core/index.js";
import { type DmarcFacts, DmarcFindings, type DmarcPolicy } from "../shared/sender-auth/facts.js";
import { dkimSignatures, parsedMessage } from "../shared/sender-auth/message.js";
import { type ReplayMemo, replayMemo } from "../shared/sender-auth/replay.js";
import { alignedDomain, applyPolicy } from "./evaluate.js";
import { anchoredRoute, DmarcOptions } from "./schema.js";

const POLICIES: ReadonlySet<string> = new Set<DmarcPolicy>(["none", "quarantine", "reject"]);

function policyOf(value: string | undefined): DmarcPolicy {
  const policy = value?.trim().toLowerCase() ?? "";
  return POLICIES.has(policy) ? (policy as DmarcPolicy) : "none";
}

function withoutRecord(
  result: DmarcFacts["result"],
  reason: string | null,
  fromDomain = "",
  orgDomain = fromDomain,
): DmarcFacts {
  return {
    result,
    reason,
    fromDomain,
    orgDomain,
    policy: null,
    pct: 100,
    alignment: { spf: null, dkim: null },
    applied: "none",
    override: null,
  };
}

/** Distinct (From, SPF domains, DKIM domains) lookups remembered. */
const KEPT_LOOKUPS = 10_000;

type DmarcMemo = ReplayMemo<DMARCResult | false>;

async function evaluate(ctx: HookContext<"data">, options: DmarcOptions, memo: DmarcMemo): Promise<DmarcFacts> {
  const parsed = await parsedMessage(ctx);
  // RFC 7489 §6.6.1: with no From, or with several, there is no single domain to evaluate.
  if (parsed.headerFrom.length === 0) return withoutRecord("none", "no From address");
  if (parsed.headerFrom.length > 1) return withoutRecord("permerror", "more than one From address");
  const address = parsed.headerFrom[0];
  const fromDomain = asciiDomain(address.slice(address.lastIndexOf("@") + 1)) ?? "";
  if (fromDomain === "") return withoutRecord("permerror", "From address without a valid domain");
  const spf = ctx.facts.spf;
  const spfDomains = spf?.result === "pass" ? [spf.domain] : [];
  const dkimDomains = dkimSignatures(parsed.results)
    .filter((signature) => signature.result === "pass")
    .map((signature) => signature.domain);
  const found = await memo.run(JSON.stringify([address, spfDomains, dkimDomains]), ctx.dns, (resolver) =>
    dmarc({ headerFrom: address, spfDomains, dkimDomains: dkimDomains.map((domain) => ({ domain })), resolver }),
  );
  if (!found) return withoutRecord("none", "no From address");
  const orgDomain = found.domain.toLowerCase();
  if (found.status.result === "none") return withoutRecord("none", "no DMARC record", fromDomain, orgDomain);
  if (found.status.result === "temperror") {
    return withoutRecord("temperror", found.error ?? "DNS failure", fromDomain, orgDomain);
  }
  const alignment = {
    spf: alignedDomain(fromDomain, orgDomain, spfDomains, found.alignment.spf.strict),
    dkim: alignedDomain(fromDomain, orgDomain, dkimDomains, found.alignment.dkim.strict),
  };
  const policy = policyOf(found.policy);
  const pct = Math.min(100, Math.max(0, found.pct ?? 100));
  const pass = alignment.spf !== null || alignment.dkim !== null;
  const { applied, override } = pass
    ? { applied: "none" as const, override: null }
    : applyPolicy({
        policy,
        pct,
        sample: Math.random(),
        arcTrusted: ctx.facts.arc?.trusted === true,
        trustedClient: ctx.connection.trusted && !options.enforceOnTrusted,
        rejectAs: options.onPolicyReject,
      });
  return {
    result: pass ? "pass" : "fail",
    reason: pass ? null : "no aligned SPF or DKIM pass",
    fromDomain,
    orgDomain,
    policy,
    pct,
    alignment,
    applied,
    override,
  };
}

export default definePlugin({
  name: "dmarc",
  options: DmarcOptions,
  findings: { dmarc: DmarcFindings },
  verdicts: {
    pass: { action: "ignore" },
    /** Failed, but nothing is to be done: p=none, left out by pct, or overridden by a trusted ARC sealer. */
    fail: { action: "ignore", reply: "550 5.7.26 DMARC: {dmarc.fromDomain} did not authenticate this message" },
    /** The plugin has already tagged (and rerouted) the message; the default lets it through so marked. */
    quarantine: { action: "ignore", reply: "550 5.7.26 DMARC: {dmarc.fromDomain} did not authenticate this message" },
    reject: {
      action: "reject",
      reply: "550 5.7.26 DMARC: unauthenticated mail from {dmarc.fromDomain} is refused by its policy",
    },
    none: { action: "ignore" },
    temperror: { action: "ignore", reply: "451 4.7.26 DMARC: lookup for {dmarc.fromDomain} failed, try again later" },
    permerror: { action: "ignore", reply: "550 5.7.26 DMARC: the message needs exactly one From address" },
  },
  setup(options, services) {
    const quarantineRoute = options.quarantine.route && anchoredRoute(options.quarantine.route, services.policyDir);
    // The record lookup (with its organizational-domain fallback) is replayed while DNS says the same.
    const memo: DmarcMemo = replayMemo(KEPT_LOOKUPS);
    return {
      async data(ctx) {
        const facts = await evaluate(ctx, options, memo);
        ctx.facts.dmarc = facts;
        if (facts.result !== "fail") return verdict(facts.result);
        if (facts.override === "trusted-client") return undefined;
        if (facts.applied === "quarantine") {
          const tx = ctx.transaction;
          tx.tags.add("quarantine");
          if (options.quarantine.header) {
            tx.headers.prepend.push(
              `${options.quarantine.header}: dmarc=fail policy=${facts.policy} header.from=${facts.fromDomain}`,
            );
          }
          if (quarantineRoute) tx.route = quarantineRoute;
        }
        return verdict(facts.applied === "none" ? "fail" : facts.applied);
      },
    };
  },
});
