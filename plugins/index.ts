/**
 * The built-in plugins, by the name a policy gives in `plugin:`. Each is imported only when a policy
 * uses it, so an unused plugin costs nothing at start-up and cannot break it.
 *
 * Adding one is one line, its key being the folder name:
 * @example
 * fcrdns: () => import("./fcrdns/index.js").then((module) => module.default),
 */
import type { PluginCatalogue } from "../core/index.js";

export const builtinPlugins: PluginCatalogue = Object.freeze({
  arc: () => import("./arc/index.js").then((module) => module.default),
  "auth-results": () => import("./auth-results/index.js").then((module) => module.default),
  clamav: () => import("./clamav/index.js").then((module) => module.default),
  concurrency: () => import("./concurrency/index.js").then((module) => module.default),
  dkim: () => import("./dkim/index.js").then((module) => module.default),
  "dkim-sign": () => import("./dkim-sign/index.js").then((module) => module.default),
  dmarc: () => import("./dmarc/index.js").then((module) => module.default),
  dnsbl: () => import("./dnsbl/index.js").then((module) => module.default),
  "early-talker": () => import("./early-talker/index.js").then((module) => module.default),
  fcrdns: () => import("./fcrdns/index.js").then((module) => module.default),
  greylist: () => import("./greylist/index.js").then((module) => module.default),
  helo: () => import("./helo/index.js").then((module) => module.default),
  "rate-limit": () => import("./rate-limit/index.js").then((module) => module.default),
  rspamd: () => import("./rspamd/index.js").then((module) => module.default),
  spamassassin: () => import("./spamassassin/index.js").then((module) => module.default),
  spf: () => import("./spf/index.js").then((module) => module.default),
});

/** Sorted, for messages and `portcullis` listings. */
export function builtinPluginNames(): string[] {
  return Object.keys(builtinPlugins).sort();
}
