/**
 * The public API: everything a plugin needs, for built-in plugins and outside authors alike
 * (`import { definePlugin, verdict, z } from "portcullis"`). Built-in plugins import nothing else
 * from the core, so what they do, an outside plugin can do. Stable: the plugin contract (the first
 * block). Toolkit: the helpers below it, kept compatible within a minor version.
 */
export { z } from "zod";
// Actions: what a policy maps a verdict to. A plugin with actions of its own (rate-limit's per-limit
// `action:`) parses them with ActionSchema and turns them into decisions with actionDecision.
export { type Action, ActionSchema, actionDecision } from "./contract/actions.js";
// The plugin contract: definePlugin, hooks and their contexts, facts, verdicts, decisions.
export type {
  Address,
  Clock,
  ConnectionContext,
  Facts,
  FindingSchemas,
  Hook,
  HookContext,
  HookKind,
  HookResult,
  Hooks,
  Message,
  Phase,
  PluginCatalogue,
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
// Routes: a route target as written (`smtp://host:port`, `maildir:PATH`, `mx`, `discard`).
export { parseRouteTarget, type RouteTarget } from "./delivery/target.js";
// DNS: the shared resolver hooks get as ctx.dns, and helpers that turn an answer or an error into
// an outcome a pure judge function can take (found / none / error), so no hook handles errors twice.
export type { DnsOutcome } from "./dns/lookup.js";
export { hostName, sameIp, settle } from "./dns/lookup.js";
export type { DnsResolver, MxRecord } from "./dns/resolver.js";
export { isNegativeAnswer, reverseIpLabels } from "./dns/resolver.js";
export { entryProblem, type ListKind } from "./policy/lists.js";
// Shared state (ctx.state): counters, buckets, slots and greylisting on memory or Redis, the
// key helpers that group clients the same way everywhere, and the policy's answer to an outage.
// Taken from the modules that define them, not from the store factory, so that importing the API
// does not load a Redis client.
export { clientNet } from "./state/keys.js";
export { storeFailure } from "./state/outage.js";
export type {
  BucketRequest,
  BucketResult,
  GreylistParams,
  GreylistResult,
  GreylistStatus,
  SlotResult,
  StateStore,
} from "./state/types.js";
export { StoreUnavailableError } from "./state/types.js";
// Addresses and networks: IDN/punycode domains, CIDR lists, list entries as policies write them.
export { asciiDomain } from "./toolkit/address.js";
// An ARC-Seal's tag list checked as RFC 6376 §3.2 defines tag lists, which mailauth does not.
export { arcSealProblem } from "./toolkit/arc-seal.js";
// Text a client controlled, made safe for a header field or a reply line we write.
export { oneLine } from "./toolkit/client-text.js";
// Sender authentication through mailauth, loaded on the first call with the DKIM key cache in front of it.
export type {
  ARCResult,
  DKIMVerifyResult,
  DkimSigner,
  DkimSignerOptions,
  DMARCResult,
  DNSResolver as MailauthResolver,
  SPFResult,
} from "./toolkit/mailauth.js";
export {
  arc,
  createDkimSigner,
  createSeal,
  dkimSign,
  dkimVerify,
  dmarc,
  sealMessage,
  spf,
} from "./toolkit/mailauth.js";
// The message parsed once, on the first hook that asks: decoded headers, addresses, bodies,
// attachments (content size-capped) and URLs.
export {
  ATTACHMENT_CONTENT_LIMIT,
  HELD_CONTENT_LIMIT,
  type MailAddress,
  type MessageAttachment,
  type ParsedMessage,
  parseMessage,
} from "./toolkit/mime.js";
export { NetworkList, normalizeIp, parseCidr } from "./toolkit/netaddr.js";
// SPF's check_host() (RFC 7208), ours: mailauth's deviates where its seam cannot be fixed.
export { checkSpf, type SpfCheckResult, type SpfQuery, type SpfResultCode } from "./toolkit/spf.js";
// Units as policies write them ("5m", "25MB"): parse functions and zod schemas for options.
export { Duration, parseDuration, parseSize, Size } from "./toolkit/units.js";
