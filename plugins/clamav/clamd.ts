/**
 * clamd's INSTREAM command as pure functions: the command, the frame of each piece of the stream
 * (a 4-byte big-endian length, then the bytes; a zero length ends the stream), and the reply.
 */
import { oneLine } from "../../core/index.js";

/** `z` asks for NUL-terminated replies, so a reply is never confused with the next line. */
export const INSTREAM_COMMAND = Buffer.from("zINSTREAM\0");

/** The length prefix of a piece of `length` bytes; `frameHead(0)` ends the stream. */
export function frameHead(length: number): Buffer {
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(length, 0);
  return head;
}

export type ClamdResult =
  | { readonly status: "clean" }
  | { readonly status: "infected"; readonly signatures: readonly string[] }
  /** clamd answered with an error of its own, e.g. "INSTREAM size limit exceeded". */
  | { readonly status: "error"; readonly reason: string };

/**
 * What clamd's reply says: `stream: OK`, `stream: NAME FOUND` (one line per signature when clamd
 * reports every match), or `… ERROR`. Signature names are clamd's text: made one safe line each,
 * since they end up in reply lines and logs. Anything else is an Error (not clamd, or cut short).
 */
export function parseClamdReply(reply: Buffer): ClamdResult | Error {
  const lines = reply
    .toString("utf8")
    .split(/[\0\n]/)
    .map((line) => line.trim())
    .filter(Boolean);
  if (lines.length === 0) return new Error("clamd closed the connection without a reply");
  const signatures: string[] = [];
  for (const line of lines) {
    const found = /^stream: (.+) FOUND$/s.exec(line);
    if (found) signatures.push(oneLine(found[1], 200));
    else if (line.endsWith(" ERROR")) return { status: "error", reason: oneLine(line.slice(0, -" ERROR".length), 200) };
    else if (line !== "stream: OK") return new Error(`not a clamd reply: ${JSON.stringify(oneLine(line, 80))}`);
  }
  return signatures.length > 0 ? { status: "infected", signatures } : { status: "clean" };
}
