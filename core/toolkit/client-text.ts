/**
 * The one way text that a client controlled (addresses, HELO names, header values, AUTH names, a
 * next hop's replies) becomes part of something we write: a header field we add, a reply line, a
 * DSN, a line an operator reads. Everything leaves as UTF-8 (RFC 6532 allows it in header values,
 * and a non-ASCII address only arrives with SMTPUTF8, so the message is internationalized anyway);
 * never as latin1, which keeps only the low byte of each character and so turns U+010D into CR and
 * U+010A into LF. Characters that would end a line or a header section are removed in one place.
 */

/**
 * What must never pass: C0 controls but TAB (CR, LF and NUL among them), DEL, C1 controls (NEL among
 * them), the Unicode line and paragraph separators, and surrogates without their other half (they
 * have no UTF-8 form and would turn into U+FFFD on the wire).
 */
const UNSAFE =
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  /(?:[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff])+/g;

/**
 * `text` made safe to stand inside one line: each run of unsafe characters becomes one space, the
 * ends are trimmed, and the result is cut to `maxLength` UTF-16 units without splitting a pair.
 *
 * @example
 * oneLine("x\r\nFrom: ceo@example.test") // "x From: ceo@example.test"
 */
export function oneLine(text: string, maxLength = 512): string {
  const clean = withoutLineBreaks(text).trim();
  if (clean.length <= maxLength) return clean;
  const cut = clean.slice(0, maxLength);
  return /[\ud800-\udbff]$/.test(cut) ? cut.slice(0, -1) : cut;
}

/** `text` with each run of unsafe characters replaced by one space, and nothing else changed. */
function withoutLineBreaks(text: string): string {
  return text.replace(UNSAFE, " ");
}

/** RFC 5322 §3.6.8: a field name is one or more printable ASCII characters other than the colon. */
const FIELD_NAME = /^[!-9;-~]+:/;

/** A fold that a field's author meant: a line break followed by white space (RFC 5322 §2.2.3). */
const FOLD = /\r?\n(?=[ \t])/;

/**
 * One header field as it is written: the author's own folds kept, anything else that could end a
 * line removed, and a continuation line with nothing on it dropped (a lenient reader takes a line
 * of only white space for the blank line that ends the header section). Nothing else changes, so a
 * signature field (DKIM, ARC) stays exactly as its signer wrote it.
 */
function headerField(field: string): string {
  if (!FIELD_NAME.test(field)) throw new TypeError(`not a header field: ${JSON.stringify(oneLine(field, 80))}`);
  const lines = field.split(FOLD).map(withoutLineBreaks);
  return `${lines.filter((line, i) => i === 0 || line.trim() !== "").join("\r\n")}\r\n`;
}

/**
 * The bytes of header fields we add (each `Name: value`, folds allowed, no final line break): the
 * only place such fields become bytes, so no path can write one with another encoding. A field
 * without a valid name is a bug in whoever made it and throws.
 */
export function headerFieldBytes(fields: readonly string[]): Buffer {
  return Buffer.from(fields.map(headerField).join(""), "utf8");
}

/**
 * The bytes behind a "binary string" (one character per byte, as parsers that read raw header
 * bytes hand them over), so they can be decoded as what they are (UTF-8 for SMTPUTF8 headers).
 * Throws on a character above U+00FF: that text is not a binary string, and taking its low byte
 * is exactly the mistake that turns U+010D into CR.
 */
export function binaryStringBytes(text: string): Buffer {
  const bytes = Buffer.allocUnsafe(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code > 0xff) throw new RangeError(`not a binary string: U+${code.toString(16).padStart(4, "0")} at ${i}`);
    bytes[i] = code;
  }
  return bytes;
}
