/**
 * The users file of a submission listener: one user per line, `name:hash[:sender,sender…]`, where
 * the hash is what `portcullis passwd` prints (scrypt from node:crypto, parameters and salt inside)
 * and the optional senders are the addresses (or `@domain` for a whole domain) the user may put in
 * MAIL FROM besides its own name. `#` starts a comment line.
 */
import { randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from "node:crypto";

/** scrypt cost: N = 2^15 (32 MiB of memory), r = 8, p = 1; about 50 ms per check on a small core. */
const DEFAULT_COST = { N: 2 ** 15, r: 8, p: 1 } as const;
const KEY_LENGTH = 32;
const SALT_LENGTH = 16;

export interface UserEntry {
  readonly hash: string;
  /** Lower-cased addresses and `@domain` entries. */
  readonly senders: readonly string[];
}

function derive(password: string, salt: Buffer, cost: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // maxmem must cover 128 * N * r bytes, which the default (32 MiB) only just misses for N = 2^15.
    scrypt(password, salt, KEY_LENGTH, { ...cost, maxmem: 256 * 1024 * 1024 }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

/** `scrypt$N$r$p$salt$key`, salt and key in base64. */
export async function hashPassword(password: string, cost: { N: number; r: number; p: number } = DEFAULT_COST) {
  const salt = randomBytes(SALT_LENGTH);
  const key = await derive(password, salt, cost);
  return `scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString("base64")}$${key.toString("base64")}`;
}

interface ParsedHash {
  readonly cost: { N: number; r: number; p: number };
  readonly salt: Buffer;
  readonly key: Buffer;
}

function parseHash(encoded: string): ParsedHash | undefined {
  const match = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(encoded);
  if (!match) return undefined;
  const [N, r, p] = [match[1], match[2], match[3]].map(Number);
  const key = Buffer.from(match[5], "base64");
  // N must be a power of two above 1; a key of another length was not made here.
  if (N < 2 || (N & (N - 1)) !== 0 || r < 1 || p < 1 || key.length !== KEY_LENGTH) return undefined;
  return { cost: { N, r, p }, salt: Buffer.from(match[4], "base64"), key };
}

/** Whether `password` matches `encoded`; a malformed hash never matches. Constant-time comparison. */
export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const parsed = parseHash(encoded);
  if (!parsed) return false;
  const key = await derive(password, parsed.salt, parsed.cost);
  return timingSafeEqual(key, parsed.key);
}

/** Parses a users file; throws with the line number of the first malformed line. */
export function parseUsersFile(text: string, file = "users file"): Map<string, UserEntry> {
  const users = new Map<string, UserEntry>();
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const [name, hash, senders = "", ...extra] = line.split(":");
    const where = `${file}:${index + 1}`;
    if (!name || !hash || extra.length > 0) throw new Error(`${where}: expected name:hash[:sender,...]`);
    if (!parseHash(hash)) throw new Error(`${where}: the hash of "${name}" is not one portcullis passwd prints`);
    const key = name.toLowerCase();
    if (users.has(key)) throw new Error(`${where}: "${name}" is listed twice`);
    const list = senders
      .split(",")
      .map((sender) => sender.trim().toLowerCase())
      .filter((sender) => sender !== "");
    users.set(key, { hash, senders: list });
  });
  return users;
}
