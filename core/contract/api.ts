/**
 * The plugin author's API: phases, contexts, hooks, findings and `definePlugin`.
 *
 * A plugin *detects* and the policy *enforces*: a hook records typed findings on `ctx.facts` and
 * answers with a named verdict (`verdict("fail")`); the policy's `on:` map (or the plugin's declared
 * default) turns the verdict into an action. A hook may also return a `Decision` directly when the
 * answer is not a policy matter.
 */
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import type { z } from "zod";
import type { DnsResolver } from "../dns/resolver.js";
import type { StateStore } from "../state/types.js";
import type { Decision } from "./decision.js";

/**
 * Every phase, in protocol order: the one list of phases. The rule compiler, `check`, replay and the
 * policy test schema derive their phases and their order from it, and `Phase` is its element type,
 * so a phase added here breaks the build wherever a `Record<Phase, …>` table must say what it means
 * (what its hooks see, `PhaseArgs` below; the rules that run in it; the hooks a plugin may have).
 */
export const PHASES = ["connect", "helo", "mail", "rcpt", "data", "queue"] as const;

export type Phase = (typeof PHASES)[number];

/**
 * Findings, keyed by plugin. Each plugin adds its own key by declaration merging:
 *
 * @example
 * declare module "portcullis" {
 *   interface Facts { fcrdns: { result: "pass" | "fail"; names: string[] } }
 * }
 */
// biome-ignore lint/suspicious/noEmptyInterface: filled by declaration merging in each plugin
export interface Facts {}

export interface Address {
  /** As the client wrote it (domain in Unicode when the client used an IDN). */
  readonly address: string;
  readonly local: string;
  /** Lower-case ASCII (punycode) form; "" for the null sender. */
  readonly domain: string;
  /** MAIL/RCPT parameters, keys upper-cased (`SIZE`, `BODY`, `NOTIFY`…). */
  readonly args: Readonly<Record<string, string | boolean>>;
}

export interface TlsInfo {
  readonly protocol: string;
  readonly cipher: string;
}

export interface ConnectionContext {
  readonly id: string;
  readonly client: { readonly ip: string; readonly port: number; readonly family: 4 | 6 };
  readonly local: { readonly ip: string; readonly port: number };
  /** "mx" for MTA-to-MTA listeners, "submission" for MUA listeners (AUTH + TLS). */
  readonly role: "mx" | "submission";
  readonly openedAt: number;
  tls: TlsInfo | null;
  /** HELO/EHLO argument, lower-cased; null before HELO. */
  helo: string | null;
  authUser: string | null;
  /** The client's forward-confirmed DNS name, when a check established one (Received header). */
  verifiedName: string | null;
  /** The reverse-DNS check of the client (RFC 8601 `iprev`), when a check made one. */
  iprev: { readonly result: "pass" | "fail" | "temperror" | "permerror"; readonly name: string | null } | null;
  /** The client is in `relay.networks` or authenticated (follows `authUser`, so it holds after AUTH too). */
  readonly trusted: boolean;
  /** The client's wait for the banner, as the listener saw it; absent without a listener (test kit). */
  readonly pregreet?: Pregreet;
  /** Findings made at connection level; transaction facts inherit them. */
  readonly facts: Partial<Facts>;
  score: number;
}

/**
 * The wait before the banner (postscreen's pregreet test). The listener keeps it current until the
 * banner is sent, so a connect hook also sees a client that talked while earlier hooks ran.
 */
export interface Pregreet {
  /** How long the banner was held back: the longest any `pregreet` hook asked for, at least `server.greetingDelay`. */
  readonly delayMs: number;
  /** The client sent a command before the banner (held until the banner is out, then run as usual). */
  readonly talkedEarly: boolean;
}

