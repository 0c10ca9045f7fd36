/**
 * The spamd protocol (SPAMC/1.5, as spamc speaks it) and SpamAssassin's own header fields, as pure
 * functions: the request head, the reply parsed into a result, the X-Spam-* fields of a result.
 */

/** What spamd said about one message. */
export interface SpamdResult {
  readonly spam: boolean;
  readonly score: number;
  readonly threshold: number;
  /** The names of the rules that hit, in spamd's order. */
  readonly rules: readonly string[];
}

/**
 * The head of a `SYMBOLS` request: the message follows it, exactly `size` bytes. `SYMBOLS` answers
 * the verdict and the names of the rules that hit, without the text report.
 */
export function spamdRequestHead(size: number, user: string | undefined): Buffer {
  const lines = ["SYMBOLS SPAMC/1.5", `Content-length: ${size}`];
  if (user !== undefined) lines.push(`User: ${user}`);
  return Buffer.from(`${lines.join("\r\n")}\r\n\r\n`);
}

/** SpamAssassin's rule names: letters, digits and underscores (Mail::SpamAssassin::Conf). */
const RULE_NAME = /^\w{1,128}$/;

/**
 * The result in a spamd reply, or an Error saying what was wrong with it: spamd's own error
 * (`SPAMD/1.0 76 Bad header line`), a reply cut short, or one without its `Spam:` header.
 */
export function parseSpamdReply(reply: Buffer): SpamdResult | Error {
  const text = reply.toString("latin1");
  const headEnd = text.indexOf("\r\n\r\n");
  const [status = "", ...headers] = (headEnd < 0 ? text : text.slice(0, headEnd)).split("\r\n");
  const statusLine = /^SPAMD\/\d+\.\d+ (\d+) (.*)$/.exec(status);
  if (!statusLine) return new Error(`not a spamd reply: ${JSON.stringify(status.slice(0, 80))}`);
  if (statusLine[1] !== "0") return new Error(`spamd answered ${statusLine[1]} ${statusLine[2].slice(0, 200)}`);
  if (headEnd < 0) return new Error("spamd's reply ended before its body");
  const field = (name: string) =>
    headers.find((line) => line.toLowerCase().startsWith(`${name.toLowerCase()}:`))?.replace(/^[^:]*:\s*/, "");
  const verdict = /^(true|false|yes|no)\s*;\s*(-?\d+(?:\.\d+)?)\s*\/\s*(-?\d+(?:\.\d+)?)$/i.exec(field("Spam") ?? "");
  if (!verdict) return new Error(`spamd's reply has no valid Spam header: ${JSON.stringify(field("Spam") ?? null)}`);
  // The reply was read one character per byte, so the body's length is its size in bytes.
  const body = text.slice(headEnd + 4);
  const length = Number(field("Content-length") ?? Number.NaN);
  if (Number.isInteger(length) && body.length < length) {
    return new Error(`spamd's reply was cut short: ${body.length} of ${length} bytes`);
  }
  return {
    spam: /^(true|yes)$/i.test(verdict[1]),
    score: Number(verdict[2]),
    threshold: Number(verdict[3]),
    rules: body
      .split(",")
      .map((name) => name.trim())
      .filter((name) => RULE_NAME.test(name)),
  };
}

/** The header field names SpamAssassin writes; a message arriving with them has them removed. */
export const SPAM_HEADER_NAMES: readonly string[] = ["X-Spam-Flag", "X-Spam-Score", "X-Spam-Status"];

/** Where SpamAssassin folds `X-Spam-Status` between rule names. */
const FOLD_AT = 76;

/**
 * SpamAssassin's header fields for a result, as it writes them by default (`X-Spam-Flag: YES` only
 * on spam, `X-Spam-Status: Yes, score=… required=… tests=…` folded between rule names), plus
 * `X-Spam-Score`.
 */
export function spamHeaderFields(result: SpamdResult): string[] {
  const score = result.score.toFixed(1);
  let status = `X-Spam-Status: ${result.spam ? "Yes" : "No"}, score=${score} required=${result.threshold.toFixed(1)} tests=`;
  let line = status.length;
  const rules = result.rules.length > 0 ? result.rules : ["none"];
  rules.forEach((rule, index) => {
    const piece = index < rules.length - 1 ? `${rule},` : rule;
    if (index > 0 && line + piece.length > FOLD_AT) {
      status += "\r\n\t";
      line = 1;
    }
    status += piece;
    line += piece.length;
  });
  return [...(result.spam ? ["X-Spam-Flag: YES"] : []), `X-Spam-Score: ${score}`, status];
}
