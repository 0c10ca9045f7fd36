/**
 * The benchmark's mail and the DNS that makes it pass every check: a client whose reverse DNS is
 * forward-confirmed and listed nowhere, a sender domain with SPF, DKIM and DMARC records, and a
 * DKIM-signed message, so the edge policy runs each check to a "pass" (its usual cost) and accepts.
 */
import { generateKeyPairSync } from "node:crypto";
import type { ZoneData } from "../../core/testing/dns-server.js";
import { dkimSign } from "../../core/toolkit/mailauth.js";

export const BENCH = {
  clientName: "client.bench.test",
  senderDomain: "sender.bench.test",
  from: "load@sender.bench.test",
  to: "someone@rcpt.bench.test",
  recipientDomain: "rcpt.bench.test",
  gatewayName: "gateway.bench.test",
  dkimSelector: "bench",
  dnsblZones: ["bl.bench.test", "bl2.bench.test"],
} as const;

export interface BenchMail {
  /** The message as it goes on the wire: CRLF line ends, dot-stuffed, without the final `.` line. */
  readonly message: Buffer;
  readonly zone: ZoneData;
}

const LINE = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.";

/** Text lines of `bytes` bytes in all (CRLF included), none starting with a dot. */
function body(bytes: number): string {
  let text = "";
  while (text.length + LINE.length + 2 <= bytes) text += `${LINE}\r\n`;
  const rest = bytes - text.length;
  return rest >= 3 ? `${text}${LINE.slice(0, rest - 2)}\r\n` : text;
}

/** A DKIM-signed message of about `size` bytes (headers included) and the zone that verifies it. */
export async function benchMail(size: number): Promise<BenchMail> {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const header = [
    `From: Load Generator <${BENCH.from}>`,
    `To: <${BENCH.to}>`,
    "Subject: Portcullis benchmark",
    "Date: Sat, 28 Nov 2026 12:00:00 +0000",
    `Message-ID: <bench@${BENCH.senderDomain}>`,
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=us-ascii",
  ].join("\r\n");
  const sign = async (bodyBytes: number) => {
    const unsigned = Buffer.from(`${header}\r\n\r\n${body(bodyBytes)}`);
    const key = {
      signingDomain: BENCH.senderDomain,
      selector: BENCH.dkimSelector,
      privateKey: privateKey.export({ type: "pkcs8", format: "pem" }),
    };
    // mailauth's types ask for the key at the top level, but its signer only reads `signatureData`.
    const signed = await dkimSign(unsigned, { ...key, signatureData: [key] });
    if (signed.errors.length > 0 || !signed.signatures.startsWith("DKIM-Signature:")) {
      throw new Error(`bench: DKIM signing failed: ${signed.errors[0]?.message ?? "no signature"}`);
    }
    return Buffer.concat([Buffer.from(signed.signatures), unsigned]);
  };
  // The signature's length does not depend on the body, so a first signature tells how much room it takes.
  const probe = await sign(0);
  const message = await sign(Math.max(0, size - probe.length));
  const spki = publicKey.export({ type: "spki", format: "der" }).toString("base64");
  const spf = "v=spf1 ip4:127.0.0.0/8 -all";
  return {
    message,
    zone: {
      "1.0.0.127.in-addr.arpa": { PTR: [BENCH.clientName] },
      [BENCH.clientName]: { A: ["127.0.0.1"], TXT: [spf] },
      [BENCH.senderDomain]: { TXT: [spf], MX: [{ priority: 10, exchange: BENCH.clientName }] },
      [`${BENCH.dkimSelector}._domainkey.${BENCH.senderDomain}`]: { TXT: [`v=DKIM1; k=rsa; p=${spki}`] },
      [`_dmarc.${BENCH.senderDomain}`]: { TXT: ["v=DMARC1; p=reject; adkim=r; aspf=r"] },
    },
  };
}
