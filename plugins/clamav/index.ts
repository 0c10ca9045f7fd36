/**
 * clamav: the message scanned by clamd (ClamAV's daemon) after DATA, streamed with INSTREAM over
 * TCP or a unix socket in pieces, so a large message is never held in memory. Findings: clean,
 * infected (with the signature names), skipped (larger than clamd's StreamMaxLength: delivered
 * unscanned, as the finding says) or error. Verdicts: `infected` rejects naming the signature;
 * `error` (clamd answered with an error) defers, fail safe. clamd unreachable or not answering as
 * clamd is an error of the hook, so the entry's `onError` decides (default: defer).
 */
import { definePlugin, type HookContext, verdict } from "../../core/index.js";
import { DaemonClosedEarly, describeAddress, exchange, messagePieces, PIECE_BYTES } from "../shared/scanner-daemon.js";
import { type ClamdResult, frameHead, INSTREAM_COMMAND, parseClamdReply } from "./clamd.js";
import { type ClamavFacts, ClamavFindings, ClamavOptions } from "./schema.js";

export type { ClamavFacts } from "./schema.js";

declare module "../../core/index.js" {
  interface Facts {
    clamav: ClamavFacts;
  }
}

/** A reply is one line per signature found. */
const MAX_REPLY_BYTES = 64 * 1024;

const END_OF_STREAM = frameHead(0);

/** Records the finding, and logs it for whoever follows the gateway's decisions. */
function record(
  ctx: HookContext<"data">,
  status: ClamavFacts["status"],
  signatures: readonly string[],
  reason: string | null,
): void {
  const clamav: ClamavFacts = { status, signatures, signature: signatures[0] ?? null, reason };
  ctx.facts.clamav = clamav;
  ctx.log.debug({ event: "finding", plugin: "clamav", clamav }, "clamav");
}

export default definePlugin({
  name: "clamav",
  options: ClamavOptions,
  findings: { clamav: ClamavFindings },
  verdicts: {
    infected: { action: "reject", reply: "554 5.7.1 Message rejected: virus found: {clamav.signature}" },
    error: { action: "defer", reply: "451 4.7.1 Virus scan failed, try again later" },
    skipped: { action: "ignore" },
  },
  setup(options) {
    const where = `clamd at ${describeAddress(options.address)}`;
    const daemon = { name: "clamd", address: options.address, maxReplyBytes: MAX_REPLY_BYTES };

    async function scan(ctx: HookContext<"data">): Promise<ClamdResult> {
      try {
        return await exchange(
          daemon,
          ctx.signal,
          async (request) => {
            await request.write(INSTREAM_COMMAND);
            for await (const piece of messagePieces(ctx.message, PIECE_BYTES)) {
              await request.write(frameHead(piece.length), piece);
            }
            await request.write(END_OF_STREAM);
          },
          parseClamdReply,
        );
      } catch (error) {
        // clamd stops reading past its StreamMaxLength, and its answer saying so may be lost with the connection.
        if (!(error instanceof DaemonClosedEarly)) throw error;
        return { status: "error", reason: `${error.message}; is streamMaxLength above clamd's StreamMaxLength?` };
      }
    }

    return {
      data: async (ctx) => {
        const { size } = ctx.message;
        if (size > options.streamMaxLength) {
          record(ctx, "skipped", [], `${size} bytes, larger than streamMaxLength ${options.streamMaxLength}`);
          return verdict("skipped");
        }
        let result: ClamdResult;
        try {
          result = await scan(ctx);
        } catch (error) {
          record(ctx, "error", [], error instanceof Error ? error.message : String(error));
          throw error;
        }
        switch (result.status) {
          case "clean":
            record(ctx, "clean", [], null);
            return undefined;
          case "infected":
            record(ctx, "infected", result.signatures, null);
            return verdict("infected");
          case "error":
            record(ctx, "error", [], result.reason);
            ctx.log.warn({ plugin: "clamav", err: result.reason }, `${where} could not scan the message`);
            return verdict("error");
        }
      },
    };
  },
});
