/**
 * Lists of networks, domains and addresses, written inline in a policy or kept in files (one entry
 * per line, `#` starts a comment). Rules use them (`client.ip: { network: [{ file: ./lists/partners.txt }] }`)
 * and so can plugins, through `ListOption` and `loadList`. A list file is read when its policy is
 * loaded, so editing it takes effect with the next reload, never half-way through a transaction.
 *
 * @example
 * // In a plugin: options.allow is `["192.0.2.0/24", { file: "./lists/allow.txt" }]` in the policy.
 * const schema = z.strictObject({ allow: ListOption("network").default([]) });
 * setup: async (options, services) => {
 *   const allow = compileList("network", await loadList(options.allow, "network", services.policyDir));
 *   return { connect: async (ctx) => (allow(ctx.connection.client.ip) ? { kind: "accept", by } : undefined) };
 * }
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { z } from "zod";
import { asciiDomain, DomainSet } from "../toolkit/address.js";
import { NetworkList, parseCidr } from "../toolkit/netaddr.js";

export type ListKind = "network" | "domain" | "address";

/** A list file; `entries` is filled in (and `file` made absolute) when the policy is loaded. */
export interface ListFile {
  readonly file: string;
  readonly entries?: readonly string[];
}

/** One element of a list as a policy writes it: an entry, or a file of entries. */
export type ListItem = string | ListFile;

/** Why `text` is not an entry of a `kind` list; undefined when it is one. */
export function entryProblem(kind: ListKind, text: string): string | undefined {
  switch (kind) {
    case "network":
      return parseCidr(text) ? undefined : `"${text}" is not an IP address or CIDR network, e.g. "192.0.2.0/24"`;
    case "domain":
      return asciiDomain(text.startsWith("*.") ? text.slice(2) : text)
        ? undefined
        : `"${text}" is not a domain: write "example.test", or "*.example.test" for its subdomains`;
    case "address": {
      const at = text.lastIndexOf("@");
      if (at <= 0 || at === text.length - 1) {
        return `"${text}" is not an address pattern: write local@domain, "*" matching any text, e.g. "*@spam.test"`;
      }
      return undefined;
    }
  }
}

/** Parses list-file text: one entry per line, blank lines and `#` comments ignored. */
export function parseList(
  kind: ListKind,
  text: string,
): { entries: string[]; problems: Array<{ line: number; message: string }> } {
  const entries: string[] = [];
  const problems: Array<{ line: number; message: string }> = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const entry = raw.replace(/(^|\s)#.*$/, "").trim();
    if (entry === "") return;
    const problem = entryProblem(kind, entry);
    if (problem) problems.push({ line: index + 1, message: problem });
    else entries.push(entry);
  });
  return { entries, problems };
}

