/**
 * The one place that writes Authentication-Results (RFC 8601): at the queue phase it gathers what
 * iprev, spf, dkim, arc and dmarc found and adds one field under our authserv-id (the gateway's
 * hostname). Any incoming field claiming that authserv-id is a forgery meant to borrow our verdict
 * downstream (§5), so it is removed.
 */
import { z } from "zod";
import { definePlugin, type HookContext } from "../../core/index.js";
import { type AuthResultsFacts, AuthResultsFindings } from "../shared/sender-auth/facts.js";
import { authservIdOf, formatAuthResults, type ResultInfo } from "./format.js";

function results(ctx: HookContext<"queue">): ResultInfo[] {
  const { facts, connection } = ctx;
  const found: ResultInfo[] = [];
  if (connection.iprev) {
    found.push({
      method: "iprev",
      result: connection.iprev.result,
      comment: connection.iprev.name,
      properties: [["policy.iprev", connection.client.ip]],
    });
  }
  if (facts.spf) {
    const { spf } = facts;
    const identity: readonly [string, string] =
      spf.identity === "helo" ? ["smtp.helo", spf.domain] : ["smtp.mailfrom", spf.sender];
    found.push({ method: "spf", result: spf.result, comment: spf.explanation, properties: [identity] });
  }
  if (facts.dkim) {
    if (facts.dkim.signatures.length === 0) found.push({ method: "dkim", result: "none", properties: [] });
    for (const signature of facts.dkim.signatures) {
      found.push({
        method: "dkim",
        result: signature.result,
        comment: signature.reason,
        properties: [
          ["header.d", signature.domain],
          ["header.s", signature.selector],
          ["header.a", signature.algorithm],
          ["header.b", signature.b],
        ],
      });
    }
  }
  if (facts.arc) {
    const { arc } = facts;
    const seen = arc.instance > 0 ? `i=${arc.instance}${arc.sealer ? ` d=${arc.sealer}` : ""}` : null;
    found.push({
      method: "arc",
      result: arc.result,
      comment: [seen, arc.reason].filter(Boolean).join(": ") || null,
      properties: [],
    });
  }
  if (facts.dmarc) {
    const { dmarc } = facts;
    const policy = dmarc.policy
      ? [
          `p=${dmarc.policy}`,
          dmarc.pct < 100 ? `pct=${dmarc.pct}` : null,
          dmarc.override && `override=${dmarc.override}`,
        ]
      : [dmarc.reason];
    found.push({
      method: "dmarc",
      result: dmarc.result,
      comment: policy.filter(Boolean).join(" ") || null,
      properties: [
        ...(dmarc.fromDomain ? [["header.from", dmarc.fromDomain] as const] : []),
        // What was done about a failure (RFC 7489 §11.2); a pass needs nothing done.
        ...(dmarc.result === "fail" ? [["policy.dmarc", dmarc.applied] as const] : []),
      ],
    });
  }
  return found;
}

export default definePlugin({
  name: "auth-results",
  options: z.strictObject({}),
  findings: { authResults: AuthResultsFindings },
  setup(_options, services) {
    const authservId = services.hostname.toLowerCase();
    const claimsOurId = (name: string, value: string) =>
      name.toLowerCase() === "authentication-results" && authservIdOf(value) === authservId;
    return {
      async queue(ctx) {
        const value = formatAuthResults(ctx.hostname, results(ctx));
        const tx = ctx.transaction;
        tx.headers.remove.push(claimsOurId);
        tx.headers.prepend.push(`Authentication-Results: ${value}`);
        const facts: AuthResultsFacts = { authservId: ctx.hostname, value };
        ctx.facts.authResults = facts;
        return undefined;
      },
    };
  },
});
