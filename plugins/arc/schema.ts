import { z } from "zod";
import { DomainName } from "../shared/sender-auth/schema.js";

export const ArcOptions = z.strictObject({
  trustedSealers: z
    .array(DomainName.describe("d= of an ARC-Seal, e.g. lists.example.test"))
    .default([])
    .describe("sealers whose recorded DMARC pass may override a DMARC failure here (forwarders, mailing lists)"),
});

export type ArcOptions = z.output<typeof ArcOptions>;
