/** Authentication-Results (RFC 8601) as text: one result per method and identity, written and read. */
import { oneLine } from "../../core/index.js";

export interface ResultInfo {
  /** `spf`, `dkim`, `dmarc`, `arc`, `iprev`… */
  readonly method: string;
  readonly result: string;
  /** Shown as a comment after the result. */
  readonly comment?: string | null;
  /** `ptype.property` → value, e.g. ["smtp.mailfrom", "a@example.test"]. */
  readonly properties: ReadonlyArray<readonly [string, string]>;
}

/** A comment may hold anything but an unbalanced parenthesis; escaping keeps a sender's text inside it. */
export function comment(text: string): string {
  return `(${oneLine(text, Infinity).replace(/[\\()]/g, "\\$&")})`;
}

/** RFC 2045 token characters: no tspecials, no space, no controls. */
const TOKEN = /^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$/;
const DOT_ATOM = /^[!#$%&'*+\-/0-9=?A-Z^_`a-z{|}~]+(?:\.[!#$%&'*+\-/0-9=?A-Z^_`a-z{|}~]+)*$/;

/** A property value: a token, an addr-spec whose local part is a dot-atom, or else a quoted-string. */
export function propertyValue(value: string): string {
  const at = value.lastIndexOf("@");
  const plainAddress = at >= 0 && (at === 0 || DOT_ATOM.test(value.slice(0, at))) && TOKEN.test(value.slice(at + 1));
  if (TOKEN.test(value) || plainAddress) return value;
  return `"${oneLine(value, Infinity).replace(/["\\]/g, "\\$&")}"`;
}

function resinfo(info: ResultInfo): string {
  const parts = [`${info.method}=${info.result}`];
  if (info.comment) parts.push(comment(info.comment));
  for (const [name, value] of info.properties) parts.push(`${name}=${propertyValue(value)}`);
  return parts.join(" ");
}

/** The field value (what follows `Authentication-Results: `), one result per folded line. */
export function formatAuthResults(authservId: string, results: readonly ResultInfo[]): string {
  if (results.length === 0) return `${authservId}; none`;
  return [`${authservId};`, results.map(resinfo).join(";\r\n\t")].join("\r\n\t");
}

/** The authserv-id a received field claims (lower-case), or null when it names none. */
export function authservIdOf(value: string): string | null {
  let text = value.replace(/\r?\n/g, "");
  // Comments nest; strip the innermost until none is left.
  for (let previous = ""; previous !== text; ) {
    previous = text;
    text = text.replace(/\((?:[^()\\]|\\.)*\)/g, " ");
  }
  const id = text.split(";")[0].trim().split(/\s+/)[0];
  return id ? id.toLowerCase() : null;
}
