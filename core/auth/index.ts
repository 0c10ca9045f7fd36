/**
 * AUTH on submission listeners: credentials checked against the users file, failed attempts
 * counted and rate-limited per client IP, and the MAIL FROM an authenticated user may use.
 *
 * smtp-server runs the SASL exchange (PLAIN, LOGIN); `GatewayConnection` keeps AUTH hidden until
 * TLS is up; this module only answers "who is this" and "may they send as that".
 */
import { readFile } from "node:fs/promises";
import { isAddressProblem, parseEnvelopeAddress } from "../address.js";
import type { Address, Clock, ConnectionContext } from "../api.js";
import { coreReject, type RefusingDecision, type Reply } from "../decision.js";
import type { PolicyConfig } from "../policy/schema.js";
import { hashPassword, parseUsersFile, type UserEntry, verifyPassword } from "./users.js";

export { hashPassword, parseUsersFile, verifyPassword } from "./users.js";

type AuthConfig = NonNullable<PolicyConfig["server"]["auth"]>;

/** The outcome of one AUTH attempt: the user name, or the reply that refuses it. */
export type AuthResult = { readonly user: string } | { readonly reply: Reply };

const INVALID: Reply = { code: 535, enhanced: "5.7.8", text: "Authentication credentials invalid" };
const LOCKED: Reply = {
  code: 454,
  enhanced: "4.7.0",
  text: "Too many failed authentication attempts, try again later",
};

/** Most client IPs whose failures are remembered; the oldest are forgotten first. */
const MAX_TRACKED = 10_000;

export class SubmissionAuth {
  /** Failure times per client IP, oldest first (Map order is insertion order: oldest IPs first too). */
  readonly #failures = new Map<string, number[]>();
  /** A hash to check unknown users against, so that "no such user" takes as long as a wrong password. */
  readonly #decoy: string;
  /** Failed attempts since start (for logs and metrics). */
  failed = 0;

  private constructor(
    private readonly users: ReadonlyMap<string, UserEntry>,
    private readonly config: AuthConfig,
    private readonly clock: Clock,
    decoy: string,
  ) {
    this.#decoy = decoy;
  }

  static async load(file: string, config: AuthConfig, clock: Clock): Promise<SubmissionAuth> {
    const users = parseUsersFile(await readFile(file, "utf8"), file);
    return new SubmissionAuth(users, config, clock, await hashPassword("decoy"));
  }

  async authenticate(clientIp: string, username: string, password: string): Promise<AuthResult> {
    const now = this.clock.now();
    const recent = this.#recentFailures(clientIp, now);
    // Locked out: the password is not even checked, so guessing goes no faster by hammering.
    if (recent.length >= this.config.maxFailures) return { reply: LOCKED };
    const entry = this.users.get(username.toLowerCase());
    const ok = await verifyPassword(password, entry?.hash ?? this.#decoy);
    if (entry && ok) return { user: username.toLowerCase() };
    this.failed++;
    this.#failures.delete(clientIp);
    this.#failures.set(clientIp, [...recent, now]);
    if (this.#failures.size > MAX_TRACKED) this.#failures.delete(this.#failures.keys().next().value as string);
    return { reply: INVALID };
  }

  #recentFailures(clientIp: string, now: number): number[] {
    return (this.#failures.get(clientIp) ?? []).filter((at) => now - at < this.config.failureWindow);
  }

  /** Whether `user` may send as `sender` (MAIL FROM); the null sender (bounces, auto-replies) always may. */
  senderAllowed(user: string, sender: Address): boolean {
    if (this.config.senders === "any" || sender.address === "") return true;
    const address = `${sender.local}@${sender.domain}`.toLowerCase();
    const senders = this.users.get(user)?.senders ?? [];
    return address === user || senders.includes(address) || senders.includes(`@${sender.domain}`);
  }
}

/**
 * Why a submission client may not start this transaction: not authenticated (AUTH needs TLS
 * first), or a sender that is not the user's. Null when it may; a malformed address is left to the
 * session's own syntax check.
 */
export function submissionRefusal(
  auth: SubmissionAuth | null,
  connection: ConnectionContext,
  mailFrom: string,
): RefusingDecision | null {
  const user = connection.authUser;
  if (!auth || !user) {
    const text = connection.tls ? "Authentication required" : "Must issue a STARTTLS command first";
    return coreReject({ code: 530, enhanced: "5.7.0", text }, undefined, "submission");
  }
  const sender = parseEnvelopeAddress(mailFrom, {}, { nullAllowed: true });
  if (isAddressProblem(sender) || auth.senderAllowed(user, sender)) return null;
  return coreReject(
    { code: 553, enhanced: "5.7.1", text: "Sender address not owned by the authenticated user" },
    `${user} may not send as ${sender.address}`,
    "submission",
  );
}
