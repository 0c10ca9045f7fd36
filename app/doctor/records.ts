/**
 * What `portcullis doctor` needs to know about published records, as pure functions tested by
 * tables: the tag=value lists of DKIM (RFC 6376 §3.2), DMARC (RFC 7489 §6.3) and TLS-RPT
 * (RFC 8460 §3), and whether a DKIM key record publishes the public half of a private key.
 */
import { createPublicKey, type KeyObject } from "node:crypto";

/** Tags in order as written; names lower-cased, values trimmed. Undefined when the text is no tag list. */
export function parseTags(text: string): Array<[string, string]> | undefined {
  const tags: Array<[string, string]> = [];
  for (const part of text.split(";")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    if (eq <= 0) return undefined;
    const name = part.slice(0, eq).trim().toLowerCase();
    if (!/^[a-z][a-z0-9_]*$/.test(name)) return undefined;
    tags.push([name, part.slice(eq + 1).trim()]);
  }
  return tags;
}

/** Joins each TXT record's character-strings and keeps the records that start with `v=<version>`. */
export function versionedRecords(txt: readonly (readonly string[])[], version: string): string[] {
  const start = new RegExp(`^v\\s*=\\s*${version}\\s*(;|$)`, "i");
  return txt.map((chunks) => chunks.join("")).filter((text) => start.test(text));
}

const URI = /^[a-z][a-z0-9+.-]*:\S+$/i;

/** Why a DMARC record is malformed; an empty list when it is well-formed. */
export function dmarcProblems(record: string): string[] {
  const tags = parseTags(record);
  if (!tags) return ["it is not a list of tag=value pairs separated by semicolons"];
  const problems: string[] = [];
  if (tags[0]?.[0] !== "v" || tags[0][1] !== "DMARC1") problems.push('it must start with "v=DMARC1"');
  const value = new Map(tags);
  const policy = /^(none|quarantine|reject)$/i;
  const p = value.get("p");
  if (p === undefined) problems.push("p= (none, quarantine or reject) is missing");
  else if (!policy.test(p)) problems.push(`p=${p} is not none, quarantine or reject`);
  const sp = value.get("sp");
  if (sp !== undefined && !policy.test(sp)) problems.push(`sp=${sp} is not none, quarantine or reject`);
  const pct = value.get("pct");
  if (pct !== undefined && !(/^\d{1,3}$/.test(pct) && Number(pct) <= 100)) problems.push(`pct=${pct} is not 0-100`);
  for (const name of ["adkim", "aspf"]) {
    const mode = value.get(name);
    if (mode !== undefined && !/^[rs]$/i.test(mode)) problems.push(`${name}=${mode} is not r or s`);
  }
  for (const name of ["rua", "ruf"]) {
    const list = value.get(name);
    if (list !== undefined && !list.split(",").every((uri) => URI.test(uri.trim()))) {
      problems.push(`${name}= must be a comma-separated list of URIs such as mailto:dmarc@example.org`);
    }
  }
  const fo = value.get("fo");
  if (fo !== undefined && !/^[01ds](:[01ds])*$/i.test(fo))
    problems.push(`fo=${fo} is not a colon-separated list of 0, 1, d, s`);
  const ri = value.get("ri");
  if (ri !== undefined && !/^\d+$/.test(ri)) problems.push(`ri=${ri} is not a number of seconds`);
  return problems;
}

/** Why a TLS-RPT record is malformed; an empty list when it is well-formed. */
export function tlsRptProblems(record: string): string[] {
  const tags = parseTags(record);
  if (!tags) return ["it is not a list of tag=value pairs separated by semicolons"];
  const problems: string[] = [];
  if (tags[0]?.[0] !== "v" || tags[0][1] !== "TLSRPTv1") problems.push('it must start with "v=TLSRPTv1"');
  const rua = new Map(tags).get("rua");
  if (rua === undefined) problems.push("rua= is missing");
  else if (!rua.split(",").every((uri) => /^(mailto:\S+@\S+|https:\/\/\S+)$/i.test(uri.trim()))) {
    problems.push("rua= must list mailto: or https: URIs");
  }
  return problems;
}

export type DkimKeyMatch =
  | { readonly kind: "match" }
  | { readonly kind: "mismatch" }
  /** The record is unusable on its own: revoked (empty p=), another key type, bad syntax. */
  | { readonly kind: "invalid"; readonly reason: string };

/**
 * Whether a DKIM key record publishes the public half of `privateKey`. RSA records hold the DER
 * public key (SubjectPublicKeyInfo, or the bare RSAPublicKey some tools publish); Ed25519 records
 * the raw 32 bytes (RFC 8463).
 */
export function matchDkimKey(record: string, privateKey: KeyObject): DkimKeyMatch {
  const tags = parseTags(record);
  if (!tags) return { kind: "invalid", reason: "it is not a list of tag=value pairs" };
  const value = new Map(tags);
  const version = value.get("v");
  if (version !== undefined && (tags[0][0] !== "v" || version !== "DKIM1")) {
    return { kind: "invalid", reason: 'v= must be "DKIM1" and come first' };
  }
  const p = value.get("p");
  if (p === undefined) return { kind: "invalid", reason: "p= is missing" };
  if (p === "") return { kind: "invalid", reason: "p= is empty: the key is revoked" };
  const type = (value.get("k") ?? "rsa").toLowerCase();
  const ours = privateKey.asymmetricKeyType;
  if (type !== ours) return { kind: "invalid", reason: `k=${type}, but the key file holds an ${ours} key` };
  const published = publicKeyOf(type, Buffer.from(p.replace(/\s+/g, ""), "base64"));
  if (!published) return { kind: "invalid", reason: `p= is not a valid ${type} public key` };
  const jwk = (key: KeyObject) => {
    const { n, e, x } = key.export({ format: "jwk" });
    return JSON.stringify([n, e, x]);
  };
  return jwk(published) === jwk(createPublicKey(privateKey)) ? { kind: "match" } : { kind: "mismatch" };
}

function publicKeyOf(type: string, der: Buffer): KeyObject | undefined {
  const attempts =
    type === "ed25519"
      ? [() => createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: der.toString("base64url") }, format: "jwk" })]
      : [
          () => createPublicKey({ key: der, format: "der", type: "spki" }),
          () => createPublicKey({ key: der, format: "der", type: "pkcs1" }),
        ];
  for (const attempt of attempts) {
    try {
      return attempt();
    } catch {
      // the next encoding, or not a key at all
    }
  }
  return undefined;
}

/** The key record to publish for a private key: what the fix line of a missing or wrong record says. */
export function dkimRecordFor(privateKey: KeyObject): string {
  const type = privateKey.asymmetricKeyType;
  const spki = createPublicKey(privateKey).export({ type: "spki", format: "der" });
  const published = type === "ed25519" ? spki.subarray(spki.length - 32) : spki;
  return `v=DKIM1; k=${type}; p=${published.toString("base64")}`;
}
