/**
 * SMTP smuggling defence (the 2023 disclosures): smtp-server ends DATA only on CRLF.CRLF, but bare
 * LF and bare CR reach us inside the message. A next hop that also ends DATA on `LF.LF`, `CR.CR`,
 * `LF.CRLF`… would see the rest of "our" message as a second message smuggled past every check.
 *
 * `LineEndingScanner` is a streaming state machine over the (dot-unstuffed) DATA stream, the one
 * pass every received byte goes through. It
 * - flags an end-of-data lookalike: a line that is a lone dot where either line break around it is
 *   a bare CR or a bare LF (only CRLF.CRLF is a real one-dot line), or where the dot is padded with
 *   NUL, space or tab (`.<SP>`, `<NUL>.`): an MTA that drops NUL or trims trailing blanks before it
 *   looks for the end of DATA would see a lone dot there;
 * - counts bare CR and bare LF, and rewrites each to CRLF, so that nothing downstream (dot-stuffing
 *   in the SMTP client, a maildir reader, a DKIM verifier) ever sees an ambiguous line end;
 * - counts NUL bytes (RFC 5322 text never holds one) and, when asked to, leaves them out of the
 *   output, so a stored or forwarded message never contains one;
 * - finds the first line longer than RFC 5322's 998 octets, which a next hop may split or cut.
 *
 * Chunk boundaries never matter: a CR at the end of a chunk is held back until the next byte says
 * whether it is half of a CRLF.
 */

const NUL = 0x00;
const HTAB = 0x09;
const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const DOT = 0x2e;
const CRLF = Buffer.from("\r\n");

/** RFC 5322 §2.1.1 (and RFC 5321 §4.5.3.1.6): a line holds at most 998 octets before its CRLF. */
export const MAX_LINE_LENGTH = 998;

/** How a line ended: with CRLF, or with a bare CR or bare LF. */
type Break = "crlf" | "bare";

/**
 * Where we are relative to line starts (numbers, not objects: this runs once per message byte).
 * The start of the message counts as after CRLF: it follows the client's `DATA<CRLF>`.
 */
const IN_LINE = 0;
const START_AFTER_CRLF = 1;
const START_AFTER_BARE = 2;
/** A dot that is the first byte of a line (NUL before it does not count). */
const DOT_AFTER_CRLF = 3;
const DOT_AFTER_BARE = 4;
type Position = 0 | 1 | 2 | 3 | 4;

/** Counted over the message as received: lines from 1, offsets in octets from 0. */
export interface NulSeen {
  readonly line: number;
  readonly offset: number;
}

export interface OverlongLine {
  readonly line: number;
  /** Octets before the line break, as received. */
  readonly length: number;
}

export interface ScanReport {
  /** A lone-dot line touching a bare CR or bare LF, or padded with NUL, space or tab, was seen. */
  readonly lookalike: boolean;
  /** Bare CR and bare LF seen (each rewritten to CRLF in the output). */
  readonly bareLineEndings: number;
  /** NUL bytes seen (left out of the output when stripping). */
  readonly nulBytes: number;
  readonly firstNul: NulSeen | null;
  /** The first line longer than MAX_LINE_LENGTH octets, or null. */
  readonly firstOverlongLine: OverlongLine | null;
}

export interface ScanOptions {
  /** Leave NUL bytes out of the output (they are still counted and still pad a lookalike). */
  readonly stripNul?: boolean;
}

export class LineEndingScanner implements ScanReport {
  readonly #stripNul: boolean;
  #position: Position = START_AFTER_CRLF;
  /** The lone dot of the current line had NUL, space or tab next to it. */
  #padded = false;
  /** A CR was the last byte seen; whether it is bare depends on the next byte. */
  #pendingCr = false;
  /** Octets received before the current chunk. */
  #offset = 0;
  /** Offset where the current line starts, and its number. */
  #lineStart = 0;
  #line = 1;
  lookalike = false;
  bareLineEndings = 0;
  nulBytes = 0;
  firstNul: NulSeen | null = null;
  firstOverlongLine: OverlongLine | null = null;

  constructor(options: ScanOptions = {}) {
    this.#stripNul = options.stripNul ?? false;
  }

