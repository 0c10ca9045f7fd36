/**
 * The test kit: runs one plugin, or a whole policy, against a simulated transaction without
 * sockets. It drives the same `Session` engine as the SMTP listener, so a test here exercises the
 * real phase order, decisions, relay access and reply rendering.
 *
 * @example
 * import { runPlugin } from "portcullis/testkit";
 * const result = await runPlugin(myPlugin, { domain: "spam.test" }, { ip: "192.0.2.1", from: "a@spam.test", to: ["b@example.test"] });
 * assert.equal(result.reply?.code, 550);
 */
import { randomBytes } from "node:crypto";
import { type Logger, pino } from "pino";
import { ActionSchema } from "../contract/actions.js";
import {
  type Clock,
  type ConnectionContext,
  type Phase,
  type PluginCatalogue,
  type PluginDefinition,
  systemClock,
  type TraceEntry,
} from "../contract/api.js";
import type { DecidedBy, RefusingDecision, Reply } from "../contract/decision.js";
import { createResolver, type DnsResolver } from "../dns/resolver.js";
import { type LoadedPolicy, loadPolicy, type PipelineEntry } from "../policy/load.js";
import { PolicySchema } from "../policy/schema.js";
import { MessageWriter } from "../smtp/message.js";
import { MemoryStore, type StateStore } from "../state/create.js";
import { normalizeIp } from "../toolkit/netaddr.js";
import { buildRuntime, type Runtime } from "./runtime.js";
import { connectionContext, Session } from "./session.js";

export interface SimulatedTransaction {
  readonly ip: string;
  readonly helo?: string;
  readonly from: string;
  readonly to: readonly string[];
  /** The whole message (headers and body); a small default message when absent. */
  readonly message?: string | Buffer;
  readonly authUser?: string;
  readonly role?: ConnectionContext["role"];
}

export type SimulatedOutcome = "accepted" | "rejected" | "deferred" | "disconnected";

export interface SimulationResult {
  readonly outcome: SimulatedOutcome;
  /** The phase whose decision ended the transaction, or "queue" when it was accepted. */
  readonly phase: Phase;
  readonly reply: Reply | null;
  readonly decidedBy: DecidedBy | null;
  readonly recipients: ReadonlyArray<{ readonly address: string; readonly decision: RefusingDecision | null }>;
  readonly trace: readonly TraceEntry[];
  /** Connection and transaction findings, merged. */
  readonly facts: Readonly<Record<string, unknown>>;
  readonly score: number;
  /** Route target → recipients, as delivery would split them (nothing is delivered). */
  readonly routes: Readonly<Record<string, string[]>>;
  readonly tags: readonly string[];
  readonly addedHeaders: readonly string[];
}

export interface KitOptions {
  /** DNS servers ("host:port") for the shared resolver, e.g. the test DNS server's address. */
  readonly dnsServers?: readonly string[];
  readonly dns?: DnsResolver;
  readonly clock?: Clock;
  readonly state?: StateStore;
  readonly log?: Logger;
  /**
   * The plugins a policy file may name without a path. The published test kit (`portcullis/testkit`)
   * passes the built-in ones; without, only plugins named by path load.
   */
  readonly catalogue?: PluginCatalogue;
}

const silent = pino({ level: "silent" });

/** Builds the runtime of a policy (a file path or a loaded policy) for simulations. */
export async function policyRuntime(policy: string | LoadedPolicy, options: KitOptions = {}): Promise<Runtime> {
  const loaded = typeof policy === "string" ? await loadPolicy(policy, options.catalogue ?? {}) : policy;
  const clock = options.clock ?? systemClock;
  return buildRuntime(loaded, {
    log: options.log ?? silent,
    clock,
    state: options.state ?? new MemoryStore({ clock }),
    dns:
      options.dns ??
      (options.dnsServers ? createResolver({ servers: [...options.dnsServers], timeoutMs: 2000 }) : undefined),
  });
}

function defaultMessage(input: SimulatedTransaction): string {
  return [
    `From: <${input.from || "mailer-daemon@invalid"}>`,
    `To: ${input.to.map((to) => `<${to}>`).join(", ")}`,
    "Subject: Portcullis test kit",
    `Message-ID: <${randomBytes(8).toString("hex")}@testkit.invalid>`,
    "",
    "Test body.",
    "",
  ].join("\r\n");
}

async function storedMessage(content: string | Buffer, spool: string) {
  const writer = new MessageWriter(spool, "testkit", {
    maxSize: Number.MAX_SAFE_INTEGER,
    spillThreshold: Number.MAX_SAFE_INTEGER,
    maxHeaderSize: 1024 * 1024,
  });
  await new Promise<void>((resolve, reject) =>
    writer.end(typeof content === "string" ? Buffer.from(content) : content, (err?: Error | null) =>
      err ? reject(err) : resolve(),
    ),
  );
  return writer.finish();
}

