/**
 * Smarthost routes: submission to an upstream provider (587 with STARTTLS, or 465 with
 * implicit TLS) with AUTH PLAIN/LOGIN, for networks whose outbound port 25 is blocked.
 *
 * The policy names where the password is (a file or an environment variable), never the password
 * itself, so the loaded policy, `check`, `try`, the spool (which stores each recipient's route) and
 * every log line can only ever show the user name and that location. The secret is read at each
 * delivery attempt, so a rotated password takes effect without a reload.
 */
import { readFile } from "node:fs/promises";
import { z } from "zod";

/** A route's `auth:` as the policy writes it (paths already anchored at the policy's folder). */
export interface SmarthostAuth {
  readonly user: string;
  /** A file holding the password (one trailing newline is ignored). */
  readonly passwordFile?: string;
  /** An environment variable holding the password. */
  readonly passwordEnv?: string;
}

/** What `conn.login()` gets. Kept out of every value that is logged, stored or printed. */
export interface SmarthostCredentials {
  readonly user: string;
  readonly pass: string;
}

export const SmarthostAuthSchema = z
  .strictObject({
    user: z
      .string()
      .min(1)
      .refine((text) => !/[\r\n\0]/.test(text), { error: "a user name cannot hold CR, LF or NUL" })
      .describe("the user name the upstream provider gave you"),
    passwordFile: z
      .string()
      .min(1)
      .optional()
      .describe("file holding the password (relative to the policy file; keep it mode 0600)"),
    passwordEnv: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "an environment variable name, e.g. SMARTHOST_PASSWORD")
      .optional()
      .describe("environment variable holding the password"),
  })
  .refine((auth) => (auth.passwordFile === undefined) !== (auth.passwordEnv === undefined), {
    error: "give exactly one of passwordFile or passwordEnv (where the password is, never the password itself)",
  });

/** Where the password comes from, for messages: never the password. */
export function credentialSource(auth: SmarthostAuth): string {
  return auth.passwordFile !== undefined ? `passwordFile ${auth.passwordFile}` : `passwordEnv ${auth.passwordEnv}`;
}

/**
 * Problems of a route with `auth:` that the schema of a single key cannot see: the password must
 * only travel encrypted, and only an SMTP next hop (not MX, LMTP, maildir or discard) is a smarthost.
 */
export function smarthostRouteProblems(route: {
  readonly to: string | readonly string[];
  readonly tls?: string | { readonly mode: string };
  readonly auth?: SmarthostAuth;
}): Array<{ path: string[]; message: string }> {
  if (!route.auth) return [];
  const problems: Array<{ path: string[]; message: string }> = [];
  const mode = typeof route.tls === "string" ? route.tls : route.tls?.mode;
  if (mode !== undefined && mode !== "required" && mode !== "implicit") {
    problems.push({
      path: ["tls"],
      message: `auth sends a password: tls must be "required" (STARTTLS, port 587) or "implicit" (port 465), not "${mode}"`,
    });
  }
  const targets = typeof route.to === "string" ? [route.to] : route.to;
  if (targets.some((to) => !to.startsWith("smtp://"))) {
    problems.push({
      path: ["to"],
      message: 'auth is for smarthosts: every target must be smtp://HOST:PORT, e.g. "smtp://smtp.provider.example:587"',
    });
  }
  return problems;
}

export type CredentialsOutcome =
  | { readonly ok: true; readonly credentials: SmarthostCredentials }
  /** Why the password cannot be had, naming its source (file or variable), never its content. */
  | { readonly ok: false; readonly problem: string };

/** Reads the password now; the outcome is a value so delivery can defer with a reason. */
export async function loadCredentials(
  auth: SmarthostAuth,
  env: NodeJS.ProcessEnv = process.env,
): Promise<CredentialsOutcome> {
  let pass: string | undefined;
  if (auth.passwordFile !== undefined) {
    try {
      pass = (await readFile(auth.passwordFile, "utf8")).replace(/\r?\n$/, "");
    } catch (error) {
      const code = (error as { code?: string }).code ?? "an error";
      return { ok: false, problem: `cannot read ${credentialSource(auth)} (${code})` };
    }
  } else if (auth.passwordEnv !== undefined) {
    pass = env[auth.passwordEnv];
  }
  if (!pass) return { ok: false, problem: `${credentialSource(auth)} is empty or not set` };
  return { ok: true, credentials: { user: auth.user, pass } };
}
