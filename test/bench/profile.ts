/**
 * Reads a V8 .cpuprofile (from `node --cpu-prof`) and adds up self time per function and per
 * package, which is what points at a hot path: the flame graph's call tree is not needed for that.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

interface ProfileNode {
  readonly id: number;
  readonly children?: number[];
  readonly callFrame: {
    readonly functionName: string;
    readonly url: string;
    readonly lineNumber: number;
  };
}

interface CpuProfile {
  readonly nodes: ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: number[];
  readonly timeDeltas: number[];
}

export interface HotSpot {
  /** `function (file:line)`, or a V8 pseudo-entry such as `(garbage collector)`. */
  readonly name: string;
  readonly selfMs: number;
  /** Share of the busy time (idle excluded). */
  readonly percent: number;
  /**
   * The JavaScript functions this time was spent under, the nearest one past Node's internal
   * frames, so `writeUtf8String` says whose writes they were.
   */
  readonly callers?: HotSpot[];
}

export interface ProfileSummary {
  readonly file: string;
  readonly wallMs: number;
  /** Sampled time the main thread was not idle. */
  readonly busyMs: number;
  readonly functions: HotSpot[];
  /** By package (`smtp-server`, `nodemailer`…), `portcullis core/…`, `node:internal …` or a V8 pseudo-entry. */
  readonly groups: HotSpot[];
}

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

export function summarizeProfile(file: string, top = 20): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parents = new Map<number, ProfileNode>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node);
  const functions = new Map<string, number>();
  const callers = new Map<string, Map<string, number>>();
  const groups = new Map<string, number>();
  let busy = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]);
    // Each delta is the time since the previous sample, so it belongs to this sample.
    const micros = profile.timeDeltas[i] ?? 0;
    if (!node || node.callFrame.functionName === "(idle)") continue;
    busy += micros;
    const { name, group } = describe(node);
    functions.set(name, (functions.get(name) ?? 0) + micros);
    groups.set(group, (groups.get(group) ?? 0) + micros);
    const caller = callerOf(node, parents);
    if (caller) {
      const byCaller = callers.get(name) ?? new Map<string, number>();
      byCaller.set(caller, (byCaller.get(caller) ?? 0) + micros);
      callers.set(name, byCaller);
    }
  }
  const ranked = (totals: Map<string, number>, count: number): HotSpot[] =>
    [...totals]
      .sort((a, b) => b[1] - a[1])
      .slice(0, count)
      .map(([name, micros]) => ({
        name,
        selfMs: Math.round(micros / 100) / 10,
        percent: busy === 0 ? 0 : Math.round((micros / busy) * 1000) / 10,
      }));
  return {
    file,
    wallMs: Math.round((profile.endTime - profile.startTime) / 1000),
    busyMs: Math.round(busy / 1000),
    functions: ranked(functions, top).map((spot) => {
      const by = callers.get(spot.name);
      return by ? { ...spot, callers: ranked(by, 3) } : spot;
    }),
    groups: ranked(groups, top),
  };
}

/** The nearest enclosing function that is our code or a package's, named with its file. */
function callerOf(node: ProfileNode, parents: Map<number, ProfileNode>): string | undefined {
  for (let parent = parents.get(node.id); parent; parent = parents.get(parent.id)) {
    const { url } = parent.callFrame;
    if (url === "" || url.startsWith("node:")) continue;
    return describe(parent).name;
  }
  return undefined;
}

function describe(node: ProfileNode): { name: string; group: string } {
  const { functionName, url, lineNumber } = node.callFrame;
  if (url === "") return { name: functionName || "(anonymous)", group: functionName || "(native)" };
  const path = url.startsWith("file://") ? fileURLToPath(url) : url;
  const short = path.startsWith(ROOT) ? path.slice(ROOT.length) : path;
  return {
    name: `${functionName || "(anonymous)"} (${short.replace(/^node_modules\//, "")}:${lineNumber + 1})`,
    group: groupOf(short),
  };
}

function groupOf(path: string): string {
  const pkg = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(path);
  if (pkg) return pkg[1];
  if (path.startsWith("node:")) {
    const area = /^node:(?:internal\/)?([^/]+)/.exec(path)?.[1] ?? "";
    return `node:${area}`;
  }
  const dir = /^([^/]+\/(?:[^/]+\/)?)/.exec(path)?.[1];
  return dir ? `portcullis ${dir}` : path;
}

export function formatProfile(summary: ProfileSummary, top = 15): string {
  const lines = [
    `profile ${summary.file}: ${summary.busyMs} ms busy of ${summary.wallMs} ms`,
    "  self time by package:",
    ...summary.groups.slice(0, 10).map((spot) => `    ${pct(spot.percent)}  ${spot.name}`),
    "  top functions by self time:",
    ...summary.functions
      .slice(0, top)
      .flatMap((spot) => [
        `    ${pct(spot.percent)}  ${spot.name}`,
        ...(spot.callers ?? []).map((caller) => `              ${pct(caller.percent)} under ${caller.name}`),
      ]),
  ];
  return lines.join("\n");
}

function pct(percent: number): string {
  return `${percent.toFixed(1)}%`.padStart(6);
}