export interface HeaderEdits {
  /** Header fields to prepend, each `Name: value` without the trailing CRLF. */
  readonly prepend: string[];
  /**
   * Incoming header fields for which a predicate is true are removed before delivery. `index` is the
   * field's position in `Message.headers`, so one occurrence of a repeated field can be removed
   * (the second `Received`, the last `DKIM-Signature`) and not every field with its name and value.
   */
  readonly remove: Array<(name: string, value: string, index: number) => boolean>;
}

export interface TransactionContext {
  readonly id: string;
  readonly connection: ConnectionContext;
  readonly sender: Address;
  /** Recipients accepted so far (the one under test in the rcpt phase is `ctx.recipient`). */
  readonly recipients: Address[];
  /** Transaction findings; connection findings are visible through the prototype chain. */
  readonly facts: Partial<Facts>;
  score: number;
  readonly tags: Set<string>;
  readonly headers: HeaderEdits;
  /** A route chosen by a hook or a rule (a route target such as `smtp://host:port`); wins over `routes:`. */
  route: string | null;
  readonly trace: TraceEntry[];
}

/** The message as received, without the headers we add. */
export interface Message {
  readonly size: number;
  /** Header fields of the message as received, unfolded names, raw values. */
  readonly headers: ReadonlyArray<{ readonly name: string; readonly value: string }>;
  /** A fresh stream of the whole message, byte for byte as received. */
  stream(): Readable;
}

/** The kinds of hook a plugin may have: the phases, the wait before the banner, and the close. */
export type HookKind = Phase | "pregreet" | "close";

export interface TraceEntry {
  /** The pipeline entry that ran; for a rule's entry (`source: "rule"`), the rule's name. */
  readonly plugin: string;
  /** "rule" for a rule that matched (its `verdict` then describes its actions); absent for hooks. */
  readonly source?: "rule";
  /** The phase, or `pregreet` / `close` for the hooks around a connection. */
  readonly phase: HookKind;
  readonly verdict: string | null;
  readonly decision: Decision["kind"];
  readonly ms: number;
  readonly error?: string;
}

export interface Clock {
  now(): number;
}

/** The machine's clock; tests give a clock of their own. */
export const systemClock: Clock = { now: () => Date.now() };

/** Shared services handed to `setup` and to every hook. Plugins never create their own resolver. */
export interface Services {
  readonly dns: DnsResolver;
  readonly state: StateStore;
  readonly log: Logger;
  readonly clock: Clock;
  /** This gateway's hostname (`server.hostname`). */
  readonly hostname: string;
  /** Folder of the policy file; relative paths in plugin options resolve from here. */
  readonly policyDir: string;
}

interface PhaseArgs {
  connect: { connection: ConnectionContext };
  helo: { connection: ConnectionContext; helo: string };
  mail: { connection: ConnectionContext; transaction: TransactionContext };
  rcpt: { connection: ConnectionContext; transaction: TransactionContext; recipient: Address };
  data: { connection: ConnectionContext; transaction: TransactionContext; message: Message };
  queue: { connection: ConnectionContext; transaction: TransactionContext; message: Message };
}

export type HookContext<P extends Phase> = PhaseArgs[P] &
  Services & {
    readonly phase: P;
    /** Connection facts in connect/helo, transaction facts afterwards. */
    readonly facts: Partial<Facts>;
    /** Aborted when the hook's deadline passes; pass it on to anything that can be cancelled. */
    readonly signal: AbortSignal;
    /** Adds points to the score that rules compare (`when: { score: { gte: 10 } }`). */
    addScore(points: number, reason: string): void;
  };

/** A named finding; the policy's `on:` map decides what it leads to. */
export interface Verdict<V extends string = string> {
  readonly kind: "verdict";
  readonly name: V;
}

export type HookResult<V extends string = string> = Decision | Verdict<V> | undefined;

export type Hook<P extends Phase, V extends string = string> = (ctx: HookContext<P>) => Promise<HookResult<V>>;

export type Hooks<V extends string = string> = { [P in Phase]: Hook<P, V> };

