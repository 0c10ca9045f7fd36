/**
 * Shared by the connection-check tests (fcrdns, dnsbl, helo, early-talker): EHLO and MAIL as any
 * address (through a PROXY line), and the findings the plugins log for each connection.
 */
import type { TestGateway } from "../fixtures/gateway.js";
import { connectAs } from "../fixtures/smtp-client.js";

/** EHLO and MAIL FROM as `ip`, then QUIT: connect- and helo-phase decisions are answered at MAIL. */
export async function tryMail(port: number, ip: string, input: { helo?: string; from?: string } = {}) {
  const client = await connectAs(port, ip);
  try {
    const ehlo = await client.command(`EHLO ${input.helo ?? "mail.sender.test"}`);
    const mail = await client.command(`MAIL FROM:<${input.from ?? "a@sender.test"}>`);
    return { greeting: client.greeting, ehlo, mail };
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

/** What `plugin` logged as findings (`event: "finding"`), oldest first. */
export function findings<T>(gw: TestGateway, plugin: string): T[] {
  const key = plugin.replace(/-(\w)/g, (_, letter: string) => letter.toUpperCase());
  return gw.logs.filter((line) => line.event === "finding" && line.plugin === plugin).map((line) => line[key] as T);
}

/** The findings of the latest connection that reached `plugin`. */
export function lastFinding<T>(gw: TestGateway, plugin: string): T {
  const all = findings<T>(gw, plugin);
  if (all.length === 0) throw new Error(`no findings logged by ${plugin}`);
  return all[all.length - 1];
}

/** Waits until the gateway has logged `count` closed connections (their transaction lines come first). */
export async function closedConnections(gw: TestGateway, count: number): Promise<void> {
  while (gw.logs.filter((line) => line.event === "close").length < count) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
