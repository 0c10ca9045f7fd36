/**
 * A worked example of a local plugin (see docs/writing-plugins.md): refuses senders from listed
 * domains at MAIL FROM, and records what it saw as a typed finding that rules and logs can use.
 */
import { definePlugin, verdict, z } from "portcullis";

export interface BlockSendersFacts {
  readonly domain: string;
  readonly blocked: boolean;
}

declare module "portcullis" {
  interface Facts {
    "block-senders": BlockSendersFacts;
  }
}

export default definePlugin({
  name: "block-senders",
  options: z.strictObject({
    domains: z.array(z.string().toLowerCase()).min(1).describe("sender domains to refuse"),
  }),
  verdicts: {
    blocked: { action: "reject", reply: "550 5.7.1 Mail from {block-senders.domain} is not accepted here" },
  },
  setup(options) {
    const blocked = new Set(options.domains);
    return {
      async mail(ctx) {
        const domain = ctx.transaction.sender.domain;
        const finding = { domain, blocked: blocked.has(domain) };
        ctx.facts["block-senders"] = finding;
        return finding.blocked ? verdict("blocked") : undefined;
      },
    };
  },
});
