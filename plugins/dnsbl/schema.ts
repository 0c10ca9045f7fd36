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

const ZoneFinding = z
  .object({
    zone: z.string().describe("the zone looked up"),
    target: z
      .enum(["ip", ...Target.options])
      .describe("what was looked up: the client ip, or the helo, sender or ptr domain"),
    name: z.string().describe("the name looked up: the client address, or a domain"),
    score: z.number().describe("the zone's score"),
    allow: z.boolean().describe("the zone is an allowlist"),
    status: z.enum(["listed", "clean", "error"]).describe("the answer"),
    codes: z.array(z.string()).readonly().optional().describe("the return codes (127.0.0.x)"),
    kind: z.enum(["timeout", "dns", "bad-answer", "list-error"]).optional().describe("the kind of an error"),
    detail: z.string().optional().describe("an error in words"),
    txt: z.string().nullable().optional().describe("the TXT reason of a listing; null when the zone publishes none"),
    broken: z
      .enum(["test-point", "refused", "listed-share"])
      .nullable()
      .describe(
        "set when the zone is judged broken (refused: it answers our resolver 127.255.255.x): the finding is recorded and ignored",
      ),
  })
  .readonly();

/** What dnsbl records under `dnsbl`; its facts type (DnsblFacts) is checked against it by a type test. */
export const DnsblFindings = z
  .object({
    findings: z
      .array(ZoneFinding)
      .readonly()
      .describe("every lookup of the connection (and of the transaction's sender), in zone order per phase"),
    listed: z.boolean().describe("a zone that blocks or scores listed the client on this connection (or transaction)"),
    allowlisted: z.string().nullable().describe("the allow zone that listed the client; later checks are skipped"),
    zone: z
      .string()
      .nullable()
      .describe("the zone of the listing that decided: a zone that decides alone first, else the first scoring zone"),
    name: z.string().nullable().describe("the name that zone listed"),
    codes: z.array(z.string()).readonly().describe("that listing's return codes"),
    txt: z.string().nullable().describe("that listing's TXT"),
    reason: z
      .string()
      .nullable()
      .describe("the TXT, or the return codes when the zone publishes no TXT: for reply texts"),
    broken: z.array(z.string()).readonly().describe("zones judged broken in these findings (ignored)"),
  })
  .readonly();
export type ZoneOptions = DnsblOptions["zones"][number];
export type DnsblTarget = "ip" | z.output<typeof Target>;
