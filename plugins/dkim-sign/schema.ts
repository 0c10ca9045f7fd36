import { z } from "zod";
import { DomainName } from "../shared/sender-auth/schema.js";

const Selector = z
  .string()
  .regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/, "a DNS label")
  .describe("s=: the key is published at <selector>._domainkey.<domain>");

const KeyFile = z.string().min(1).describe("PEM private key file, relative to the policy folder");

export const DkimSignOptions = z.strictObject({
  keys: z
    .array(
      z.strictObject({
        domain: DomainName.describe("d=: signs mail whose From domain is this domain or under it"),
        selector: Selector,
        key: KeyFile.describe(
          "PEM private key (RSA for rsa-sha256, Ed25519 for ed25519-sha256), relative to the policy folder",
        ),
      }),
    )
    .default([])
    .describe("DKIM keys for mail from trusted clients (relay.networks, authenticated); every key of the domain signs"),
  arcSeal: z
    .strictObject({
      domain: DomainName.describe("d= of our ARC sets"),
      selector: Selector,
      key: KeyFile.describe("PEM RSA private key (mailauth seals with rsa-sha256 only), relative to the policy folder"),
    })
    .nullable()
    .default(null)
    .describe("ARC-seal mail from other clients on its way on (needs auth-results earlier in the pipeline)"),
});

export type DkimSignOptions = z.output<typeof DkimSignOptions>;
