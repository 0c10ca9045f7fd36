import { z } from "zod";
import { Size } from "../../core/index.js";
import { DaemonAddressOption } from "../shared/scanner-daemon.js";

export const ClamavOptions = z.strictObject({
  address: DaemonAddressOption.prefault("127.0.0.1:3310").describe(
    'where clamd listens: HOST:PORT ("127.0.0.1:3310", its TCPSocket and TCPAddr) or the absolute path of its LocalSocket',
  ),
  streamMaxLength: Size.prefault("25MB").describe(
    "clamd's StreamMaxLength (clamd.conf; 25MB unless set there): a larger message is delivered unscanned, " +
      "with a finding saying so, rather than cut off where clamd stops reading",
  ),
});

export type ClamavOptions = z.output<typeof ClamavOptions>;

export const ClamavFindings = z
  .object({
    status: z
      .enum(["clean", "infected", "skipped", "error"])
      .describe(
        "clean; infected (signatures found); skipped (larger than streamMaxLength, delivered unscanned); " +
          "error (clamd failed or could not be reached)",
      ),
    signatures: z.array(z.string()).readonly().describe("the signatures clamd found, e.g. Eicar-Test-Signature"),
    signature: z.string().nullable().describe("the first of them, for reply texts; null when none"),
    reason: z.string().nullable().describe("why the message was skipped or the scan failed; null otherwise"),
  })
  .readonly();

export type ClamavFacts = z.output<typeof ClamavFindings>;
