import { z } from "zod";

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
};

/** "1500ms", "30s", "5m", "4h", "5d" → milliseconds; undefined when the text is not a duration. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/i.exec(text.trim());
  if (!match) return undefined;
  return Math.round(Number(match[1]) * DURATION_UNITS[match[2].toLowerCase()]);
}

/** "25MB", "512KiB", "1000" → bytes; undefined when the text is not a size. */
export function parseSize(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  if (!match) return undefined;
  const unit = SIZE_UNITS[match[2].toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(match[1]) * unit);
}

/** A duration written as "30s" (or a number of milliseconds) in a policy file; parses to milliseconds. */
export const Duration = z
  .union([z.number().nonnegative(), z.string()], {
    error: 'expected a duration such as "500ms", "30s", "5m", "4h" or "5d"',
  })
  .transform((value, ctx) => {
    if (typeof value === "number") return value;
    const ms = parseDuration(value);
    if (ms === undefined) {
      ctx.addIssue({
        code: "custom",
        message: `"${value}" is not a duration: use a number with ms, s, m, h or d, e.g. "30s"`,
      });
      return z.NEVER;
    }
    return ms;
  });

/** A size written as "25MB" (or a number of bytes) in a policy file; parses to bytes. */
export const Size = z
  .union([z.number().int().nonnegative(), z.string()], {
    error: 'expected a size such as "25MB", "512KiB" or a number of bytes',
  })
  .transform((value, ctx) => {
    if (typeof value === "number") return value;
    const bytes = parseSize(value);
    if (bytes === undefined) {
      ctx.addIssue({
        code: "custom",
        message: `"${value}" is not a size: use a number with B, KB, MB, GB, KiB, MiB or GiB, e.g. "25MB"`,
      });
      return z.NEVER;
    }
    return bytes;
  });
