/**
 * An SPF record (RFC 7208 §4.5, §4.6, §12 ABNF) parsed and syntax-checked as a whole before any of
 * it is evaluated: a syntax error anywhere makes the check a permerror (§4.6), even when a term
 * before it would have matched. Domain-specs are checked as written, not after macro expansion
 * (§7.1): an expanded name that is not a valid domain simply does not exist.
 */
import { isIPv4, isIPv6 } from "node:net";

export type Qualifier = "+" | "-" | "~" | "?";

export type Mechanism =
  | { readonly kind: "all" }
  | { readonly kind: "include" | "exists"; readonly domainSpec: string }
  | { readonly kind: "a" | "mx"; readonly domainSpec: string | null; readonly cidr4: number; readonly cidr6: number }
  | { readonly kind: "ptr"; readonly domainSpec: string | null }
  | { readonly kind: "ip4" | "ip6"; readonly network: string; readonly prefix: number };

export interface Directive {
  readonly qualifier: Qualifier;
  readonly mechanism: Mechanism;
}

export interface SpfRecord {
  readonly directives: readonly Directive[];
  /** The domain-spec of `redirect=`, if any (at most one, §6). */
  readonly redirect: string | null;
  /** The domain-spec of `exp=`, if any (at most one, §6). */
  readonly explanation: string | null;
}

export class SpfSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SpfSyntaxError";
  }
}

/** A TXT record is an SPF record when it starts with "v=spf1" followed by a space or its end (§4.5). */
export function isSpfRecord(text: string): boolean {
  return /^v=spf1(?: |$)/i.test(text);
}

/** Letters of `%{…}` allowed in a domain-spec; c, r and t only in explanation text (§7.3), which is not expanded here. */
const DOMAIN_MACRO_LETTERS = /^[slodiphv]$/i;

/**
 * One piece of a macro-string: literal text, or `%{letter digits r delimiters}` (`%%`, `%_` and
 * `%-` are literals, already replaced).
 */
export type MacroToken =
  | { readonly literal: string }
  | {
      readonly letter: string;
      readonly urlEscape: boolean;
      readonly rightParts: number;
      readonly reverse: boolean;
      readonly delimiters: string;
    };

/** Splits a macro-string (§7.1) into tokens; throws on a `%` that starts no valid macro. */
export function macroTokens(text: string): MacroToken[] {
  const tokens: MacroToken[] = [];
  let literal = "";
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    const code = char.charCodeAt(0);
    if (code < 0x21 || code > 0x7e) throw new SpfSyntaxError(`invalid character in "${text}"`);
    if (char !== "%") {
      literal += char;
      continue;
    }
    const next = text[i + 1];
    if (next === "%" || next === "_" || next === "-") {
      literal += next === "%" ? "%" : next === "_" ? " " : "%20";
      i++;
      continue;
    }
    const macro = next === "{" ? /^%\{([A-Za-z])(\d*)([rR]?)([.\-+,/_=]*)\}/.exec(text.slice(i)) : null;
    if (!macro) throw new SpfSyntaxError(`invalid macro in "${text}"`);
    const [whole, letter, digits, reverse, delimiters] = macro;
    if (!DOMAIN_MACRO_LETTERS.test(letter))
      throw new SpfSyntaxError(`macro letter "${letter}" not allowed in "${text}"`);
    if (digits !== "" && Number(digits) === 0) throw new SpfSyntaxError(`zero parts in macro "${whole}"`);
    if (literal) tokens.push({ literal });
    literal = "";
    tokens.push({
      letter: letter.toLowerCase(),
      urlEscape: letter !== letter.toLowerCase(),
      rightParts: digits === "" ? 0 : Number(digits),
      reverse: reverse !== "",
      delimiters: [...new Set(delimiters)].join("") || ".",
    });
    i += whole.length - 1;
  }
  if (literal) tokens.push({ literal });
  return tokens;
}

const TOPLABEL = /\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?$/;

/** domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) / macro-expand (§7.1). */
function checkDomainSpec(spec: string): string {
  macroTokens(spec);
  // Valid now, so this splits it into its macro-expands (`%{…}`, `%%`, `%_`, `%-`) and single characters.
  const pieces = spec.match(/%\{[^}]*\}|%[%_-]|[^%]/g) ?? [];
  const endsInMacro = pieces.length > 0 && pieces[pieces.length - 1].startsWith("%");
  if (!endsInMacro && !TOPLABEL.test(spec)) throw new SpfSyntaxError(`"${spec}" is not a domain-spec`);
  return spec;
}