function flatFacts(connection: ConnectionContext, transactionFacts: object | null): Record<string, unknown> {
  return { ...connection.facts, ...(transactionFacts ?? {}) };
}

/** Runs a transaction through every phase of the runtime's policy; nothing is delivered. */
export async function simulate(runtime: Runtime, input: SimulatedTransaction): Promise<SimulationResult> {
  const ip = normalizeIp(input.ip);
  const connection = connectionContext(runtime, {
    id: `sim-${randomBytes(4).toString("hex")}`,
    ip,
    port: 0,
    local: { ip: "127.0.0.1", port: 25 },
    role: input.role ?? "mx",
    openedAt: runtime.services.clock.now(),
    authUser: input.authUser ?? null,
  });
  const session = new Session(runtime, connection, runtime.services.log, runtime.services.clock);
  const trace: TraceEntry[] = [];
  const ended = (
    phase: SimulationResult["phase"],
    decision: RefusingDecision | null,
    recipients: SimulationResult["recipients"] = [],
  ): SimulationResult => {
    const tx = session.lastTransaction;
    const outcome: SimulatedOutcome = !decision
      ? "accepted"
      : decision.kind === "disconnect"
        ? "disconnected"
        : decision.kind === "defer"
          ? "deferred"
          : "rejected";
    const routes: Record<string, string[]> = {};
    if (!decision && tx) {
      for (const recipient of tx.recipients) {
        const target =
          tx.route ??
          runtime.router.targetFor({
            recipientDomain: recipient.domain,
            senderDomain: tx.sender.domain,
            clientIp: ip,
          });
        routes[target] = [...(routes[target] ?? []), recipient.address];
      }
    }
    return {
      outcome,
      phase,
      reply: decision?.reply ?? null,
      decidedBy: decision?.by ?? null,
      recipients,
      trace: [...trace, ...(tx?.trace ?? [])],
      facts: flatFacts(connection, tx ? Object.assign({}, tx.facts) : null),
      score: tx?.score ?? connection.score,
      routes,
      tags: tx ? [...tx.tags] : [],
      addedHeaders: tx ? [...tx.headers.prepend] : [],
    };
  };

  const atConnect = await session.connect(trace);
  if (atConnect) return ended("connect", atConnect);
  if (input.helo !== undefined) await session.helo(input.helo.toLowerCase(), trace);
  const atMail = await session.mail(input.from, {});
  if (atMail) return ended(session.refusedIn ?? "mail", atMail);
  const recipients: Array<{ address: string; decision: RefusingDecision | null }> = [];
  for (const to of input.to) {
    const decision = await session.rcpt(to, {});
    recipients.push({ address: to, decision });
    if (decision?.kind === "disconnect") return ended("rcpt", decision, recipients);
  }
  const firstRefusal = recipients.find((r) => r.decision)?.decision ?? null;
  if (session.transaction?.recipients.length === 0) return ended("rcpt", firstRefusal, recipients);
  const message = await storedMessage(input.message ?? defaultMessage(input), runtime.config.delivery.spool);
  const atData = await session.data(message);
  await message.dispose();
  return ended(atData ? "data" : "queue", atData, recipients);
}

/** Loads a policy file and simulates one transaction through it. */
export async function runPolicy(
  policy: string | LoadedPolicy,
  input: SimulatedTransaction,
  options: KitOptions = {},
): Promise<SimulationResult> {
  return simulate(await policyRuntime(policy, options), input);
}

export interface PluginRunSettings extends KitOptions {
  /** The entry's `on:` map, in policy form (`{ fail: "reject" }`, `{ none: { defer: "450 4.7.1 …" } }`). */
  readonly on?: Readonly<Record<string, unknown>>;
  readonly timeoutMs?: number;
}

/**
 * Runs one plugin as the only entry of a policy that relays for everyone (so the plugin alone
 * decides). Options are validated by the plugin's schema, as a policy file would be.
 */
export async function runPlugin(
  definition: PluginDefinition,
  options: unknown,
  input: SimulatedTransaction,
  settings: PluginRunSettings = {},
): Promise<SimulationResult> {
  const config = PolicySchema.parse({
    version: 1,
    server: { hostname: "gateway.test" },
    relay: { networks: ["0.0.0.0/0", "::/0"] },
    routes: [{ to: "discard" }],
  });
  const on = Object.fromEntries(
    Object.entries(settings.on ?? {}).map(([name, action]) => [name, ActionSchema.parse(action)]),
  );
  const entry: PipelineEntry = {
    name: definition.name,
    definition,
    options: definition.options.parse(options ?? {}),
    on,
    timeoutMs: settings.timeoutMs ?? config.hooks.timeout,
    onError: config.hooks.onError,
    index: 0,
  };
  const policy: LoadedPolicy = {
    file: "<testkit>",
    dir: process.cwd(),
    config,
    pipeline: [entry],
    catalogue: settings.catalogue ?? {},
    hash: "",
  };
  return runPolicy(policy, input, settings);
}
