/**
 * DKIM key records (RFC 6376 §3.6.1) as mailauth 4.13 should read them, applied at the key-lookup
 * seam (mailauth.ts) before mailauth parses the record:
 * - a record whose `s=` service list names neither `email` nor `*` is not for mail and is ignored,
 *   as if it were not there (mailauth used it);
 * - `p=` holding an RSA key in PKCS#1 form (RSAPublicKey), which other verifiers accept, is
 *   rewritten to the SubjectPublicKeyInfo form mailauth can read (it said "unknown key type").
 * `test/conformance/dkim.test.ts` holds both to mailauth, so an upgrade that fixes them says so.
 */
import { createPublicKey } from "node:crypto";

/** The tags of a key record: `tag=value` pairs split on `;`, whitespace removed as mailauth does. */
function keyTags(record: string): Map<string, string> {
  const tags = new Map<string, string>();
  for (const spec of record.replace(/\s+/g, "").split(";")) {
    const equals = spec.indexOf("=");
    if (equals > 0) tags.set(spec.slice(0, equals), spec.slice(equals + 1));
  }
  return tags;
}

/** §3.6.1: `s=` absent means all services; else a colon-separated list that must name email or *. */
function isForEmail(tags: Map<string, string>): boolean {
  const services = tags.get("s");
  if (services === undefined) return true;
  return services
    .toLowerCase()
    .split(":")
    .some((service) => service === "email" || service === "*");
}

/** A DER SEQUENCE whose first element is an INTEGER: an RSAPublicKey, not a SubjectPublicKeyInfo. */
function isPkcs1(der: Buffer): boolean {
  if (der[0] !== 0x30 || der.length < 4) return false;
  const lengthOctets = der[1] & 0x80 ? der[1] & 0x7f : 0;
  return der[2 + lengthOctets] === 0x02;
}

/** The record with a PKCS#1 `p=` rewritten as SubjectPublicKeyInfo; unchanged otherwise. */
function withSpkiKey(record: string, tags: Map<string, string>): string {
  const key = tags.get("p");
  if (!key) return record;
  const der = Buffer.from(key, "base64");
  if (!isPkcs1(der)) return record;
  let spki: string;
  try {
    spki = createPublicKey({ key: der, format: "der", type: "pkcs1" })
      .export({ type: "spki", format: "der" })
      .toString("base64");
  } catch {
    return record; // not a key after all: mailauth reports it as it would have
  }
  tags.set("p", spki);
  return [...tags].map(([tag, value]) => `${tag}=${value}`).join("; ");
}

/**
 * The TXT answer of a key lookup as mailauth should see it: the first record meant for email,
 * with its key in a form mailauth reads. Throws ENODATA ("no key") when no record is for email.
 */
export function usableKeyRecords(records: readonly (readonly string[])[]): string[][] {
  for (const chunks of records) {
    const record = chunks.join("");
    const tags = keyTags(record);
    if (isForEmail(tags)) return [[withSpkiKey(record, tags)]];
  }
  throw Object.assign(new Error("no DKIM key record for email"), { code: "ENODATA" });
}
