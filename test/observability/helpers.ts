/**
 * Shared by the roll-out tests: transactions sent as any client address, and the records of a
 * transaction log read back.
 */
import { readFile } from "node:fs/promises";
import type { TransactionRecord } from "../../core/observability/transaction-log.js";
import { sendAs } from "../fixtures/sender-auth.js";

/** One transaction as `ip` (the policy must say `proxyProtocol: true`); the replies, then QUIT. */
export function send(port: number, ip: string, input: { helo?: string; from: string; to: readonly string[] }) {
  return sendAs(port, ip, {
    helo: input.helo ?? "client.sender.test",
    from: input.from,
    to: input.to,
    data: `Subject: roll-out test\r\nMessage-ID: <${Math.random()}@sender.test>\r\n\r\nHello\r\n`,
  });
}

/** The code that ended a transaction as the client saw it: MAIL's, or DATA's (or the last RCPT's when none passed). */
export function finalCode(replies: Awaited<ReturnType<typeof send>>): number {
  if (replies.mail.code !== 250) return replies.mail.code;
  return replies.data?.code ?? replies.rcpts[replies.rcpts.length - 1].code;
}

export async function readRecords(file: string): Promise<TransactionRecord[]> {
  return (await readFile(file, "utf8"))
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as TransactionRecord);
}
