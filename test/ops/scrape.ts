/**
 * Reads a Prometheus text exposition over HTTP, the way a scraper does, into samples that tests
 * look up by name and labels.
 */
import assert from "node:assert/strict";

export interface Scrape {
  /** The sample with exactly these labels; 0 when absent (a counter never incremented). */
  value(name: string, labels?: Record<string, string>): number;
  readonly text: string;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function key(name: string, labels: Record<string, string>): string {
  const sorted = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  return `${name}{${sorted.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(",")}}`;
}

export async function scrape(base: string): Promise<Scrape> {
  const response = await fetch(`${base}/metrics`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type") ?? "", /^text\/plain/);
  const text = await response.text();
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    assert.ok(match, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, name, value] of (match[2] ?? "").matchAll(LABEL)) labels[name] = value.replace(/\\(.)/g, "$1");
    samples.set(key(match[1], labels), Number(match[3]));
  }
  return { text, value: (name, labels = {}) => samples.get(key(name, labels)) ?? 0 };
}
