/**
 * The findings of the sender-authentication plugins (spf, dkim, arc, dmarc, auth-results). They are
 * declared here, once, because they are a contract between plugins that never import each other:
 * dmarc reads `spf`, auth-results reads all of them, dkim-sign reads `authResults`.
 */
import { z } from "../../../core/index.js";

const SPF_RESULTS = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"] as const;

export const SpfFindings = z
  .object({
    result: z.enum(SPF_RESULTS).describe("the SPF result (RFC 7208 §2.6)"),
    identity: z
      .enum(["mailfrom", "helo"])
      .describe("mailfrom, or helo for the null sender (bounces), whose HELO name is checked instead"),
    sender: z.string().describe("the address checked: the MAIL FROM address, or postmaster@<helo> for the null sender"),
    domain: z.string().describe("the domain whose SPF record was evaluated (the DMARC SPF identifier)"),
    explanation: z.string().describe("why, in words (the record's own exp= text is not fetched)"),
    record: z.string().nullable().describe("the SPF record evaluated, when one was found"),
    skipped: z
      .boolean()
      .describe("enforcement was skipped because the client is trusted (relay.networks or authenticated)"),
  })
  .readonly();
export type SpfFacts = z.output<typeof SpfFindings>;
export type SpfResult = SpfFacts["result"];

/** RFC 8601 DKIM results. */
const DkimResult = z.enum(["pass", "fail", "neutral", "policy", "none", "temperror", "permerror"]);
export type DkimResult = z.output<typeof DkimResult>;

const DkimSignature = z
  .object({
    domain: z.string().describe("d= of the signature"),
    selector: z.string().describe("s= of the signature"),
    algorithm: z.string().describe("a=, e.g. rsa-sha256 or ed25519-sha256"),
    b: z.string().describe("first 8 characters of b=, to tell signatures of one domain apart (RFC 6008 header.b)"),
    result: DkimResult.describe("this signature's result; a body that no longer matches bh= is fail"),
    reason: z.string().nullable().describe("why, when it did not pass"),
  })
  .readonly();
export type DkimSignature = z.output<typeof DkimSignature>;

export const DkimFindings = z
  .object({
    result: DkimResult.describe(
      "the best signature's result: pass > temperror > fail > permerror > policy > neutral > none",
    ),
    signatures: z.array(DkimSignature).readonly().describe("every signature with its own result, in header order"),
  })
  .readonly();
export type DkimFacts = z.output<typeof DkimFindings>;

const nullableResult = (method: string) =>
  z.string().nullable().describe(`the ${method} result the newest sealer recorded`);

export const ArcFindings = z
  .object({
    result: z.enum(["pass", "fail", "none"]).describe("chain validation (the cv= we would seal with)"),
    reason: z.string().nullable().describe("why, when it did not pass"),
    instance: z.number().describe("highest instance in the chain; 0 when there is none"),
    sealer: z.string().nullable().describe("d= of the newest ARC-Seal"),
    sealerResults: z
      .object({ spf: nullableResult("SPF"), dkim: nullableResult("DKIM"), dmarc: nullableResult("DMARC") })
      .readonly()
      .describe("what the newest sealer recorded when the message reached it (its ARC-Authentication-Results)"),
    trusted: z
      .boolean()
      .describe(
        "the chain passes, its newest sealer is one of trustedSealers, and that sealer saw DMARC pass: a DMARC failure here was caused in transit, so dmarc does not enforce it",
      ),
  })
  .readonly();
export type ArcFacts = z.output<typeof ArcFindings>;

const DmarcPolicy = z.enum(["none", "quarantine", "reject"]);
export type DmarcPolicy = z.output<typeof DmarcPolicy>;

export const DmarcFindings = z
  .object({
    result: z.enum(["pass", "fail", "none", "temperror", "permerror"]).describe("the DMARC result (RFC 7489)"),
    reason: z.string().nullable().describe("why, when it did not pass"),
    fromDomain: z
      .string()
      .describe('the RFC5322.From domain (lower-case ASCII); "" when the message has no single From address'),
    orgDomain: z.string().describe("the From domain's organizational domain"),
    policy: DmarcPolicy.nullable().describe(
      "the policy that applies to the From domain (sp= for a subdomain using the org record); null without a record",
    ),
    pct: z.number().describe("the record's pct="),
    alignment: z
      .object({
        spf: z.string().nullable().describe("the SPF domain that aligned, or null"),
        dkim: z.string().nullable().describe("the DKIM domain that aligned, or null"),
      })
      .readonly()
      .describe("the domains that aligned with the From domain"),
    applied: DmarcPolicy.describe("what was done: the policy after pct sampling and overrides"),
    override: z
      .enum(["pct", "arc", "trusted-client"])
      .nullable()
      .describe("why applied is weaker than policy: pct (not sampled), arc (trusted sealer), trusted-client"),
  })
  .readonly();
export type DmarcFacts = z.output<typeof DmarcFindings>;

export const AuthResultsFindings = z
  .object({
    authservId: z.string().describe("the authserv-id of the field we added"),
    value: z.string().describe("the Authentication-Results field value we added (after the name), folded"),
  })
  .readonly();
export type AuthResultsFacts = z.output<typeof AuthResultsFindings>;

declare module "../../../core/index.js" {
  interface Facts {
    spf: SpfFacts;
    dkim: DkimFacts;
    arc: ArcFacts;
    dmarc: DmarcFacts;
    authResults: AuthResultsFacts;
  }
}
