/**
 * The tag list of an ARC-Seal (RFC 8617 §4.1.3), checked as RFC 6376 §3.2 defines tag lists,
 * before mailauth 4.13 validates the chain: mailauth reads tags leniently (a repeated tag, one
 * with a name that is not a tag-name, an empty tag between `;;`, and tag names in any case were
 * all accepted; `S=` was read as `s=`), and a chain with a malformed seal must fail (RFC 8617
 * §5.2). `test/conformance/arc.test.ts` holds each case to mailauth too.
 */

/** tag-name = ALPHA *ALNUMPUNC (RFC 6376 §3.2); names are case-sensitive. */
const TAG_NAME = /^[A-Za-z][A-Za-z0-9_]*$/;
/** RFC 8617 §4.1.3: the tags an ARC-Seal must carry (t= is optional). */
const REQUIRED_SEAL_TAGS = ["i", "a", "b", "d", "s", "cv"] as const;

/** What is wrong with an ARC-Seal header field value, or null when its tag list is well formed. */
export function arcSealProblem(value: string): string | null {
  const specs = value.replace(/\r?\n/g, "").split(";");
  // A tag list may end with one ";" (RFC 6376 §3.2), which leaves one empty spec at the end.
  if (specs.length > 1 && specs[specs.length - 1].trim() === "") specs.pop();
  const seen = new Set<string>();
  for (const spec of specs) {
    const equals = spec.indexOf("=");
    if (spec.trim() === "") return "empty tag in the ARC-Seal";
    const name = (equals < 0 ? spec : spec.slice(0, equals)).trim();
    if (equals < 0 || !TAG_NAME.test(name)) return `invalid tag "${name}" in the ARC-Seal`;
    if (seen.has(name)) return `tag "${name}" appears twice in the ARC-Seal`;
    seen.add(name);
  }
  const missing = REQUIRED_SEAL_TAGS.filter((tag) => !seen.has(tag));
  return missing.length > 0 ? `the ARC-Seal has no ${missing.join(", ")} tag` : null;
}
