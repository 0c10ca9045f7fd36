/**
 * The message body of one transaction. Small messages stay in memory (the common case, and the
 * fast one); past `spillThreshold` bytes the body goes to a temporary file in the spool, so a large
 * message is never held whole in memory. Past `maxSize` nothing more is stored: the rest is only
 * counted, and the transaction is refused with 552.
 */
import { createReadStream } from "node:fs";
import { type FileHandle, mkdir, open, rm } from "node:fs/promises";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import type { Message } from "../contract/api.js";
import { LineEndingScanner, type NulSeen, type OverlongLine, type ScanOptions } from "./smuggling.js";

/**
 * Header text is decoded as latin1 so that every byte maps to one character and back: a field can be
 * written out again byte for byte (a DKIM signature with simple canonicalization survives).
 */
export interface HeaderField {
  readonly name: string;
  readonly value: string;
  /** The field as received, folding included, without the final line break. */
  readonly raw: string;
  /** Where the field starts in the header section's bytes, and where it ends (before its line break). */
  readonly start: number;
  readonly end: number;
}

export interface MessageLimits {
  readonly maxSize: number;
  readonly spillThreshold: number;
  readonly maxHeaderSize: number;
}

export class SpooledMessage implements Message {
  constructor(
    readonly size: number,
    readonly headers: readonly HeaderField[],
    /** Byte offset where the body starts (after the blank line); equals size when there is no body. */
    readonly headerLength: number,
    /** The bytes of the header section as received (at most `maxHeaderSize`): what `headers` locate. */
    readonly headerSection: Buffer,
    private readonly chunks: readonly Buffer[] | null,
    readonly path: string | null,
  ) {}

  stream(start = 0): Readable {
    const held = this.inMemory();
    if (!held) return createReadStream(this.path!, { start });
    return Readable.from([held.subarray(start)], { objectMode: false });
  }

  /** The whole message when it is held in memory (not spilled to a file), else null. */
  inMemory(): Buffer | null {
    if (this.path) return null;
    return this.chunks!.length === 1 ? this.chunks![0] : Buffer.concat(this.chunks!);
  }

  /** The whole message as one Buffer; only for messages that are in memory anyway or known small. */
  async buffer(): Promise<Buffer> {
    const held = this.inMemory();
    if (held) return held;
    const parts: Buffer[] = [];
    for await (const chunk of this.stream()) parts.push(chunk as Buffer);
    return Buffer.concat(parts);
  }

  async dispose(): Promise<void> {
    if (this.path) await rm(this.path, { force: true });
  }
}

/**
 * Parses an RFC 5322 header section (folded lines joined); stops at the first blank line. The
 * section is latin1 text, so a character's index is its byte offset: `start` and `end` locate each
 * field in the bytes it came from.
 */
export function parseHeaderSection(section: string): HeaderField[] {
  const fields: HeaderField[] = [];
  const lineBreak = /\r?\n/g;
  for (let start = 0; start < section.length; ) {
    lineBreak.lastIndex = start;
    const found = lineBreak.exec(section);
    const end = found ? found.index : section.length;
    const line = section.slice(start, end);
    if (line === "") break;
    if ((line[0] === " " || line[0] === "\t") && fields.length > 0) {
      const last = fields[fields.length - 1];
      fields[fields.length - 1] = {
        name: last.name,
        value: `${last.value}\r\n${line}`,
        raw: section.slice(last.start, end),
        start: last.start,
        end,
      };
    } else {
      const colon = line.indexOf(":");
      if (colon > 0) {
        fields.push({
          name: line.slice(0, colon).trim(),
          value: line.slice(colon + 1).replace(/^ /, ""),
          raw: line,
          start,
          end,
        });
      }
    }
    start = found ? lineBreak.lastIndex : section.length;
  }
  return fields;
}

function findHeaderEnd(buffer: Buffer): number {
  const crlf = buffer.indexOf("\r\n\r\n");
  if (crlf >= 0) return crlf + 4;
  const lf = buffer.indexOf("\n\n");
  return lf >= 0 ? lf + 2 : -1;
}

/** A Writable the DATA stream is piped into; `finish()` hands out the stored message. */
export class MessageWriter extends Writable {
  #size = 0;
  #stored = 0;
  #chunks: Buffer[] = [];
  #file: FileHandle | null = null;
  #path: string | null = null;
  #headerBytes: Buffer[] = [];
  #headerLength = -1;
  #headerScanned = 0;
  /**
   * Smuggling defence: bare CR/LF are rewritten to CRLF (and NUL left out, when stripping) before
   * anything is stored (core/smtp/smuggling.ts).
   */
  readonly #lineEndings: LineEndingScanner;

