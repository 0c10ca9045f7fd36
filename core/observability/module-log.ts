/**
 * Log levels per module, without pino: the runtime of a policy (core/engine/runtime.ts) needs only
 * these, so `check`, which sets plugins up but never runs them, does not load the logging library.
 * log.ts builds the real logger.
 */
import type { Logger } from "pino";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

/**
 * The modules whose level `observability.log.levels` can set apart from the global one.
 * `smtp`: listener and session lines (connect, auth, transaction summary, close); `queue`: the
 * spool and the delivery worker; `state`: the shared state store (Redis outages); `plugin:NAME`:
 * the logger a pipeline entry gets in its setup (NAME as written in the entry's `name:`/`plugin:`).
 */
export type LogModule = "smtp" | "queue" | "state" | `plugin:${string}`;

/**
 * A child of `parent` for one module: at that module's level when `levels` names one (below or above
 * the parent's: pino children filter on their own level), else at the parent's.
 */
export function moduleLogger(
  parent: Logger,
  module: LogModule,
  levels: Readonly<Record<string, LogLevel>> | undefined,
  bindings: Record<string, unknown> = {},
): Logger {
  const level = levels?.[module];
  return level ? parent.child(bindings, { level }) : parent.child(bindings);
}

/**
 * A logger that writes nothing, as pino's at level "silent" would (every method there, children
 * included), for a command that sets plugins up only to look at them (`check`).
 */
export function discardingLogger(): Logger {
  const nothing = () => {};
  const logger = {
    level: "silent",
    fatal: nothing,
    error: nothing,
    warn: nothing,
    info: nothing,
    debug: nothing,
    trace: nothing,
    silent: nothing,
    child: () => logger,
    bindings: () => ({}),
    setBindings: nothing,
    isLevelEnabled: () => false,
    flush: (done?: (error?: Error) => void) => done?.(),
  };
  return logger as unknown as Logger;
}
