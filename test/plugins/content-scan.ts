/**
 * Shared by the content-scanner tests (spamassassin, clamav): a policy that runs one scanner entry
 * and routes to a next hop, messages with and without an attachment, and one transaction sent.
 */
import { SmtpTestClient } from "../fixtures/smtp-client.js";

/** A gateway policy whose pipeline is `entry` (YAML lines, indented as a list item), delivering to `hopPort`. */
export function scanPolicy(hopPort: number, entry: string): string {
  return `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
pipeline:
${entry}
routes:
  - { to: "smtp://127.0.0.1:${hopPort}" }
`;
}

/** A plain message whose body is `body`. */
export function textMessage(subject: string, body: string, extraHeaders: readonly string[] = []): string {
  return [
    ...extraHeaders,
    "From: Sender <sender@sender.test>",
    "To: <rcpt@example.test>",
    `Subject: ${subject}`,
    "Date: Sun, 06 Dec 2026 08:00:00 +0000",
    `Message-ID: <${Math.random().toString(36).slice(2)}@sender.test>`,
    "",
    body,
  ].join("\r\n");
}

/** A multipart message with a text part and `content` attached (base64) as `name`. */
export function attachmentMessage(name: string, content: string | Buffer): string {
  const base64 = Buffer.from(content).toString("base64").replace(/.{76}/g, "$&\r\n");
  return textMessage(
    `Attached: ${name}`,
    [
      "--part",
      "Content-Type: text/plain; charset=utf-8",
      "",
      "The file you asked for.",
      "--part",
      `Content-Type: application/octet-stream; name="${name}"`,
      `Content-Disposition: attachment; filename="${name}"`,
      "Content-Transfer-Encoding: base64",
      "",
      base64,
      "--part--",
      "",
    ].join("\r\n"),
    ["MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="part"'],
  );
}

/** One transaction from 127.0.0.1 to rcpt@example.test; returns the reply to the end of DATA. */
export async function send(port: number, data: string | Buffer) {
  const client = await SmtpTestClient.connect(port);
  try {
    const replies = await client.transaction({ from: "sender@sender.test", to: ["rcpt@example.test"], data });
    if (!replies.data) throw new Error(`the transaction ended before DATA: ${JSON.stringify(replies)}`);
    return replies.data;
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}