function cidrLength(text: string | undefined, max: number, what: string): number {
  if (text === undefined) return max;
  if (!/^(?:0|[1-9]\d*)$/.test(text) || Number(text) > max) throw new SpfSyntaxError(`invalid ${what} /${text}`);
  return Number(text);
}

function parseMechanism(name: string, rest: string): Mechanism {
  switch (name) {
    case "all":
      if (rest !== "") throw new SpfSyntaxError(`"all" takes no argument`);
      return { kind: "all" };
    case "include":
    case "exists":
      if (!rest.startsWith(":")) throw new SpfSyntaxError(`"${name}" needs a domain`);
      return { kind: name, domainSpec: checkDomainSpec(rest.slice(1)) };
    case "a":
    case "mx": {
      const match = /^(?::(.*?))?(?:\/(\d+))?(?:\/\/(\d+))?$/s.exec(rest);
      if (!match) throw new SpfSyntaxError(`invalid "${name}${rest}"`);
      const [, spec, cidr4, cidr6] = match;
      return {
        kind: name,
        domainSpec: spec === undefined ? null : checkDomainSpec(spec),
        cidr4: cidrLength(cidr4, 32, "IPv4 prefix length"),
        cidr6: cidrLength(cidr6, 128, "IPv6 prefix length"),
      };
    }
    case "ptr":
      if (rest === "") return { kind: "ptr", domainSpec: null };
      if (!rest.startsWith(":")) throw new SpfSyntaxError(`invalid "ptr${rest}"`);
      return { kind: "ptr", domainSpec: checkDomainSpec(rest.slice(1)) };
    case "ip4":
    case "ip6": {
      const match = /^:([^/]+)(?:\/([^/]*))?$/.exec(rest);
      const valid = name === "ip4" ? isDottedQuad : isIPv6;
      if (!match || !valid(match[1])) throw new SpfSyntaxError(`invalid "${name}${rest}"`);
      const prefix = cidrLength(match[2], name === "ip4" ? 32 : 128, `${name} prefix length`);
      return { kind: name, network: match[1], prefix };
    }
    default:
      throw new SpfSyntaxError(`unknown mechanism "${name}"`);
  }
}

/** ip4-network: four decimal octets without leading zeros (§12). */
function isDottedQuad(text: string): boolean {
  return isIPv4(text) && text.split(".").every((octet) => octet === "0" || !octet.startsWith("0"));
}

/** Parses a record `isSpfRecord` accepted; throws SpfSyntaxError for any syntax error in it. */
export function parseSpfRecord(text: string): SpfRecord {
  const directives: Directive[] = [];
  let redirect: string | null = null;
  let explanation: string | null = null;
  // Terms are separated by spaces only (§4.6.1); any other control character is a syntax error.
  const terms = text.slice("v=spf1".length).split(" ").filter(Boolean);
  for (const term of terms) {
    if (/[^\x21-\x7e]/.test(term)) throw new SpfSyntaxError("the record has characters other than printable ASCII");
    const modifier = /^([A-Za-z][A-Za-z0-9\-_.]*)=(.*)$/s.exec(term);
    if (modifier) {
      const name = modifier[1].toLowerCase();
      const value = modifier[2];
      if (name === "redirect" || name === "exp") {
        if ((name === "redirect" ? redirect : explanation) !== null) {
          throw new SpfSyntaxError(`"${name}=" appears more than once`);
        }
        if (name === "redirect") redirect = checkDomainSpec(value);
        else explanation = checkDomainSpec(value);
      } else {
        macroTokens(value); // unknown modifiers are ignored, but their macro-string must be valid
      }
      continue;
    }
    const directive = /^([+\-~?]?)([A-Za-z][A-Za-z0-9]*)(.*)$/s.exec(term);
    if (!directive) throw new SpfSyntaxError(`"${term}" is neither a mechanism nor a modifier`);
    const [, qualifier, name, rest] = directive;
    directives.push({
      qualifier: (qualifier || "+") as Qualifier,
      mechanism: parseMechanism(name.toLowerCase(), rest),
    });
  }
  return { directives, redirect, explanation };
}
