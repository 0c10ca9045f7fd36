/**
 * Hot reload: on SIGHUP or when the policy file (or a list or plugin file it names) changes, the policy is
 * loaded and validated in full, then handed to `apply` (the gateway's reload, which sets up the
 * plugins). Anything that fails — YAML, schema, a list file, a plugin's setup — leaves the running
 * policy in place and logs every problem. Connections in flight keep the runtime they started with
 * (core/smtp/gateway.ts), so a reload never changes the rules under a transaction.
 *
 * Reloads run one at a time, in order, so the last version written is the one that ends up running.
 * A plugin file that changed is imported anew (core/policy/plugin-modules.ts), and the log line
 * names the plugins whose code changed.
 */
import { type FSWatcher, watch } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname, resolve } from "node:path";
import type { Logger } from "pino";
import { type LoadedPolicy, PolicyError, policyHash } from "./load.js";

export interface ReloaderOptions {
  readonly file: string;
  /** Reads and validates the policy file (the application's loader, which knows its plugins). */
  readonly load: (file: string) => Promise<LoadedPolicy>;
  readonly log: Logger;
  /**
   * Switches to a validated policy; a rejection refuses it (the old one stays). What it resolves
   * with goes into the reload's log line; keys in `restartNeeded` make that line a warning.
   */
  readonly apply: (policy: LoadedPolicy) => Promise<AppliedChanges>;
  /** Watch the files for changes (default true); without, only `reload()` reloads. */
  readonly watch?: boolean;
  /** Quiet time after a change before reloading, so an editor's several writes make one reload. */
  readonly settleMs?: number;
  /** Told when the new policy did not even load (a refusal by `apply` is `apply`'s to report). */
  readonly onLoadRefused?: () => void;
}

/** What a reload changed, as the applier reports it: one field per kind of change. */
export interface AppliedChanges {
  readonly restartNeeded?: readonly string[];
  readonly [change: string]: unknown;
}

/**
 * One edit often fires both the file watcher and the operator's SIGHUP: content that was refused
 * this recently is not tried (nor logged) again. After that, the same content is tried again, so a
 * refusal caused by something outside the file (a plugin's server, a port in use) can be retried.
 */
const REPEAT_REFUSAL_MS = 5_000;

export type ReloadResult =
  | { readonly ok: true; readonly policy: LoadedPolicy }
  | { readonly ok: false; readonly problems: string[] };

/**
 * The files a policy reads besides itself: every `{ file: PATH }` in it (list files), anchored at its
 * folder, and the plugin files it names by path.
 */
export function policyFiles(policy: LoadedPolicy): string[] {
  const files = new Set<string>([policy.file]);
  const visit = (value: unknown) => {
    if (Array.isArray(value)) {
      for (const item of value) visit(item);
    } else if (value !== null && typeof value === "object") {
      const record = value as Record<string, unknown>;
      if (typeof record.file === "string" && record.file !== "") files.add(resolve(policy.dir, record.file));
      for (const child of Object.values(record)) visit(child);
    }
  };
  visit(policy.config.rules);
  visit(policy.config.relay.recipients);
  for (const entry of policy.pipeline) {
    visit(entry.options);
    if (entry.file) files.add(entry.file);
  }
  return [...files];
}

/** The `plugin:` names of `next` whose module is not one `previous` ran: plugin files that changed. */
export function reloadedPlugins(previous: LoadedPolicy | undefined, next: LoadedPolicy): string[] {
  const before = new Set(previous?.pipeline.map((entry) => entry.module));
  const changed = next.pipeline.filter(
    (entry) =>
      entry.file !== undefined &&
      !before.has(entry.module) &&
      previous?.pipeline.some((old) => old.file === entry.file),
  );
  return [...new Set(changed.map((entry) => entry.name))];
}

export class PolicyReloader {
  readonly #options: ReloaderOptions;
  /** The reload in progress, if any: reloads run one after another, so the last one wins. */
  #chain: Promise<void> = Promise.resolve();
  #watchers: FSWatcher[] = [];
  #watched = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  /** The policy file content (sha256) that was refused last, when, and why. */
  #refused: { hash: string; at: number; problems: string[] } | undefined;
  /** The policy last applied, to tell which plugin files changed since. */
  #current: LoadedPolicy | undefined;

  constructor(options: ReloaderOptions, current?: LoadedPolicy) {
    this.#options = options;
    this.#current = current;
    if (options.watch !== false) this.#watch(current ? policyFiles(current) : [resolve(options.file)]);
  }

  /** Reloads after any reload in progress; resolves with this reload's result. */
  reload(reason: string): Promise<ReloadResult> {
    const result = this.#chain.then(() => this.#reload(reason));
    this.#chain = result.then(() => undefined);
    return result;
  }

  async #reload(reason: string): Promise<ReloadResult> {
    const { file, log, apply } = this.#options;
    const hash = await readFile(file).then(policyHash, () => "unreadable");
    const refused = this.#refused;
    if (refused?.hash === hash && Date.now() - refused.at < REPEAT_REFUSAL_MS) {
      log.debug({ event: "reload", reason, policy: file }, "policy reload skipped: this content was just refused");
      return { ok: false, problems: refused.problems };
    }
    let policy: LoadedPolicy | undefined;
    let changes: AppliedChanges;
    try {
      policy = await this.#options.load(file);
      changes = await apply(policy);
    } catch (error) {
      if (policy === undefined) this.#options.onLoadRefused?.();
      const problems =
        error instanceof PolicyError
          ? error.message.split("\n")
          : [error instanceof Error ? error.message : String(error)];
      log.error(
        { event: "reload", reason, policy: file, problems },
        "policy reload refused; the previous policy stays",
      );
      this.#refused = { hash, at: Date.now(), problems };
      return { ok: false, problems };
    }
    this.#refused = undefined;
    const plugins = reloadedPlugins(this.#current, policy);
    this.#current = policy;
    const line = { event: "reload", reason, policy: policy.file, reloadedPlugins: plugins, ...changes };
    const restart = changes.restartNeeded ?? [];
    const code = plugins.length === 0 ? "" : `; new plugin code: ${plugins.join(", ")}`;
    if (restart.length > 0) log.warn(line, `policy reload applied${code}; restart needed for ${restart.join(", ")}`);
    else log.info(line, `policy reload applied${code}`);
    if (this.#options.watch !== false && !this.#closed) this.#watch(policyFiles(policy));
    return { ok: true, policy };
  }

  /** Watches the folders of `files` (editors replace files by renaming, which a file watch would miss). */
  #watch(files: string[]): void {
    const wanted = new Set(files);
    if ([...wanted].every((f) => this.#watched.has(f)) && wanted.size === this.#watched.size) return;
    for (const watcher of this.#watchers) watcher.close();
    this.#watched = wanted;
    const folders = new Map<string, Set<string>>();
    for (const file of wanted) {
      const names = folders.get(dirname(file)) ?? new Set<string>();
      names.add(basename(file));
      folders.set(dirname(file), names);
    }
    this.#watchers = [...folders].map(([folder, names]) => {
      const watcher = watch(folder, { persistent: false }, (_event, name) => {
        if (name !== null && names.has(name.toString())) this.#changed();
      });
      watcher.on("error", (error) =>
        this.#options.log.warn({ err: error.message, folder }, "cannot watch policy folder"),
      );
      return watcher;
    });
  }

  #changed(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (!this.#closed) void this.reload("file change");
    }, this.#options.settleMs ?? 200);
  }

  /** Stops watching; a reload in progress finishes. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const watcher of this.#watchers) watcher.close();
    this.#watchers = [];
  }
}
