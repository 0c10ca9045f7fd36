/**
 * The findings of the sender-authentication plugins (spf, dkim, arc, dmarc, auth-results). They are
 * declared here, once, because they are a contract between plugins that never import each other:
 * dmarc reads `spf`, auth-results reads all of them, dkim-sign reads `authResults`.
 */
import "../../../core/index.js";

export type SpfResult = "pass" | "fail" | "softfail" | "neutral" | "none" | "temperror" | "permerror";

export interface SpfFacts {
  readonly result: SpfResult;
  /** `mailfrom`, or `helo` for the null sender (bounces), whose HELO name is checked instead. */
  readonly identity: "mailfrom" | "helo";
  /** The address checked: the MAIL FROM address, or postmaster@<helo> for the null sender. */
  readonly sender: string;
  /** The domain whose SPF record was evaluated (the DMARC SPF identifier). */
  readonly domain: string;
  /** Why, in words (mailauth's explanation; the record's own `exp=` text is not fetched). */
  readonly explanation: string;
  /** The SPF record evaluated, when one was found. */
  readonly record: string | null;
  /** Enforcement was skipped because the client is trusted (relay.networks or authenticated). */
  readonly skipped: boolean;
}

/** RFC 8601 DKIM results. */
export type DkimResult = "pass" | "fail" | "neutral" | "policy" | "none" | "temperror" | "permerror";

export interface DkimSignature {
  /** d= */
  readonly domain: string;
  /** s= */
  readonly selector: string;
  /** a=, e.g. rsa-sha256 or ed25519-sha256 */
  readonly algorithm: string;
  /** First 8 characters of b=, to tell signatures of one domain apart (RFC 6008 header.b). */
  readonly b: string;
  /** A body that no longer matches bh= is `fail` here (mailauth reports it as neutral). */
  readonly result: DkimResult;
  readonly reason: string | null;
}

export interface DkimFacts {
  /** The best signature's result: pass > temperror > fail > permerror > policy > neutral > none. */
  readonly result: DkimResult;
  /** Every signature with its own result, in header order. */
  readonly signatures: readonly DkimSignature[];
}

export interface ArcFacts {
  /** Chain validation (the cv= we would seal with). */
  readonly result: "pass" | "fail" | "none";
  readonly reason: string | null;
  /** Highest instance in the chain; 0 when there is none. */
  readonly instance: number;
  /** d= of the newest ARC-Seal. */
  readonly sealer: string | null;
  /** What the newest sealer recorded when the message reached it (its ARC-Authentication-Results). */
  readonly sealerResults: { readonly spf: string | null; readonly dkim: string | null; readonly dmarc: string | null };
  /**
   * The chain passes, its newest sealer is one of the configured `trustedSealers`, and that sealer
   * saw DMARC pass: a DMARC failure here was caused in transit, so dmarc does not enforce it.
   */
  readonly trusted: boolean;
}

export type DmarcPolicy = "none" | "quarantine" | "reject";

export interface DmarcFacts {
  readonly result: "pass" | "fail" | "none" | "temperror" | "permerror";
  readonly reason: string | null;
  /** The RFC5322.From domain (lower-case ASCII); "" when the message has no single From address. */
  readonly fromDomain: string;
  /** Its organizational domain. */
  readonly orgDomain: string;
  /** The policy that applies to the From domain (sp= for a subdomain using the org record), null without a record. */
  readonly policy: DmarcPolicy | null;
  readonly pct: number;
  /** The domain that aligned, or null. */
  readonly alignment: { readonly spf: string | null; readonly dkim: string | null };
  /** What was done: the policy after pct sampling and overrides. */
  readonly applied: DmarcPolicy;
  /** Why `applied` is weaker than `policy`: "pct" (not sampled), "arc" (trusted sealer), "trusted-client". */
  readonly override: "pct" | "arc" | "trusted-client" | null;
}

export interface AuthResultsFacts {
  readonly authservId: string;
  /** The Authentication-Results field value we added (after `Authentication-Results: `), folded. */
  readonly value: string;
}

declare module "../../../core/index.js" {
  interface Facts {
    spf: SpfFacts;
    dkim: DkimFacts;
    arc: ArcFacts;
    dmarc: DmarcFacts;
    authResults: AuthResultsFacts;
  }
}
