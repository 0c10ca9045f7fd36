/**
 * SMTP smuggling defence (the 2023 disclosures): smtp-server ends DATA only on CRLF.CRLF, but bare
 * LF and bare CR reach us inside the message. A next hop that also ends DATA on `LF.LF`, `CR.CR`,
 * `LF.CRLF`… would see the rest of "our" message as a second message smuggled past every check.
 *
 * `LineEndingScanner` is a streaming state machine over the (dot-unstuffed) DATA stream. It
 * - flags an end-of-data lookalike: a line that is a lone dot where either line break around it is
 *   a bare CR or a bare LF (only CRLF.CRLF is a real one-dot line);
 * - counts bare CR and bare LF, and rewrites each to CRLF, so that nothing downstream (dot-stuffing
 *   in the SMTP client, a maildir reader, a DKIM verifier) ever sees an ambiguous line end.
 *
 * Chunk boundaries never matter: a CR at the end of a chunk is held back until the next byte says
 * whether it is half of a CRLF.
 */

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const CRLF = Buffer.from("\r\n");

/** How a line ended: with CRLF, or with a bare CR or bare LF. */
type Break = "crlf" | "bare";

/**
 * Where we are relative to line starts (numbers, not objects: this runs once per message byte).
 * The start of the message counts as after CRLF: it follows the client's `DATA<CRLF>`.
 */
const IN_LINE = 0;
const START_AFTER_CRLF = 1;
const START_AFTER_BARE = 2;
/** A dot that is the first byte of a line. */
const DOT_AFTER_CRLF = 3;
const DOT_AFTER_BARE = 4;
type Position = 0 | 1 | 2 | 3 | 4;

export interface ScanReport {
  /** A lone-dot line touching a bare CR or bare LF was seen. */
  readonly lookalike: boolean;
  /** Bare CR and bare LF seen (each rewritten to CRLF in the output). */
  readonly bareLineEndings: number;
}

export class LineEndingScanner implements ScanReport {
  #position: Position = START_AFTER_CRLF;
  /** A CR was the last byte seen; whether it is bare depends on the next byte. */
  #pendingCr = false;
  lookalike = false;
  bareLineEndings = 0;

  /** Scans a chunk and returns it with bare line endings rewritten (a trailing CR is held back). */
  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    const out: Buffer[] = [];
    let copied = 0;
    let i = 0;
    let nextCr = -1;
    let nextLf = -1;
    if (this.#pendingCr) {
      // The previous chunk ended in a CR that was not copied out.
      this.#pendingCr = false;
      out.push(CRLF);
      if (chunk[0] === LF) {
        this.#lineBreak("crlf");
        copied = i = 1;
      } else {
        this.#bare();
      }
    }
    for (; i < chunk.length; i++) {
      const byte = chunk[i];
      if (byte === CR) {
        if (i + 1 < chunk.length && chunk[i + 1] === LF) {
          this.#lineBreak("crlf");
          i++;
          continue;
        }
        if (i > copied) out.push(chunk.subarray(copied, i));
        copied = i + 1;
        if (i + 1 === chunk.length) {
          this.#pendingCr = true;
        } else {
          out.push(CRLF);
          this.#bare();
        }
      } else if (byte === LF) {
        // Never half of a CRLF: that case was consumed with its CR above.
        if (i > copied) out.push(chunk.subarray(copied, i));
        out.push(CRLF);
        copied = i + 1;
        this.#bare();
      } else {
        const position = this.#position;
        this.#position =
          byte !== DOT
            ? IN_LINE
            : position === START_AFTER_CRLF
              ? DOT_AFTER_CRLF
              : position === START_AFTER_BARE
                ? DOT_AFTER_BARE
                : IN_LINE;
        // Inside a line only the next CR or LF matters: let native search skip the rest. Each
        // search result is kept until passed, so a chunk without any CR is searched once, not per line.
        if (this.#position === IN_LINE) {
          if (nextCr <= i) nextCr = indexOrEnd(chunk, CR, i + 1);
          if (nextLf <= i) nextLf = indexOrEnd(chunk, LF, i + 1);
          i = Math.min(nextCr, nextLf) - 1;
        }
      }
    }
    if (copied < chunk.length) out.push(chunk.subarray(copied));
    return out.length === 1 ? out[0] : Buffer.concat(out);
  }

  /** Flushes a CR held back at the very end; the message is over. */
  end(): Buffer {
    if (!this.#pendingCr) return Buffer.alloc(0);
    this.#pendingCr = false;
    this.#bare();
    return CRLF;
  }

  #bare(): void {
    this.bareLineEndings++;
    this.#lineBreak("bare");
  }

  #lineBreak(kind: Break): void {
    const position = this.#position;
    if (position === DOT_AFTER_BARE || (position === DOT_AFTER_CRLF && kind === "bare")) this.lookalike = true;
    this.#position = kind === "crlf" ? START_AFTER_CRLF : START_AFTER_BARE;
  }
}

function indexOrEnd(chunk: Buffer, byte: number, from: number): number {
  const index = chunk.indexOf(byte, from);
  return index < 0 ? chunk.length : index;
}

/** Scans a whole message at once (tests, `portcullis try`). */
export function scanMessage(message: Buffer): ScanReport & { normalized: Buffer } {
  const scanner = new LineEndingScanner();
  const normalized = Buffer.concat([scanner.push(message), scanner.end()]);
  return { lookalike: scanner.lookalike, bareLineEndings: scanner.bareLineEndings, normalized };
}
