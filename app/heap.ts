/**
 * V8 heap sizing for `portcullis start`, set by the process itself so that it holds however the
 * gateway is started (systemd's `node bin/portcullis.js start`, npx, a container, a cluster worker).
 *
 * Why (measured with test/bench, (c): the full edge policy in queue mode, 20 concurrent sessions,
 * one message per connection): what is live after a full GC is ~35 MB, yet the peak RSS was
 * ~200 MB. The gateway allocates a few hundred KB per message; what belongs to a message still in
 * flight when the scavenger runs (every ~100 ms under that load) is promoted, ~30 KB of heap and
 * ~6 KB of Buffers per message, and under V8's default heap growth that garbage piles up in the old
 * generation to ~3× the live size (and its Buffers outside the heap with it) before a full GC frees
 * it. `--heap-growing-percent=50` lets the old generation grow to 1.5× what the last full GC left
 * instead: peak RSS 138–145 MB. The price is more full GCs (~14 instead of ~5 in a 5,500-message
 * run) and the marking that goes with them: (c)'s CPU per message, median over interleaved runs,
 * 3.14 ms with V8's defaults and 3.42 ms with this (+9 %; single runs vary by ±20 % on a shared
 * machine). 25 % or 33 % left ~133 MB for +14 % (~20 full GCs); `--optimize-for-size` ~113 MB
 * for +22 %. docs/operations.md has the numbers; an operator who wants more memory headroom
 * sets `--heap-growing-percent=33` on the node command line.
 *
 * And while it starts, the gateway holds V8's young generation at its initial size: start-up's
 * allocations (modules, the policy, its plugins, the listeners) grew it to 16 MiB, which an idle
 * gateway then kept, ~11 MB of RSS under the edge policy. From the moment it listens the young
 * generation grows under traffic as V8 grows it by default (factor 2). V8 reads the factor only
 * when it grows the young generation, so changing it at run time is safe; were a V8 to drop the
 * flag, node prints "unrecognized flag" and goes on.
 *
 * An operator who sets any heap flag on the node command line or in NODE_OPTIONS keeps exactly
 * that (no flag set, no hold); `node --heap-growing-percent=0 bin/portcullis.js start` runs with
 * V8's own heap growth.
 */
import { setFlagsFromString } from "node:v8";

/** The flags set when the operator set none of the heap flags. */
export const HEAP_FLAGS = ["--heap-growing-percent=50"] as const;

/** The young generation's growth factor while starting, and from the first listen on (V8's default). */
const YOUNG_GROWTH_STARTING = "--semi-space-growth-factor=1";
const YOUNG_GROWTH_SERVING = "--semi-space-growth-factor=2";

const OPERATOR_HEAP_FLAG =
  /(^|\s)--(no-)?(optimize[-_]for[-_]size|max[-_]semi[-_]space[-_]size|min[-_]semi[-_]space[-_]size|semi[-_]space[-_]growth[-_]factor|max[-_]old[-_]space[-_]size|heap[-_]growing[-_]percent)\b/;

/** The flags to set for a process started with these node arguments and NODE_OPTIONS; [] when the operator chose. */
export function heapFlags(execArgv: readonly string[], nodeOptions: string | undefined): readonly string[] {
  return OPERATOR_HEAP_FLAG.test([...execArgv, nodeOptions ?? ""].join(" ")) ? [] : HEAP_FLAGS;
}

export interface HeapTuning {
  /** The flags set for the gateway's whole life ([] when the operator chose). */
  readonly flags: readonly string[];
  /** Ends the start-up hold on the young generation: call once the gateway listens. */
  serving(): void;
}

/** Sets the heap flags for this process and holds the young generation; call before the gateway allocates. */
export function tuneHeap(): HeapTuning {
  const flags = heapFlags(process.execArgv, process.env.NODE_OPTIONS);
  for (const flag of flags) setFlagsFromString(flag);
  const hold = flags.length > 0;
  if (hold) setFlagsFromString(YOUNG_GROWTH_STARTING);
  return {
    flags,
    serving: () => {
      if (hold) setFlagsFromString(YOUNG_GROWTH_SERVING);
    },
  };
}
