/**
 * Who gets a DSN, and with how much of the message. A bounce goes to the envelope sender, which
 * anyone can forge: bouncing spam sent in a victim's name delivers the spam to the victim
 * (backscatter) and puts our host on blocklists. So what was found out about the sender when the
 * message was accepted is stored with it (it must survive a restart), and decides later:
 *
 * - a client on a DNSBL, or a sender that failed SPF or DMARC: no DSN at all (`suppressSuspect`);
 * - a sender we could not authenticate (no SPF pass for its domain, no DKIM pass by its domain, not
 *   a client of ours): the DSN returns only the header section (`unauthenticated: headers`);
 * - everyone else: the client's RET, else the whole message when it is small.
 *
 * Pure: the worker applies the plan, logs and counts each suppressed DSN.
 */
import type { TransactionContext } from "../contract/api.js";

/** What was known about the sender when the message was accepted. */
export interface SenderEvidence {
  /** The client was listed on a DNSBL (a `listed` finding of the dnsbl plugin). */
  readonly clientListed: boolean;
  /** The SPF result for the MAIL FROM identity, null when SPF was not checked. */
  readonly spf: string | null;
  /** The DMARC result, null when DMARC was not checked. */
  readonly dmarc: string | null;
  /** A client of ours (relay.networks or AUTH), SPF pass for the sender's domain, or DKIM pass by it. */
  readonly authenticated: boolean;
}

export interface BounceSettings {
  readonly suppressSuspect: boolean;
  readonly unauthenticated: "headers" | "full";
}

export type BouncePlan =
  | { readonly kind: "suppress"; readonly reason: string }
  | { readonly kind: "send"; readonly ret: "FULL" | "HDRS" };

/**
 * The findings this reads, in the shapes the dnsbl, spf, dkim and dmarc plugins record them. The
 * core reads them as data and never imports a plugin; a finding that is absent counts for nothing.
 */
interface SenderFindings {
  readonly dnsbl?: { readonly listed?: boolean };
  readonly spf?: { readonly result?: string; readonly identity?: string; readonly domain?: string };
  readonly dkim?: { readonly signatures?: ReadonlyArray<{ readonly domain?: string; readonly result?: string }> };
  readonly dmarc?: { readonly result?: string };
}

/** A DKIM domain speaks for the sender's domain when one is the other or a parent of it. */
function aligned(signer: string, sender: string): boolean {
  const a = signer.toLowerCase();
  return a === sender || sender.endsWith(`.${a}`) || a.endsWith(`.${sender}`);
}

export function senderEvidence(tx: TransactionContext): SenderEvidence {
  const facts = tx.facts as SenderFindings;
  const domain = tx.sender.domain;
  const spfPass = facts.spf?.result === "pass" && facts.spf.identity === "mailfrom" && facts.spf.domain === domain;
  const dkimPass =
    domain !== "" && (facts.dkim?.signatures ?? []).some((s) => s.result === "pass" && aligned(s.domain ?? "", domain));
  return {
    clientListed: facts.dnsbl?.listed === true,
    spf: facts.spf?.result ?? null,
    dmarc: facts.dmarc?.result ?? null,
    authenticated: tx.connection.trusted || spfPass || dkimPass,
  };
}

/** The whole original goes back up to this size when the client asked for no RET; headers beyond. */
const FULL_RETURN_LIMIT = 256 * 1024;

/**
 * Whether a DSN goes out and what it returns. `evidence` is absent for messages queued before it
 * was recorded: nothing speaks against their sender, nothing for it either.
 */
export function bouncePlan(
  evidence: SenderEvidence | undefined,
  settings: BounceSettings,
  asked: { readonly ret?: "FULL" | "HDRS"; readonly size: number },
): BouncePlan {
  if (settings.suppressSuspect && evidence) {
    if (evidence.clientListed) return { kind: "suppress", reason: "dnsbl-listed" };
    if (evidence.spf === "fail") return { kind: "suppress", reason: "spf-fail" };
    if (evidence.dmarc === "fail") return { kind: "suppress", reason: "dmarc-fail" };
  }
  if (settings.unauthenticated === "headers" && !evidence?.authenticated) return { kind: "send", ret: "HDRS" };
  return { kind: "send", ret: asked.ret ?? (asked.size <= FULL_RETURN_LIMIT ? "FULL" : "HDRS") };
}