  /** Scans a chunk and returns it with bare line endings rewritten (a trailing CR is held back). */
  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    const offset = this.#offset;
    this.#offset += chunk.length;
    const out: Buffer[] = [];
    let copied = 0;
    let i = 0;
    let nextCr = -1;
    let nextLf = -1;
    let nextNul = -1;
    if (this.#pendingCr) {
      // The previous chunk ended in a CR that was not copied out.
      this.#pendingCr = false;
      out.push(CRLF);
      if (chunk[0] === LF) {
        this.#lineBreak("crlf", offset - 1, 2);
        copied = i = 1;
      } else {
        this.#bare(offset - 1);
      }
    }
    for (; i < chunk.length; i++) {
      const byte = chunk[i];
      if (byte === CR) {
        if (i + 1 < chunk.length && chunk[i + 1] === LF) {
          this.#lineBreak("crlf", offset + i, 2);
          i++;
          continue;
        }
        if (i > copied) out.push(chunk.subarray(copied, i));
        copied = i + 1;
        if (i + 1 === chunk.length) {
          this.#pendingCr = true;
        } else {
          out.push(CRLF);
          this.#bare(offset + i);
        }
      } else if (byte === LF) {
        // Never half of a CRLF: that case was consumed with its CR above.
        if (i > copied) out.push(chunk.subarray(copied, i));
        out.push(CRLF);
        copied = i + 1;
        this.#bare(offset + i);
      } else {
        const position = this.#position;
        if (byte === NUL) {
          this.#nul(offset + i);
          if (this.#stripNul) {
            if (i > copied) out.push(chunk.subarray(copied, i));
            copied = i + 1;
          }
          // Invisible to a next hop that drops NUL: the position stays, but a lone dot is now padded.
          if (position !== IN_LINE) this.#padded = true;
        } else if (byte === DOT) {
          this.#position =
            position === START_AFTER_CRLF ? DOT_AFTER_CRLF : position === START_AFTER_BARE ? DOT_AFTER_BARE : IN_LINE;
        } else if ((byte === SP || byte === HTAB) && (position === DOT_AFTER_CRLF || position === DOT_AFTER_BARE)) {
          this.#padded = true;
        } else {
          this.#position = IN_LINE;
        }
        // Inside a line only the next CR, LF or NUL matters: let native search skip the rest. Each
        // search result is kept until passed, so a chunk without any CR is searched once, not per line.
        if (this.#position === IN_LINE) {
          if (nextCr <= i) nextCr = indexOrEnd(chunk, CR, i + 1);
          if (nextLf <= i) nextLf = indexOrEnd(chunk, LF, i + 1);
          if (nextNul <= i) nextNul = indexOrEnd(chunk, NUL, i + 1);
          i = Math.min(nextCr, nextLf, nextNul) - 1;
        }
      }
    }
    if (copied < chunk.length) out.push(chunk.subarray(copied));
    return out.length === 1 ? out[0] : Buffer.concat(out);
  }

  /** Flushes a CR held back at the very end; the message is over. */
  end(): Buffer {
    if (!this.#pendingCr) {
      // A last line without a line break still counts for its length.
      this.#checkLength(this.#offset);
      return Buffer.alloc(0);
    }
    this.#pendingCr = false;
    this.#bare(this.#offset - 1);
    return CRLF;
  }

  #nul(at: number): void {
    if (this.nulBytes++ === 0) this.firstNul = { line: this.#line, offset: at };
  }

  #bare(at: number): void {
    this.bareLineEndings++;
    this.#lineBreak("bare", at, 1);
  }

  /** A line break whose first octet is at offset `at` and which is `width` octets long. */
  #lineBreak(kind: Break, at: number, width: 1 | 2): void {
    const position = this.#position;
    if (position === DOT_AFTER_BARE || (position === DOT_AFTER_CRLF && (kind === "bare" || this.#padded))) {
      this.lookalike = true;
    }
    this.#position = kind === "crlf" ? START_AFTER_CRLF : START_AFTER_BARE;
    this.#padded = false;
    this.#checkLength(at);
    this.#lineStart = at + width;
    this.#line++;
  }

  #checkLength(lineEnd: number): void {
    const length = lineEnd - this.#lineStart;
    if (length > MAX_LINE_LENGTH && this.firstOverlongLine === null) {
      this.firstOverlongLine = { line: this.#line, length };
    }
  }
}

function indexOrEnd(chunk: Buffer, byte: number, from: number): number {
  const index = chunk.indexOf(byte, from);
  return index < 0 ? chunk.length : index;
}

/** Scans a whole message at once (tests, `portcullis try`). */
export function scanMessage(message: Buffer, options: ScanOptions = {}): ScanReport & { normalized: Buffer } {
  const scanner = new LineEndingScanner(options);
  const normalized = Buffer.concat([scanner.push(message), scanner.end()]);
  const { lookalike, bareLineEndings, nulBytes, firstNul, firstOverlongLine } = scanner;
  return { lookalike, bareLineEndings, nulBytes, firstNul, firstOverlongLine, normalized };
}
