/**
 * Shared pieces of the queue tests: sending through the wire, and reading DSNs back.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

export function message(id: string, body = "hello\r\n", extraHeaders = ""): string {
  return `From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: test ${id}\r\nMessage-ID: <${id}@sender.test>\r\n${extraHeaders}\r\n${body}`;
}

/** One transaction with MAIL/RCPT parameters; returns the DATA reply (or the first refusal). */
export async function send(
  port: number,
  input: { from?: string; to: string[]; data: string; mailParams?: string; rcptParams?: string },
): Promise<{ code: number; text: string }> {
  const client = await SmtpTestClient.connect(port);
  const reply = (line: { code: number; text: string }) => ({ code: line.code, text: line.text.trimEnd() });
  try {
    await client.command("EHLO client.test");
    const mail = await client.command(`MAIL FROM:<${input.from ?? "a@sender.test"}>${input.mailParams ?? ""}`);
    if (mail.code !== 250) return reply(mail);
    for (const to of input.to) {
      const rcpt = await client.command(`RCPT TO:<${to}>${input.rcptParams ?? ""}`);
      if (rcpt.code !== 250) return reply(rcpt);
    }
    const start = await client.command("DATA");
    if (start.code !== 354) return reply(start);
    client.write(`${input.data.replace(/(^|\r\n)\./g, "$1..")}\r\n.\r\n`);
    return reply(await client.reply());
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

/** Polls until `check` is true; the test's own timeout bounds the wait. */
export async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export interface ParsedDsn {
  readonly headers: Record<string, string>;
  readonly human: string;
  /** Per-message fields, then one record per recipient. */
  readonly status: Array<Record<string, string>>;
  readonly returnedType: string;
  readonly returned: string;
}

function fields(block: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of block.replace(/\r\n[ \t]+/g, " ").split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) out[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  return out;
}

/** Splits a multipart/report DSN into its parts (RFC 3464 layout). */
export function parseDsn(raw: Buffer): ParsedDsn {
  const text = raw.toString("latin1");
  const headerEnd = text.indexOf("\r\n\r\n");
  const headers = fields(text.slice(0, headerEnd));
  const type = headers["content-type"];
  if (!/^multipart\/report;/.test(type) || !/report-type=delivery-status/.test(type)) {
    throw new Error(`not a DSN: ${type}`);
  }
  const boundary = /boundary="([^"]+)"/.exec(type)![1];
  const parts = text
    .slice(headerEnd + 4)
    .split(`--${boundary}`)
    .slice(1, -1)
    .map((part) => {
      const body = part.replace(/^\r\n/, "");
      const end = body.indexOf("\r\n\r\n");
      return { headers: fields(body.slice(0, end)), body: body.slice(end + 4) };
    });
  if (parts.length !== 3) throw new Error(`a DSN has 3 parts, this one ${parts.length}`);
  if (!parts[1].headers["content-type"].startsWith("message/delivery-status")) throw new Error("part 2 is no report");
  return {
    headers,
    human: parts[0].body,
    status: parts[1].body
      .trim()
      .split(/\r\n\r\n/)
      .map(fields),
    returnedType: parts[2].headers["content-type"],
    returned: parts[2].body,
  };
}
