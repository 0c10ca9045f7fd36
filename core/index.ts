/** The public API for plugin authors: `import { definePlugin, verdict, z } from "portcullis"`. */
export { z } from "zod";
export type {
  Address,
  Clock,
  ConnectionContext,
  Facts,
  Hook,
  HookContext,
  HookResult,
  Hooks,
  Message,
  Phase,
  PluginDefinition,
  PluginHooks,
  Pregreet,
  PregreetContext,
  Services,
  TraceEntry,
  TransactionContext,
  Verdict,
  VerdictDefault,
} from "./contract/api.js";
export { definePlugin, PHASES, verdict } from "./contract/api.js";
export type { DecidedBy, Decision, Reply } from "./contract/decision.js";
export { parseReply } from "./contract/decision.js";
export type { DnsResolver, MxRecord } from "./dns/resolver.js";
export type { StateStore } from "./state/create.js";
/** Text a client controlled, made safe for a header field or a reply line we write. */
export { oneLine } from "./toolkit/client-text.js";
