/**
 * The end of a message for mailauth 4.13's MessageParser (DKIM verification and signing, ARC):
 * a message may end inside its header block, with no empty line and no body (RFC 5322 §3.5 makes
 * the body optional). mailauth's `finish` runs the verifier's final step first and only then
 * parses such a header block, so the signatures in it were never seen. This parses the header
 * block first. `test/conformance/dkim.test.ts` holds it to mailauth's own `finish`.
 */

/** The parts of mailauth's MessageParser that its end touches. */
export interface EndingParser {
  state: "header" | "body";
  headers: unknown;
  headerChunks: Buffer[];
  messageHeaders(headers: unknown): Promise<void>;
  finalChunk(): Promise<void>;
}

export function headerFirstFinish(parseHeaders: (header: Buffer) => unknown) {
  return async function finish(this: EndingParser): Promise<void> {
    if (!this.headers && this.headerChunks.length > 0) {
      this.state = "body";
      this.headers = parseHeaders(Buffer.concat(this.headerChunks));
      await this.messageHeaders(this.headers);
    }
    await this.finalChunk();
  };
}
