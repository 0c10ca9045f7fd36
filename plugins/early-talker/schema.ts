import { z } from "zod";
import { parseCidr } from "../../core/netaddr.js";
import { Duration } from "../../core/units.js";

export const EarlyTalkerOptions = z.strictObject({
  delay: Duration.prefault("3s").describe(
    'how long the banner waits for a client that is neither allowlisted nor recently passed, e.g. "3s" (postscreen waits 6s)',
  ),
  allow: z
    .array(
      z.string().refine((text) => parseCidr(text) !== undefined, {
        error: (issue) => `"${String(issue.input)}" is not an IP address or CIDR network, e.g. "192.0.2.0/24"`,
      }),
    )
    .default([])
    .describe("client networks that are never delayed nor judged"),
  passTtl: Duration.prefault("1d").describe(
    "how long a client that waited politely for the banner is not delayed again",
  ),
});

export type EarlyTalkerOptions = z.output<typeof EarlyTalkerOptions>;