/** What a `close` hook sees: the connection that ended and the shared services. */
export type CloseContext = Services & { readonly connection: ConnectionContext };

/**
 * What `setup` returns: any subset of the phases, `pregreet`, and `close`, which runs once when a
 * connection ends however it ended (QUIT, reset, timeout, refusal) to give back what its hooks took.
 */
export type PluginHooks<V extends string = string> = Partial<Hooks<V>> & {
  readonly close?: (ctx: CloseContext) => Promise<void>;
  /**
   * Before the banner, before any session exists: how many milliseconds this client's banner should
   * wait (the listener uses the longest answer). A client that talks during the wait is marked in
   * `ConnectionContext.pregreet` for the connect hooks to judge.
   */
  readonly pregreet?: (ctx: PregreetContext) => Promise<number>;
};

/** What a `pregreet` hook sees: the client, the shared services, and its deadline. */
export type PregreetContext = Services & {
  readonly client: Pick<ConnectionContext["client"], "ip" | "family">;
  readonly signal: AbortSignal;
};

/**
 * What a verdict leads to when the policy says nothing. `reply` is the reply text used by reject,
 * defer and disconnect for this verdict (a 5xx text is turned into its 4xx form for defer).
 */
export interface VerdictDefault {
  readonly action: "ignore" | "accept" | "reject" | "defer" | "disconnect";
  readonly reply?: string;
}

export interface PluginDefinition<S extends z.ZodType = z.ZodType, V extends string = string> {
  readonly name: string;
  /** zod schema of the plugin's options (the keys of its pipeline entry besides `plugin`, `on`…). */
  readonly options: S;
  /** The verdicts this plugin may return, with their defaults. Keys of `on:` are checked against these. */
  readonly verdicts?: Readonly<Record<V, VerdictDefault>>;
  /**
   * The findings this plugin writes on `ctx.facts`: each top-level key it writes (`dnsbl`) with the
   * zod schema of what it writes there. Declare the facts type as that schema's `z.output`, so the
   * two cannot drift. Rules naming a finding run from the first phase in which its plugin has a
   * hook; `portcullis check` rejects rule paths and values the schema rules out (`fcrdns.result:
   * passs`), `portcullis schema` offers them to editors, and the descriptions of the schema are
   * the plugin README's table of findings. A plugin without a declaration is taken to write any
   * finding under its own name.
   */
  readonly findings?: FindingSchemas;
  /** Hooks may only return the verdicts declared above (`NoInfer`: the declaration is the source of truth). */
  setup(options: z.output<S>, services: Services): PluginHooks<NoInfer<V>> | Promise<PluginHooks<NoInfer<V>>>;
}

/** Finding keys (top-level names on `ctx.facts`) and the schema of the value a plugin writes there. */
export type FindingSchemas = Readonly<Record<string, z.ZodType>>;

/**
 * The plugins a policy may name by a bare name in `plugin:` (a path names any other), each loaded
 * only when a policy uses it. The application hands its catalogue to the policy loader; the core
 * knows no plugin by name.
 */
export type PluginCatalogue = Readonly<Record<string, () => Promise<PluginDefinition>>>;

/**
 * Declares a plugin. The default export of a plugin module is what this returns.
 *
 * @example
 * export default definePlugin({
 *   name: "no-test-senders",
 *   options: z.strictObject({ domain: z.string() }),
 *   verdicts: { blocked: { action: "reject", reply: "550 5.7.1 Sender {sender} not accepted" } },
 *   setup: (options) => ({
 *     mail: async (ctx) => (ctx.transaction.sender.domain === options.domain ? verdict("blocked") : undefined),
 *   }),
 * });
 */
export function definePlugin<S extends z.ZodType, V extends string = never>(
  definition: PluginDefinition<S, V>,
): PluginDefinition<S, V> {
  return definition;
}

export function verdict<V extends string>(name: V): Verdict<V> {
  return { kind: "verdict", name };
}
