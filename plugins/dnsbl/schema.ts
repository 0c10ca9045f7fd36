import { isIPv4 } from "node:net";
import { z } from "zod";
import { asciiDomain, Duration } from "../../core/index.js";

/** A dotted IPv4 address as one number, so return codes compare with the ranges of `codes:`. */
export function ipv4Number(address: string): number {
  return address.split(".").reduce((sum, octet) => sum * 256 + Number(octet), 0);
}

/** "127.0.0.2" or "127.0.0.2-127.0.0.11" → an inclusive range of IPv4 numbers. */
const CodeRange = z.string().transform((text, ctx) => {
  const [from, to = from, extra] = text.split("-").map((part) => part.trim());
  if (extra === undefined && isIPv4(from) && isIPv4(to) && ipv4Number(from) <= ipv4Number(to)) {
    return { from: ipv4Number(from), to: ipv4Number(to) };
  }
  ctx.addIssue({
    code: "custom",
    message: `"${text}" is not a return code or range: write "127.0.0.2" or "127.0.0.2-127.0.0.11"`,
  });
  return z.NEVER;
});

const Target = z.enum(["helo", "sender", "ptr"]);

const Zone = z
  .strictObject({
    zone: z.string().transform((text, ctx) => {
      const ascii = asciiDomain(text);
      if (ascii) return ascii;
      ctx.addIssue({ code: "custom", message: `"${text}" is not a DNS zone name, e.g. "zen.example.test"` });
      return z.NEVER;
    }),
    type: z
      .enum(["ip", "domain"])
      .default("ip")
      .describe("ip: the client address is looked up (DNSBL/DNSWL); domain: names are (DBL/RHSBL)"),
    check: z
      .array(Target)
      .min(1)
      .optional()
      .describe(
        "domain zones: which names are looked up: helo, sender (domain of MAIL FROM), ptr (forward-confirmed " +
          "name, from an fcrdns entry earlier in the pipeline); default all three",
      ),
    score: z
      .number()
      .default(0)
      .describe("points added for a listing here; negative makes the zone an allowlist (no listed verdict)"),
    verdict: z
      .boolean()
      .optional()
      .describe(
        "a listing here gives the listed verdict on its own; default: only for zones without a score, so " +
          "scored zones add up (a rule acts on the score) instead of the first hit refusing",
      ),
    allow: z
      .boolean()
      .default(false)
      .describe("an allowlist: a listing here skips every other DNSBL check of the connection (verdict allowlisted)"),
    codes: z
      .array(CodeRange)
      .min(1)
      .optional()
      .describe('return codes that count as a listing, e.g. ["127.0.0.2-127.0.0.11"]; default: any listing code'),
    txt: z.boolean().default(true).describe("fetch the TXT reason of a listing (for {dnsbl.txt} in replies)"),
  })
  .superRefine((zone, ctx) => {
    if (zone.check && zone.type !== "domain") {
      ctx.addIssue({ code: "custom", path: ["check"], message: "check is for type: domain zones only" });
    }
  })
  .transform(({ check, ...zone }) => ({
    ...zone,
    check: zone.type === "domain" ? (check ?? [...Target.options]) : [],
  }));

const Guard = z.strictObject({
  testPoint: z
    .boolean()
    .default(true)
    .describe(
      "look up the RFC 5782 test point that no list may list (127.0.0.1; INVALID for domain zones); " +
        "a zone that lists it is broken and ignored",
    ),
  maxListedShare: z
    .number()
    .gt(0)
    .max(1)
    .optional()
    .describe(
      "a zone listing more than this share of the distinct names looked up within the window is broken and " +
        "ignored (e.g. 0.98); off by default, as a spam-heavy MX sees most of its clients listed",
    ),
  window: Duration.prefault("10m").describe("how far back maxListedShare counts"),
  minQueries: z
    .int()
    .positive()
    .default(100)
    .describe("distinct names a zone must have answered within the window before maxListedShare applies"),
});

export const DnsblOptions = z.strictObject({
  zones: z.array(Zone).min(1).describe("lists to look up, all at once; the first listing in this order decides"),
  guard: Guard.prefault({}).describe("detection of broken zones (a broken zone is ignored and reported, never obeyed)"),
});

export type DnsblOptions = z.output<typeof DnsblOptions>;
export type ZoneOptions = DnsblOptions["zones"][number];
export type DnsblTarget = "ip" | z.output<typeof Target>;
