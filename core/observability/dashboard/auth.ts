/**
 * Who is looking at the dashboard. With `auth: { users }` a person signs in with HTTP Basic against
 * the scrypt users file SMTP AUTH uses (core/smtp/auth/users.ts, `portcullis passwd`); with
 * `auth: { tokenFile }` a program sends the token as a Bearer token (a browser may send it as the
 * Basic password). Without `auth` the dashboard is on loopback (the policy schema refuses anything
 * else) and everyone who reaches it is `loopback`.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parseUsersFile, type UserEntry, verifyPassword } from "../../smtp/auth/users.js";

/** A token shorter than this is guessable. */
const MIN_TOKEN_LENGTH = 32;

/**
 * A checked Authorization header is remembered this long: scrypt costs tens of milliseconds on
 * purpose, and a page makes several requests a second.
 */
const REMEMBER_MS = 5 * 60_000;
const REMEMBERED_MAX = 256;

export interface DashboardAuthConfig {
  readonly users?: string;
  readonly tokenFile?: string;
}

export type Credentials =
  | { readonly kind: "users"; readonly users: ReadonlyMap<string, UserEntry> }
  | {
      readonly kind: "token";
      readonly digest: Buffer;
    }
  | { readonly kind: "none" };

/** Reads the users or token file a dashboard's `auth` names, relative to the policy's folder. */
export async function loadCredentials(auth: DashboardAuthConfig | undefined, dir: string): Promise<Credentials> {
  if (auth?.users) {
    const file = resolve(dir, auth.users);
    return { kind: "users", users: parseUsersFile(await readFile(file, "utf8"), file) };
  }
  if (auth?.tokenFile) {
    const file = resolve(dir, auth.tokenFile);
    const token = (await readFile(file, "utf8")).trim();
    if (token.length < MIN_TOKEN_LENGTH) {
      throw new Error(`${file}: the dashboard token must be at least ${MIN_TOKEN_LENGTH} characters`);
    }
    return { kind: "token", digest: sha256(token) };
  }
  return { kind: "none" };
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** Checks Authorization headers; remembers the ones that passed for a while. */
export class DashboardAuth {
  readonly #remembered = new Map<string, { who: string; until: number }>();

  constructor(readonly credentials: Credentials) {}

  /** The challenge a 401 carries. */
  get challenge(): string {
    return this.credentials.kind === "token"
      ? 'Bearer realm="portcullis dashboard"'
      : 'Basic realm="portcullis dashboard", charset="UTF-8"';
  }

  /** Who sent the request, or null when the credentials are missing or wrong. */
  async who(authorization: string | undefined, now: number): Promise<string | null> {
    const { credentials } = this;
    if (credentials.kind === "none") return "loopback";
    if (!authorization) return null;
    const key = sha256(authorization).toString("base64");
    const known = this.#remembered.get(key);
    if (known && known.until > now) return known.who;
    const who = await this.#check(authorization);
    if (who !== null) {
      if (this.#remembered.size >= REMEMBERED_MAX) this.#remembered.clear();
      this.#remembered.set(key, { who, until: now + REMEMBER_MS });
    }
    return who;
  }

  async #check(authorization: string): Promise<string | null> {
    const { credentials } = this;
    const [scheme, value = ""] = authorization.trim().split(/\s+/, 2);
    const basic = scheme.toLowerCase() === "basic" ? decodeBasic(value) : null;
    if (credentials.kind === "token") {
      const token = scheme.toLowerCase() === "bearer" ? value : basic?.password;
      return token !== undefined && timingSafeEqual(sha256(token), credentials.digest) ? "token" : null;
    }
    if (credentials.kind !== "users" || !basic) return null;
    const user = credentials.users.get(basic.user.toLowerCase());
    return user && (await verifyPassword(basic.password, user.hash)) ? basic.user.toLowerCase() : null;
  }
}

function decodeBasic(value: string): { user: string; password: string } | null {
  const text = Buffer.from(value, "base64").toString("utf8");
  const colon = text.indexOf(":");
  return colon < 0 ? null : { user: text.slice(0, colon), password: text.slice(colon + 1) };
}
