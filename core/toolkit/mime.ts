/**
 * The parsed message for plugins: decoded header values (RFC 2047 encoded words, folded lines
 * joined), addresses, text and HTML bodies, attachments and the URLs in the bodies. A filter that
 * compared raw header values let `=?UTF-8?B?…?=` through; this is the one place that decodes.
 *
 * The message is parsed on the first request only, at most once: every later request for the same
 * message (another hook, another plugin) gets the same promise, and a message no hook asks about is
 * never parsed. mailparser's streaming parser reads the message from memory or the spool file as a
 * stream, so the raw message is never held whole for the parse, and it hands attachments over as
 * streams, so their content can be capped (test/bench/mime.ts: on 10 MB with attachments, a third
 * of postal-mime's peak memory and half of mailparser's simpleParser's, at no more time).
 *
 * Memory bound: the header values, the text and the HTML parts are held whole (they are bounded by
 * the policy's message size limit). Attachment content is held only for an attachment of at most
 * `ATTACHMENT_CONTENT_LIMIT` bytes while the held total stays within `HELD_CONTENT_LIMIT`; any other
 * attachment keeps its metadata and decoded size, with `content: null`. So beyond the text parts a
 * parse holds at most 8 MiB, whatever the message size.
 */
import type { Readable } from "node:stream";
import type { AddressObject, AttachmentStream, HeaderLines, HeaderValue, MailParser, MessageText } from "mailparser";
import type { Message } from "../contract/api.js";
import { binaryStringBytes } from "./client-text.js";

/** Largest attachment whose decoded content is kept in memory. */
export const ATTACHMENT_CONTENT_LIMIT = 1024 * 1024;
/** Most attachment content kept for one message, all attachments together. */
export const HELD_CONTENT_LIMIT = 8 * 1024 * 1024;

/** A mailbox of an address header, display name decoded. */
export interface MailAddress {
  /** Decoded display name; "" when there is none. */
  readonly name: string;
  readonly address: string;
}

export interface MessageAttachment {
  readonly filename: string | null;
  /** Lower-case MIME type. */
  readonly contentType: string;
  /** Decoded size in bytes. */
  readonly size: number;
  /**
   * The decoded content, or null when the attachment was over `ATTACHMENT_CONTENT_LIMIT` or the
   * message's held total would have passed `HELD_CONTENT_LIMIT` (then only the metadata is kept).
   */
  readonly content: Buffer | null;
}

export interface ParsedMessage {
  /** Decoded Subject; "" when absent. */
  readonly subject: string;
  /**
   * Every header field's value by lower-case name, each occurrence in order: folded lines joined,
   * RFC 2047 encoded words decoded, 8-bit text read as UTF-8, otherwise as written.
   */
  readonly headers: ReadonlyMap<string, readonly string[]>;
  /** Mailboxes of From, To, Cc and Reply-To; the members of a group are listed in its place. */
  readonly from: readonly MailAddress[];
  readonly to: readonly MailAddress[];
  readonly cc: readonly MailAddress[];
  readonly replyTo: readonly MailAddress[];
  /** The text/plain body (decoded to UTF-8); "" when there is none. */
  readonly text: string;
  /** The text/html body; "" when there is none. */
  readonly html: string;
  readonly attachments: readonly MessageAttachment[];
  /** http(s) URLs found in the text and HTML bodies, each once, in order of appearance. */
  readonly urls: readonly string[];
}

/**
 * The one parse: a method on an object, so that how often it runs can be watched (a test counts
 * calls to it; a metric could).
 */
export const mimeParser = {
  async parse(message: Pick<Message, "stream">): Promise<ParsedMessage> {
    // mailparser (~20 MB, ~0.15 s to load) loads with the first message a hook asks about.
    const mailparser = await import("mailparser");
    return parseStream(message.stream(), new mailparser.MailParser(MAILPARSER_OPTIONS));
  },
};

// Keyed by the message object, which lives exactly as long as its transaction.
const parses = new WeakMap<object, Promise<ParsedMessage>>();

/**
 * The message parsed: decoded headers, addresses, bodies, attachments and URLs. Parsed on the
 * first call for a message; every later call, from any hook, gets the same promise. A message
 * that cannot be parsed rejects (the hook's throw then becomes the entry's `onError`).
 *
 * @example
 * async data(ctx) {
 *   const { subject } = await parseMessage(ctx.message);
 *   return /\blottery\b/i.test(subject) ? verdict("spam") : undefined;
 * }
 */
export function parseMessage(message: Pick<Message, "stream">): Promise<ParsedMessage> {
  let pending = parses.get(message);
  if (!pending) {
    pending = mimeParser.parse(message);
    parses.set(message, pending);
  }
  return pending;
}

// The conversions between text and HTML, link detection and checksums are mailparser extras
// nothing here uses; skipping them is most of the parse time on a large text part.
const MAILPARSER_OPTIONS = {
  skipHtmlToText: true,
  skipTextToHtml: true,
  skipImageLinks: true,
  skipTextLinks: true,
  checksumAlgo: false,
} as const;