/** Reads a list file; throws an Error naming the file and line of every bad entry. */
export async function readListFile(kind: ListKind, path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    throw new Error(`cannot read ${kind} list ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const { entries, problems } = parseList(kind, text);
  if (problems.length > 0) {
    throw new Error(problems.map((p) => `${path}:${p.line}: ${p.message}`).join("; "));
  }
  return entries;
}

/** Resolves a list's files (relative to `dir`) and reads them: the result holds every item's entries. */
export async function loadList(items: readonly ListItem[], kind: ListKind, dir: string): Promise<ListFile[]> {
  return Promise.all(
    items.map(async (item): Promise<ListFile> => {
      if (typeof item === "string") return { file: "", entries: [item] };
      const file = resolve(dir, item.file);
      return { file, entries: await readListFile(kind, file) };
    }),
  );
}

/**
 * Reads the files of a list found at `path` in a policy (validated), anchoring them at `dir`. A file
 * that cannot be read or holds a bad entry is reported at its `{ file }` item, like any other
 * problem of the policy, so a policy with such a list never takes effect. `raw` is the list as
 * written: one item or a sequence, which decides where its items are.
 */
export async function resolveListFiles(
  items: readonly ListItem[],
  raw: unknown,
  kind: ListKind,
  dir: string,
  path: ReadonlyArray<string | number>,
  report: (path: ReadonlyArray<string | number>, message: string) => void,
): Promise<ListItem[]> {
  return Promise.all(
    items.map(async (item, index): Promise<ListItem> => {
      if (typeof item === "string") return item;
      const file = resolve(dir, item.file);
      try {
        return { file, entries: await readListFile(kind, file) };
      } catch (error) {
        report([...path, ...(Array.isArray(raw) ? [index] : []), "file"], (error as Error).message);
        return { file, entries: [] };
      }
    }),
  );
}

/** Every entry of a list whose files are loaded; throws when a file was not (a programming error). */
export function listEntries(items: readonly ListItem[]): string[] {
  return items.flatMap((item) => {
    if (typeof item === "string") return [item];
    if (!item.entries) throw new Error(`list file ${item.file} was not loaded`);
    return [...item.entries];
  });
}

/** A compiled list: does `value` belong to it? */
export type ListMatcher = (value: string) => boolean;

/** `*` matches any run of characters; everything else literally, case-insensitively. */
function globPattern(pattern: string): RegExp {
  const source = pattern
    .toLowerCase()
    .split("*")
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  return new RegExp(`^${source}$`);
}

/** The domain of a value that may be an address (`a@example.test`) or a domain, lower-case ASCII. */
function domainOf(value: string): string | undefined {
  const at = value.lastIndexOf("@");
  return asciiDomain(at >= 0 ? value.slice(at + 1) : value);
}

/** Compiles a list once: networks test IPs; domains test domains or the domain of an address; addresses test addresses. */
export function compileList(kind: ListKind, items: readonly ListItem[]): ListMatcher {
  const entries = listEntries(items);
  switch (kind) {
    case "network": {
      const networks = new NetworkList(entries);
      return (value) => networks.has(value);
    }
    case "domain": {
      const domains = new DomainSet(entries);
      return (value) => {
        const domain = domainOf(value);
        return domain !== undefined && domains.has(domain);
      };
    }
    case "address": {
      const patterns = entries.map(globPattern);
      return (value) => {
        const at = value.lastIndexOf("@");
        if (at < 0) return false;
        // The domain is compared in its ASCII form, so a pattern matches IDN and punycode alike.
        const address =
          `${value.slice(0, at)}@${asciiDomain(value.slice(at + 1)) ?? value.slice(at + 1)}`.toLowerCase();
        return patterns.some((pattern) => pattern.test(address));
      };
    }
  }
}

const LIST_HELP: Record<ListKind, string> = {
  network: 'IP addresses or CIDR networks, e.g. "192.0.2.0/24"',
  domain: 'domains, e.g. "example.test"; "*.example.test" for its subdomains',
  address: 'address patterns, "*" matching any text, e.g. "*@spam.test" or "postmaster@*"',
};

/**
 * The zod schema of a list in a policy: one item or a list of items, each an entry or
 * `{ file: PATH }` (relative to the policy file). Plugins use it for list options.
 */
export function ListOption(kind: ListKind) {
  const entry = z
    .string()
    .trim()
    .superRefine((text, ctx) => {
      const problem = entryProblem(kind, text);
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    })
    .describe(`one entry: ${LIST_HELP[kind]}`);
  const file = z
    .strictObject({
      file: z
        .string()
        .min(1)
        .describe("a list file, relative to the policy file: one entry per line, # starts a comment"),
    })
    .describe(`a file of ${LIST_HELP[kind]}`);
  const item = z.union([entry, file], { error: `expected ${LIST_HELP[kind]}, or { file: PATH }` });
  return z
    .union([item, z.array(item).min(1)], { error: `expected ${LIST_HELP[kind]}, or { file: PATH }, or a list of them` })
    .transform((value): ListItem[] => (Array.isArray(value) ? value : [value]))
    .describe(`${LIST_HELP[kind]}; an item may be { file: PATH } naming a list file`);
}
