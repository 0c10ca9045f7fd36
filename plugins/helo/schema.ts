import { isIP } from "node:net";
import { z } from "zod";
import { asciiDomain } from "../../core/index.js";

/** Host names with address-like or access-technology labels, as ISPs name their dynamic pools. */
export const DEFAULT_DYNAMIC_PATTERNS = [
  "(^|[.-])(dyn|dynamic|dhcp|dsl|adsl|vdsl|xdsl|pool|ppp|pppoe|dialup|dial-in|cable|broadband|ftth|fttx|dip)[0-9-]*[.-]",
  "\\d{1,3}[-_.]\\d{1,3}[-_.]\\d{1,3}[-_.]\\d{1,3}",
];

const Pattern = z.string().transform((source, ctx) => {
  try {
    return new RegExp(source, "i");
  } catch (error) {
    ctx.addIssue({ code: "custom", message: `"${source}" is not a regular expression: ${(error as Error).message}` });
    return z.NEVER;
  }
});

export const HeloOptions = z.strictObject({
  ourNames: z
    .array(
      z.string().transform((text, ctx) => {
        const ascii = asciiDomain(text);
        if (ascii) return ascii;
        ctx.addIssue({ code: "custom", message: `"${text}" is not a host name` });
        return z.NEVER;
      }),
    )
    .default([])
    .describe("names besides server.hostname that no client may claim as its own"),
  ourAddresses: z
    .array(z.string().refine((text) => isIP(text) !== 0, { error: "expected an IP address" }))
    .default([])
    .describe("addresses besides the one the client connected to that no client may claim as its own"),
  dynamicPatterns: z
    .array(Pattern)
    .prefault(DEFAULT_DYNAMIC_PATTERNS)
    .describe("regular expressions (case-insensitive) of dynamic-looking host names; [] turns the check off"),
  dns: z.boolean().default(true).describe("look up the addresses of the HELO name (findings no-address, temperror)"),
  skipTrusted: z
    .boolean()
    .default(true)
    .describe("do not check clients in relay.networks or authenticated ones (their HELO names are often local)"),
});

export type HeloOptions = z.output<typeof HeloOptions>;