function parseStream(input: Readable, parser: MailParser): Promise<ParsedMessage> {
  return new Promise((resolve, reject) => {
    let headers = new Map<string, HeaderValue>();
    let lines: HeaderLines = [];
    let text = "";
    let html = "";
    let held = 0;
    const attachments: MessageAttachment[] = [];
    const fail = (error: Error) => {
      input.destroy();
      reject(error);
    };
    parser.on("headers", (parsed: Map<string, HeaderValue>) => {
      headers = parsed;
    });
    parser.on("headerLines", (raw: HeaderLines) => {
      lines = raw;
    });
    parser.on("data", (data: AttachmentStream | MessageText) => {
      if (data.type === "text") {
        text = data.text ?? "";
        html = data.html || "";
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      const fits = () => size <= ATTACHMENT_CONTENT_LIMIT && held + size <= HELD_CONTENT_LIMIT;
      data.content.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (fits()) chunks.push(chunk);
        else chunks.length = 0;
      });
      data.content.on("end", () => {
        const kept = fits();
        if (kept) held += size;
        attachments.push({
          filename: data.filename ?? null,
          contentType: data.contentType.toLowerCase(),
          size,
          content: kept ? Buffer.concat(chunks) : null,
        });
        data.release?.();
      });
    });
    parser.on("error", fail);
    input.on("error", fail);
    parser.on("end", () => {
      resolve({
        subject: typeof headers.get("subject") === "string" ? (headers.get("subject") as string) : "",
        headers: decodedHeaders(lines),
        from: mailboxes(headers.get("from")),
        to: mailboxes(headers.get("to")),
        cc: mailboxes(headers.get("cc")),
        replyTo: mailboxes(headers.get("reply-to")),
        text,
        html,
        attachments,
        urls: findUrls(text, html),
      });
    });
    input.pipe(parser);
  });
}

function isAddressObject(value: unknown): value is AddressObject {
  return typeof value === "object" && value !== null && "value" in value && "text" in value;
}

function mailboxes(value: HeaderValue | undefined): MailAddress[] {
  const objects = (Array.isArray(value) ? value : [value]).filter(isAddressObject);
  return objects.flatMap((object) =>
    object.value.flatMap((entry) =>
      (entry.group ?? [entry]).map((member) => ({ name: member.name, address: member.address ?? "" })),
    ),
  );
}

function decodedHeaders(lines: HeaderLines): Map<string, string[]> {
  const decoded = new Map<string, string[]>();
  for (const { key, line } of lines) {
    // mailparser hands the bytes over one character each; 8-bit header text (SMTPUTF8) is UTF-8.
    const value = binaryStringBytes(line.slice(line.indexOf(":") + 1)).toString("utf8");
    const values = decoded.get(key) ?? [];
    values.push(decodeWords(value.replace(/\r?\n(?=[ \t])/g, "").trim()));
    decoded.set(key, values);
  }
  return decoded;
}

const ENCODED_WORD = /=\?([^?\s]+)\?([bq])\?([^?\s]*)\?=/gi;
// A run of encoded words with only whitespace between them: that whitespace is not text (RFC 2047 §6.2).
const ENCODED_RUN = /=\?[^?\s]+\?[bq]\?[^?\s]*\?=(?:\s+=\?[^?\s]+\?[bq]\?[^?\s]*\?=)*/gi;

/**
 * Decodes RFC 2047 encoded words. The bytes of adjacent words in one charset are joined before they
 * are decoded, since a sender may split a multi-byte character between two words. A word in a
 * charset the runtime does not know is read as latin1, byte for byte.
 */
function decodeWords(value: string): string {
  return value.replace(ENCODED_RUN, (run) => {
    let out = "";
    let charset = "";
    let bytes: Buffer[] = [];
    const flush = () => {
      if (bytes.length > 0) out += decodeBytes(Buffer.concat(bytes), charset);
      bytes = [];
    };
    for (const [, wordCharset, encoding, text] of run.matchAll(ENCODED_WORD)) {
      // RFC 2231 lets a language follow the charset (`utf-8*en`); it does not change the bytes.
      const name = wordCharset.split("*")[0].toLowerCase();
      if (name !== charset) flush();
      charset = name;
      bytes.push(
        encoding.toLowerCase() === "b"
          ? Buffer.from(text, "base64")
          : Buffer.from(
              text
                .replaceAll("_", " ")
                .replace(/=([0-9a-f]{2})/gi, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))),
              "latin1",
            ),
      );
    }
    flush();
    return out;
  });
}

function decodeBytes(bytes: Buffer, charset: string): string {
  try {
    return new TextDecoder(charset).decode(bytes);
  } catch {
    return bytes.toString("latin1");
  }
}

// Stops at whitespace, quotes and angle brackets (HTML attributes, `<URL>` in text) and drops
// trailing punctuation that ends a sentence rather than the URL.
const URL_PATTERN = /https?:\/\/[^\s"'<>]+/gi;

function findUrls(text: string, html: string): string[] {
  const found = new Set<string>();
  for (const body of [text, html.replaceAll("&amp;", "&")]) {
    for (const match of body.matchAll(URL_PATTERN)) found.add(match[0].replace(/[.,;:!?)\]]+$/, ""));
  }
  return [...found];
}
