import { z } from "zod";
import { asciiDomain } from "../../../core/index.js";

/** A domain name in any case, Unicode or punycode; parsed to lower-case ASCII, the form DNS and d= use. */
export const DomainName = z.string().transform((value, ctx) => {
  const ascii = asciiDomain(value);
  if (ascii === undefined) ctx.addIssue({ code: "custom", message: `"${value}" is not a domain name` });
  return ascii ?? value;
});
