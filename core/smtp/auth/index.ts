/**
 * AUTH on submission listeners: credentials checked against the users file, failed attempts
 * counted per client IP and per user name in the shared state store, hashes run in a bounded
 * pool, and the MAIL FROM an authenticated user may use.
 *
 * smtp-server runs the SASL exchange (PLAIN, LOGIN); `GatewayConnection` keeps AUTH hidden until
 * TLS is up; this module only answers "who is this" and "may they send as that".
 */
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { isIPv6 } from "node:net";
import { setTimeout as delay } from "node:timers/promises";
import type { Address, ConnectionContext } from "../../contract/api.js";
import { coreReject, type RefusingDecision, type Reply } from "../../contract/decision.js";
import type { PolicyConfig } from "../../policy/schema.js";
import { clientNet } from "../../state/keys.js";
import type { StateStore } from "../../state/types.js";
import { isAddressProblem, parseEnvelopeAddress } from "../../toolkit/address.js";
import { HashPool } from "./hash-pool.js";
import { hashPassword, parseUsersFile, type UserEntry, verifyPassword } from "./users.js";

export { hashPassword, parseUsersFile, verifyPassword } from "./users.js";

type AuthConfig = NonNullable<PolicyConfig["server"]["auth"]>;

/** Why an attempt was refused without its password being checked (logs and metrics; never told to the client). */
export type AuthRefusal = "locked-ip" | "locked-user" | "busy" | "store-unavailable";

/** The outcome of one AUTH attempt: the user name, or the reply that refuses it and why. */
export type AuthResult =
  | { readonly user: string }
  | { readonly reply: Reply; readonly refused: AuthRefusal | "invalid"; readonly error?: string };

const INVALID: Reply = { code: 535, enhanced: "5.7.8", text: "Authentication credentials invalid" };
const REFUSALS: Record<AuthRefusal, Reply> = {
  "locked-ip": { code: 454, enhanced: "4.7.0", text: "Too many failed authentication attempts, try again later" },
  "locked-user": { code: 454, enhanced: "4.7.0", text: "Too many failed authentication attempts, try again later" },
  busy: { code: 454, enhanced: "4.7.0", text: "Too many authentication attempts at once, try again later" },
  "store-unavailable": { code: 454, enhanced: "4.7.0", text: "Authentication temporarily unavailable" },
};

export interface SubmissionAuthDeps {
  /** Where failures are counted: the gateway's state store, so gateways sharing it share the limits. */
  readonly store: StateStore;
  /** A hash to check unknown users against, so that "no such user" takes as long as a wrong password. */
  readonly decoy: string;
  /** Checks a password against a users-file hash; tests pass one they can hold. */
  readonly verify?: (password: string, hash: string) => Promise<boolean>;
}

/**
 * What failures are counted under for a client: its address, or its /64 for IPv6, where one host
 * has a whole /64 to rotate through.
 */
function clientKey(ip: string): string {
  return isIPv6(ip) ? clientNet(ip) : ip;
}

export class SubmissionAuth {
  readonly #store: StateStore;
  readonly #decoy: string;
  readonly #verify: (password: string, hash: string) => Promise<boolean>;
  readonly #hashes: HashPool;
  /** Attempts under check per client key, on this gateway. */
  readonly #inFlight = new Map<string, number>();
  /** Slot holders must be unique across every gateway sharing the store. */
  readonly #instance = randomUUID();
  #attempts = 0;
  /** Attempts whose password was checked and wrong, since start (for logs and metrics). */
  failed = 0;
  /** Attempts refused without a password check, since start, by why. */
  readonly refused: Record<AuthRefusal, number> = {
    "locked-ip": 0,
    "locked-user": 0,
    busy: 0,
    "store-unavailable": 0,
  };

