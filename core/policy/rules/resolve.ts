/**
 * The I/O step of loading rules: reads the list files they name and anchors their relative paths
 * at the policy's folder. Runs inside the policy loader, so a missing list file or a bad entry is
 * reported like any other problem, at the line of the policy that names the file, and a policy
 * with such a problem never takes effect.
 */
import { resolve } from "node:path";
import { type ListItem, type ListKind, readListFile } from "../lists.js";
import type { Condition, Rule, RuleAction } from "./schema.js";

type PathKey = string | number;
type Report = (path: readonly PathKey[], message: string) => void;

const LIST_KEYS: readonly ListKind[] = ["network", "domain", "address"];

/** Every `{ file }` item under a raw `when`, with its path and the kind of list it is in. */
function rawListFiles(
  value: unknown,
  path: PathKey[],
  kind: ListKind | undefined,
  found: Array<{ path: PathKey[]; kind: ListKind; file: string }>,
): void {
  if (Array.isArray(value)) {
    value.forEach((item, index) => {
      rawListFiles(item, [...path, index], kind, found);
    });
    return;
  }
  if (value === null || typeof value !== "object") return;
  const record = value as Record<string, unknown>;
  if (kind && typeof record.file === "string") {
    found.push({ path: [...path, "file"], kind, file: record.file });
    return;
  }
  for (const [key, child] of Object.entries(record)) {
    rawListFiles(child, [...path, key], (LIST_KEYS as string[]).includes(key) ? (key as ListKind) : kind, found);
  }
}

function anchorTarget(to: string, dir: string): string {
  return to.startsWith("maildir:") ? `maildir:${resolve(dir, to.slice("maildir:".length))}` : to;
}

function mapCondition(condition: Condition, item: (kind: ListKind, item: ListItem) => ListItem): Condition {
  switch (condition.kind) {
    case "always":
      return condition;
    case "all":
    case "any":
      return { kind: condition.kind, of: condition.of.map((c) => mapCondition(c, item)) };
    case "not":
      return { kind: "not", of: mapCondition(condition.of, item) };
    case "test": {
      const { test } = condition;
      if (test.kind !== "list") return condition;
      return { ...condition, test: { ...test, items: test.items.map((i) => item(test.list, i)) } };
    }
  }
}

function anchorAction(action: RuleAction, dir: string): RuleAction {
  return action.type === "route" || action.type === "quarantine"
    ? { ...action, to: anchorTarget(action.to, dir) }
    : action;
}

/**
 * Reads the list files of `rules` (validated) and anchors their paths; problems go to `report`
 * at the raw policy's location of each file reference.
 */
export async function resolveRules(raw: unknown, rules: readonly Rule[], dir: string, report: Report): Promise<Rule[]> {
  const rawRules = raw !== null && typeof raw === "object" ? (raw as { rules?: unknown }).rules : undefined;
  const refs: Array<{ path: PathKey[]; kind: ListKind; file: string }> = [];
  if (Array.isArray(rawRules)) {
    rawRules.forEach((rule, index) => {
      rawListFiles((rule as { when?: unknown } | null)?.when, ["rules", index, "when"], undefined, refs);
    });
  }
  const loaded = new Map<string, readonly string[]>();
  await Promise.all(
    refs.map(async (ref) => {
      const key = `${ref.kind}\n${ref.file}`;
      try {
        loaded.set(key, await readListFile(ref.kind, resolve(dir, ref.file)));
      } catch (error) {
        report(ref.path, error instanceof Error ? error.message : String(error));
      }
    }),
  );
  const item = (kind: ListKind, listItem: ListItem): ListItem =>
    typeof listItem === "string"
      ? listItem
      : { file: resolve(dir, listItem.file), entries: loaded.get(`${kind}\n${listItem.file}`) ?? [] };
  return rules.map((rule) => ({
    ...rule,
    when: mapCondition(rule.when, item),
    actions: rule.actions.map((action) => anchorAction(action, dir)),
  }));
}
