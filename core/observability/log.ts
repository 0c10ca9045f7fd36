import { type Logger, pino } from "pino";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

/** How often buffered log lines are written at the latest, so a quiet gateway's log is still current. */
const FLUSH_INTERVAL_MS = 500;

/**
 * JSON lines on stdout, one per event; message bodies are never logged. Lines are buffered up to
 * 4 KiB (one write per several lines instead of one per line: measured ~8% of the relay's CPU) and
 * flushed at least every 500 ms and when the process exits.
 */
export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  const options = { level, base: { service: "portcullis" }, timestamp: pino.stdTimeFunctions.isoTime };
  if (destination) return pino(options, destination);
  const stdout = pino.destination({ fd: 1, sync: false, minLength: 4096 });
  setInterval(() => stdout.flush(), FLUSH_INTERVAL_MS).unref();
  return pino(options, stdout);
}

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
