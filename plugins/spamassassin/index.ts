/**
 * spamassassin: the message scanned by spamd (SpamAssassin's daemon) after DATA. The score, the
 * threshold, the spam flag and the rules that hit become findings; the message is tagged with
 * SpamAssassin's own X-Spam-* header fields (spoofed ones arriving with it are removed), and the
 * verdicts `spam` (tag only, by default) and `high-score` (past `rejectAbove`: reject) let the
 * policy choose. A message larger than `maxSize` goes unscanned with a finding saying so; spamd
 * unreachable or failing is an error, so the entry's `onError` decides (default: defer).
 */
import { definePlugin, type HookContext, verdict } from "../../core/index.js";
import { exchange, messagePieces, PIECE_BYTES } from "../shared/scanner-daemon.js";
import { type SpamassassinFacts, SpamassassinFindings, SpamassassinOptions } from "./schema.js";
import { parseSpamdReply, SPAM_HEADER_NAMES, type SpamdResult, spamdRequestHead, spamHeaderFields } from "./spamd.js";

export type { SpamassassinFacts } from "./schema.js";

declare module "../../core/index.js" {
  interface Facts {
    spamassassin: SpamassassinFacts;
  }
}

/** A SYMBOLS reply is a status line, two headers and a list of rule names. */
const MAX_REPLY_BYTES = 64 * 1024;

const SPAM_HEADERS = new Set(SPAM_HEADER_NAMES.map((name) => name.toLowerCase()));
const isSpamHeader = (name: string) => SPAM_HEADERS.has(name.toLowerCase());

/** Records the finding, and logs it for whoever follows the gateway's decisions. */
function record(ctx: HookContext<"data">, spamassassin: SpamassassinFacts): void {
  ctx.facts.spamassassin = spamassassin;
  ctx.log.debug({ event: "finding", plugin: "spamassassin", spamassassin }, "spamassassin");
}

const unscanned = (status: "skipped" | "error", reason: string): SpamassassinFacts => ({
  status,
  reason,
  spam: false,
  score: null,
  threshold: null,
  rules: [],
});

export default definePlugin({
  name: "spamassassin",
  options: SpamassassinOptions,
  findings: { spamassassin: SpamassassinFindings },
  verdicts: {
    spam: { action: "ignore", reply: "554 5.7.1 Message rejected as spam (score {spamassassin.score})" },
    "high-score": { action: "reject", reply: "554 5.7.1 Message rejected as spam (score {spamassassin.score})" },
    skipped: { action: "ignore" },
  },
  setup(options) {
    const daemon = { name: "spamd", address: options.address, maxReplyBytes: MAX_REPLY_BYTES };

    const scan = (ctx: HookContext<"data">) =>
      exchange(
        daemon,
        ctx.signal,
        async (request) => {
          await request.write(spamdRequestHead(ctx.message.size, options.user));
          for await (const piece of messagePieces(ctx.message, PIECE_BYTES)) await request.write(piece);
        },
        parseSpamdReply,
      );

    return {
      data: async (ctx) => {
        // Only our own verdict may reach the next hop: a sender's "X-Spam-Flag: NO" is a lie to filters behind us.
        ctx.transaction.headers.remove.push(isSpamHeader);
        const { size } = ctx.message;
        if (size > options.maxSize) {
          record(ctx, unscanned("skipped", `${size} bytes, larger than maxSize ${options.maxSize}`));
          return verdict("skipped");
        }
        let result: SpamdResult;
        try {
          result = await scan(ctx);
        } catch (error) {
          record(ctx, unscanned("error", error instanceof Error ? error.message : String(error)));
          throw error;
        }
        record(ctx, { status: "scanned", reason: null, ...result });
        ctx.transaction.headers.prepend.push(...spamHeaderFields(result));
        if (options.rejectAbove !== undefined && result.score >= options.rejectAbove) return verdict("high-score");
        return result.spam ? verdict("spam") : undefined;
      },
    };
  },
});
