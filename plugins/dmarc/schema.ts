import { resolve } from "node:path";
import { z } from "zod";
import { parseRouteTarget } from "../../core/index.js";

/** A `maildir:` route in a plugin option is relative to the policy folder, as in `routes:`. */
export function anchoredRoute(text: string, dir: string): string {
  return text.startsWith("maildir:") ? `maildir:${resolve(dir, text.slice("maildir:".length))}` : text;
}

export const DmarcOptions = z.strictObject({
  onPolicyReject: z
    .enum(["reject", "quarantine"])
    .default("reject")
    .describe("what a failure under p=reject leads to: the reject verdict (550 5.7.26), or quarantine"),
  quarantine: z
    .strictObject({
      header: z
        .string()
        .regex(/^[!-9;-~]+$/, "a header field name (printable ASCII, no colon)")
        .nullable()
        .default("X-Portcullis-Quarantine")
        .describe("header field added to quarantined mail (null: none)"),
      route: z
        .string()
        .refine((text) => parseRouteTarget(anchoredRoute(text, "/")) !== undefined, {
          message: "not a route target: use smtp://host:port, lmtp://host:port, maildir:PATH, mx or discard",
        })
        .nullable()
        .default(null)
        .describe("route target for quarantined mail, e.g. maildir:./quarantine (null: the usual route)"),
    })
    .prefault({})
    .describe("what quarantine does: tag the transaction `quarantine`, add a header field, reroute"),
  enforceOnTrusted: z
    .boolean()
    .default(false)
    .describe("also enforce on clients in relay.networks and authenticated clients (default: record only)"),
});

export type DmarcOptions = z.output<typeof DmarcOptions>;
