/**
 * Which MIME parser the message toolkit (core/toolkit/mime.ts) uses: each candidate parses the same
 * 10 MB message (text, HTML, base64 attachments; test/fixtures/large-message.ts) read from a file, as a spooled message is,
 * in a child process of its own so that its peak RSS is not another candidate's.
 *
 *   npx tsx test/bench/mime.ts [--size-mb 10] [--runs 3]
 *
 * Prints, per candidate: the median parse time, the peak RSS above the process's RSS before the parse
 * (from getrusage's maxrss, so a short spike is not missed), and the heap + ArrayBuffer bytes the
 * result still holds. Only the chosen parser is a dependency; to measure the others, install them
 * without saving (`npm install --no-save mailparser postal-mime`). A candidate that is not installed
 * is reported as such.
 */
import { spawnSync } from "node:child_process";
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { parseArgs } from "node:util";
import { largeMessage } from "../fixtures/large-message.js";

const CANDIDATES = [
  "postal-mime",
  "postal-mime Buffer",
  "mailparser simpleParser",
  "mailparser stream",
  "toolkit",
] as const;
type Candidate = (typeof CANDIDATES)[number];

// Imported by a name in a variable, so that the bench type-checks and runs without the candidates
// that are not dependencies.
async function load(name: string): Promise<Record<string, unknown> | null> {
  try {
    return (await import(name)) as Record<string, unknown>;
  } catch {
    return null;
  }
}

type Parse = (file: string) => Promise<unknown>;

async function parser(candidate: Candidate): Promise<Parse | null> {
  switch (candidate) {
    case "postal-mime": {
      const mod = await load("postal-mime");
      if (!mod) return null;
      const PostalMime = mod.default as { parse(input: unknown): Promise<unknown> };
      return (file) => PostalMime.parse(Readable.toWeb(createReadStream(file)));
    }
    case "postal-mime Buffer": {
      // The whole message read first, as a message held in memory would be handed over.
      const mod = await load("postal-mime");
      if (!mod) return null;
      const PostalMime = mod.default as { parse(input: unknown): Promise<unknown> };
      return async (file) => PostalMime.parse(await readFile(file));
    }
    case "mailparser simpleParser": {
      const mod = await load("mailparser");
      if (!mod) return null;
      const simpleParser = mod.simpleParser as (input: Readable) => Promise<unknown>;
      return (file) => simpleParser(createReadStream(file));
    }
    case "mailparser stream": {
      const mod = await load("mailparser");
      if (!mod) return null;
      // The streaming parser with attachment content counted and dropped: what a size cap costs at best.
      const MailParser = mod.MailParser as new () => NodeJS.ReadWriteStream;
      return (file) =>
        new Promise((resolve, reject) => {
          const parsing = new MailParser();
          const kept: unknown[] = [];
          parsing.on("data", (data: { type: string; content?: Readable; release?: () => void }) => {
            if (data.type !== "attachment") return kept.push(data);
            let size = 0;
            data.content!.on("data", (chunk: Buffer) => {
              size += chunk.length;
            });
            data.content!.on("end", () => {
              kept.push(size);
              data.release!();
            });
          });
          parsing.on("end", () => resolve(kept));
          parsing.on("error", reject);
          createReadStream(file).pipe(parsing);
        });
    }
    case "toolkit": {
      const { parseMessage } = await import("../../core/toolkit/mime.js");
      return (file) => parseMessage({ stream: () => createReadStream(file) });
    }
  }
}

interface Measured {
  readonly candidate: Candidate;
  readonly ms?: number;
  readonly peakRssMb?: number;
  readonly retainedMb?: number;
  readonly missing?: boolean;
}

/** One candidate, one parse, in this (child) process. */
async function measureHere(candidate: Candidate, file: string): Promise<Measured> {
  const parse = await parser(candidate);
  if (!parse) return { candidate, missing: true };
  globalThis.gc?.();
  const before = process.memoryUsage();
  const maxRssBefore = process.resourceUsage().maxRSS * 1024;
  const started = process.hrtime.bigint();
  const result = await parse(file);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  globalThis.gc?.();
  const after = process.memoryUsage();
  const peak = Math.max(process.resourceUsage().maxRSS * 1024, maxRssBefore);
  const mb = (n: number) => Math.round((n / 2 ** 20) * 10) / 10;
  const retained = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers);
  if (result === undefined) throw new Error("no result");
  return { candidate, ms: Math.round(ms), peakRssMb: mb(peak - before.rss), retainedMb: mb(retained) };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      child: { type: "string" },
      file: { type: "string" },
      "size-mb": { type: "string", default: "10" },
      runs: { type: "string", default: "3" },
    },
  });
  if (values.child) {
    process.stdout.write(JSON.stringify(await measureHere(values.child as Candidate, values.file!)));
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "portcullis-mime-bench-"));
  try {
    const file = join(dir, "large.eml");
    const message = largeMessage(Number(values["size-mb"]) * 2 ** 20);
    writeFileSync(file, message);
    console.log(`message: ${(message.length / 2 ** 20).toFixed(1)} MB, runs: ${values.runs} (median)`);
    console.log("candidate                 | parse ms | peak RSS +MB | retained MB");
    for (const candidate of CANDIDATES) {
      const runs: Measured[] = [];
      for (let i = 0; i < Number(values.runs); i++) {
        const child = spawnSync(
          process.execPath,
          ["--expose-gc", "--import", "tsx", new URL(import.meta.url).pathname, "--child", candidate, "--file", file],
          { encoding: "utf8" },
        );
        if (child.status !== 0) throw new Error(`${candidate}: ${child.stderr}`);
        runs.push(JSON.parse(child.stdout) as Measured);
      }
      if (runs[0].missing) {
        console.log(`${candidate.padEnd(25)} | not installed`);
        continue;
      }
      const cell = (pick: (m: Measured) => number) => String(median(runs.map(pick))).padStart(8);
      console.log(
        `${candidate.padEnd(25)} | ${cell((m) => m.ms!)} | ${cell((m) => m.peakRssMb!)}     | ${cell((m) => m.retainedMb!)}`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === new URL(import.meta.url).pathname) await main();