  constructor(
    private readonly spoolTmp: string,
    private readonly id: string,
    private readonly limits: MessageLimits,
    scan: ScanOptions = {},
  ) {
    super({ highWaterMark: 64 * 1024 });
    this.#lineEndings = new LineEndingScanner(scan);
  }

  get size(): number {
    return this.#size;
  }

  get oversized(): boolean {
    return this.#size > this.limits.maxSize;
  }

  /** The message held a line of just a dot next to a bare CR or LF, or padded with NUL or blanks (an SMTP smuggling attempt). */
  get endOfDataLookalike(): boolean {
    return this.#lineEndings.lookalike;
  }

  /** Bare CR and bare LF received (stored as CRLF). */
  get bareLineEndings(): number {
    return this.#lineEndings.bareLineEndings;
  }

  /** NUL bytes received (not stored when the writer strips them). */
  get nulBytes(): number {
    return this.#lineEndings.nulBytes;
  }

  get firstNul(): NulSeen | null {
    return this.#lineEndings.firstNul;
  }

  /** The first line longer than RFC 5322's 998 octets, or null. */
  get firstOverlongLine(): OverlongLine | null {
    return this.#lineEndings.firstOverlongLine;
  }

  /** True when the header section did not end within maxHeaderSize bytes. */
  get headerTooLarge(): boolean {
    return this.#headerLength < 0 && this.#headerScanned >= this.limits.maxHeaderSize;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    // The size limit counts bytes as received; what is stored is the normalised form.
    this.#size += chunk.length;
    this.#store(this.#lineEndings.push(chunk), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#store(this.#lineEndings.end(), callback);
  }

  #store(chunk: Buffer, callback: (error?: Error | null) => void): void {
    this.#scanHeader(chunk);
    if (this.oversized || chunk.length === 0) {
      callback();
    } else if (this.#file === null && this.#stored + chunk.length <= this.limits.spillThreshold) {
      this.#chunks.push(chunk);
      this.#stored += chunk.length;
      callback();
    } else {
      this.#spill(chunk).then(() => callback(), callback);
    }
  }

  #scanHeader(chunk: Buffer): void {
    if (this.#headerLength >= 0 || this.#headerScanned >= this.limits.maxHeaderSize) return;
    this.#headerBytes.push(chunk);
    this.#headerScanned += chunk.length;
    const joined = Buffer.concat(this.#headerBytes);
    const end = findHeaderEnd(joined.subarray(0, this.limits.maxHeaderSize));
    if (end >= 0) {
      this.#headerLength = end;
      this.#headerBytes = [joined.subarray(0, end)];
    } else {
      this.#headerBytes = [joined];
    }
  }

  async #spill(chunk: Buffer): Promise<void> {
    if (this.#file === null) {
      await mkdir(this.spoolTmp, { recursive: true });
      this.#path = join(this.spoolTmp, `${this.id}.eml`);
      this.#file = await open(this.#path, "w", 0o600);
      for (const buffered of this.#chunks) await this.#file.write(buffered);
      this.#chunks = [];
    }
    await this.#file.write(chunk);
    this.#stored += chunk.length;
  }

  /** Closes the temporary file (if any) and returns the message. */
  async finish(): Promise<SpooledMessage> {
    if (this.#file) {
      await this.#file.close();
      this.#file = null;
    }
    const headerBytes = Buffer.concat(this.#headerBytes);
    const headerLength = this.#headerLength >= 0 ? this.#headerLength : Math.min(this.#stored, headerBytes.length);
    const headerSection = headerBytes.subarray(0, headerLength);
    const headers = parseHeaderSection(headerSection.toString("latin1"));
    return new SpooledMessage(
      this.#stored,
      headers,
      headerLength,
      headerSection,
      this.#path ? null : this.#chunks,
      this.#path,
    );
  }

  /** Drops whatever was stored (after an error or a refused transaction). */
  async discard(): Promise<void> {
    if (this.#file) {
      await this.#file.close().catch(() => undefined);
      this.#file = null;
    }
    if (this.#path) await rm(this.#path, { force: true });
    this.#chunks = [];
  }
}
