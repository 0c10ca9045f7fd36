/**
 * Internationalized relay domains over the wire with SMTPUTF8: a Unicode recipient matches a relay
 * domain written in punycode in the policy (and a punycode recipient one written in Unicode), and
 * the next hop is given the ASCII (punycode) domain. The next hop here is a raw recorder of the
 * command lines: the smtp-server fixture turns punycode back into Unicode before a test sees it.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import { domainToASCII } from "node:url";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const BUECHER = domainToASCII("bücher.example"); // xn--bcher-kva.example
const STRASSE = domainToASCII("straße.example");

/** A next hop that accepts everything and records each command line exactly as received (UTF-8). */
async function startRecordingHop() {
  const commands: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    let buffer = Buffer.alloc(0);
    let inData = false;
    socket.write("220 next-hop.test ESMTP\r\n");
    socket.on("data", (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (inData) {
          const end = buffer.indexOf("\r\n.\r\n");
          if (end < 0) return;
          buffer = buffer.subarray(end + 5);
          inData = false;
          socket.write("250 2.0.0 queued\r\n");
          continue;
        }
        const eol = buffer.indexOf("\r\n");
        if (eol < 0) return;
        const line = buffer.subarray(0, eol).toString("utf8");
        buffer = buffer.subarray(eol + 2);
        commands.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === "EHLO") socket.write("250-next-hop.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n");
        else if (verb === "DATA") {
          inData = true;
          buffer = Buffer.concat([Buffer.from("\r\n"), buffer]);
          socket.write("354 go ahead\r\n");
        } else if (verb === "QUIT") socket.end("221 2.0.0 bye\r\n");
        else socket.write("250 2.0.0 ok\r\n");
      }
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    commands,
    /** RCPT TO lines received so far. */
    rcpts: () => commands.filter((line) => /^RCPT TO:/i.test(line)),
    async waitForRcpts(n: number) {
      for (let i = 0; i < 500 && commands.filter((line) => /^DATA/i.test(line)).length < n; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      return commands.filter((line) => /^RCPT TO:/i.test(line));
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** MAIL with SMTPUTF8, RCPT as given (UTF-8 on the wire), a small message; every reply. */
async function send(port: number, rcpt: string) {
  const client = await SmtpTestClient.connect(port);
  try {
    const ehlo = await client.command("EHLO client.test");
    const mail = await client.command("MAIL FROM:<a@x.test> SMTPUTF8");
    client.write(Buffer.from(`RCPT TO:<${rcpt}>\r\n`, "utf8"));
    const rcptReply = await client.reply();
    if (rcptReply.code !== 250) return { ehlo, mail, rcpt: rcptReply, data: null };
    await client.command("DATA");
    client.write("From: <a@x.test>\r\nSubject: idn\r\n\r\nhello\r\n.\r\n");
    return { ehlo, mail, rcpt: rcptReply, data: await client.reply() };
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

describe("IDN relay domains with SMTPUTF8", () => {
  let hop: Awaited<ReturnType<typeof startRecordingHop>>;
  let gw: TestGateway;
  before(async () => {
    hop = await startRecordingHop();
    gw = await startGateway(`
version: 1
server: { hostname: gw.test }
relay: { domains: ["${BUECHER}", "straße.example"] }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`);
  });
  after(async () => {
    await gw.stop();
    await hop.close();
  });

  test("EHLO offers SMTPUTF8", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    const ehlo = await client.command("EHLO client.test");
    await client.quit();
    assert.ok(ehlo.lines.includes("SMTPUTF8"), ehlo.lines.join(" | "));
  });

  test("a Unicode recipient matches the punycode relay domain; the next hop gets punycode", async () => {
    const count = hop.rcpts().length;
    const result = await send(gw.port, "u@bücher.example");
    assert.equal(result.mail.code, 250, result.mail.raw);
    assert.equal(result.rcpt.code, 250, result.rcpt.raw);
    assert.equal(result.data?.code, 250, result.data?.raw);
    const rcpts = await hop.waitForRcpts(count + 1);
    assert.ok(rcpts[count]?.startsWith(`RCPT TO:<u@${BUECHER}>`), rcpts[count]);
  });

  test("a punycode recipient matches the Unicode relay domain; the next hop gets punycode", async () => {
    const count = hop.rcpts().length;
    const result = await send(gw.port, `u@${STRASSE}`);
    assert.equal(result.rcpt.code, 250, result.rcpt.raw);
    assert.equal(result.data?.code, 250, result.data?.raw);
    const rcpts = await hop.waitForRcpts(count + 1);
    assert.ok(rcpts[count]?.startsWith(`RCPT TO:<u@${STRASSE}>`), rcpts[count]);
  });

  test("a Unicode recipient for the Unicode-written domain also arrives as punycode", async () => {
    const count = hop.rcpts().length;
    const result = await send(gw.port, "u@straße.example");
    assert.equal(result.rcpt.code, 250, result.rcpt.raw);
    assert.equal(result.data?.code, 250, result.data?.raw);
    const rcpts = await hop.waitForRcpts(count + 1);
    assert.ok(rcpts[count]?.startsWith(`RCPT TO:<u@${STRASSE}>`), rcpts[count]);
  });

  test("a domain that is not relayed is still refused", async () => {
    const result = await send(gw.port, "u@bücher.other");
    assert.ok(result.rcpt.code >= 500, result.rcpt.raw);
  });
});