  constructor(
    private readonly users: ReadonlyMap<string, UserEntry>,
    private readonly config: AuthConfig,
    deps: SubmissionAuthDeps,
  ) {
    this.#store = deps.store;
    this.#decoy = deps.decoy;
    this.#verify = deps.verify ?? verifyPassword;
    this.#hashes = new HashPool(config.hashConcurrency, config.hashQueue);
  }

  static async load(file: string, config: AuthConfig, store: StateStore): Promise<SubmissionAuth> {
    const users = parseUsersFile(await readFile(file, "utf8"), file);
    return new SubmissionAuth(users, config, { store, decoy: await hashPassword("decoy") });
  }

  async authenticate(clientIp: string, username: string, password: string): Promise<AuthResult> {
    const result = await this.#attempt(clientKey(clientIp), username, password);
    if ("reply" in result) await delay(this.config.refusalDelay);
    return result;
  }

  async #attempt(client: string, username: string, password: string): Promise<AuthResult> {
    const inFlight = this.#inFlight.get(client) ?? 0;
    if (inFlight >= this.config.maxInFlightPerIp) return this.#refuse("busy");
    this.#inFlight.set(client, inFlight + 1);
    try {
      return await this.#check(client, username.toLowerCase(), password);
    } finally {
      const left = (this.#inFlight.get(client) ?? 1) - 1;
      if (left > 0) this.#inFlight.set(client, left);
      else this.#inFlight.delete(client);
    }
  }

  /**
   * Every attempt takes a place in its client's and its user's failure slots before its password
   * is checked, leased for failureWindow. Each place is taken atomically in the store, so however
   * many attempts run in parallel, at most maxFailures of them reach the hash; once they are all
   * held (by failures, or by attempts still under check) the rest are refused unchecked. A failure
   * keeps its places until the lease ends; a success, or an attempt refused before its check,
   * gives them back.
   */
  async #check(client: string, user: string, password: string): Promise<AuthResult> {
    const holder = `${this.#instance}:${++this.#attempts}`;
    const slots = [
      { key: `auth-failures:ip:${client}`, max: this.config.maxFailures, refusal: "locked-ip" },
      { key: `auth-failures:user:${user}`, max: this.config.maxFailuresPerUser, refusal: "locked-user" },
    ] as const;
    const taken = await Promise.allSettled(
      slots.map(({ key, max }) => this.#store.acquireSlot(key, holder, max, this.config.failureWindow)),
    );
    // A slot whose acquire failed in transit may still have been taken, so it is given back too.
    const held = slots.filter((_, i) => taken[i].status === "rejected" || taken[i].value.acquired);
    const giveBack = () =>
      Promise.allSettled(held.map(({ key }) => this.#store.releaseSlot(key, holder))).then(() => undefined);
    const unreachable = taken.find((outcome) => outcome.status === "rejected");
    // An attempt that cannot be counted is not checked: a store outage must not open the door to guessing.
    if (unreachable) {
      await giveBack();
      return this.#refuse("store-unavailable", unreachable.reason);
    }
    const full = slots.find((slot) => !held.includes(slot));
    if (full) {
      await giveBack();
      return this.#refuse(full.refusal);
    }
    const entry = this.users.get(user);
    // Unknown users are checked against the decoy through the same pool, so they take as long.
    const check = this.#hashes.run(() => this.#verify(password, entry?.hash ?? this.#decoy));
    if (!check) {
      await giveBack();
      return this.#refuse("busy");
    }
    const ok = await check;
    if (!entry || !ok) {
      this.failed++;
      return { reply: INVALID, refused: "invalid" };
    }
    // If the store fails here, the places stay until their lease ends: a success counted as a
    // failure for a while, never the other way round.
    await giveBack();
    return { user };
  }

  #refuse(refusal: AuthRefusal, error?: unknown): AuthResult {
    this.refused[refusal]++;
    const reply = REFUSALS[refusal];
    if (error === undefined) return { reply, refused: refusal };
    return { reply, refused: refusal, error: error instanceof Error ? error.message : String(error) };
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
