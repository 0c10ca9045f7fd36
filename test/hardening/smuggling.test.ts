/**
 * SMTP smuggling through a real socket into an in-process next hop: every end-of-data lookalike
 * is refused with 550 5.5.2 and the next hop never receives anything (least of all a second
 * message); a message with plain bare LFs arrives once, with CRLF line endings; `reject` refuses
 * any bare LF.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { TestGateway } from "../fixtures/gateway.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const HEAD = "From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: smuggling\r\n\r\nfirst line\r\n";
/** What an attacker hopes a lenient next hop would run as a second transaction. */
const SMUGGLED =
  "MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: forged\r\n\r\nx\r\n";

function policy(hop: NextHop, extra = ""): string {
  return `
version: 1
server: { hostname: gw.test${extra} }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`;
}

/** Sends one transaction whose DATA bytes go out exactly as given, in the given pieces. */
async function sendRaw(port: number, pieces: ReadonlyArray<string | Buffer>) {
  const client = await SmtpTestClient.connect(port);
  try {
    await client.command("EHLO client.test");
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
    assert.equal((await client.command("RCPT TO:<b@example.test>")).code, 250);
    assert.equal((await client.command("DATA")).code, 354);
    for (const piece of pieces) {
      client.write(piece);
      // Separate writes become separate segments: the scanner must not care where they split.
      await new Promise((resolve) => setImmediate(resolve));
    }
    client.write("\r\n.\r\n");
    const data = await client.reply();
    // The session is still in step: nothing after the lookalike was taken for a command.
    const rset = await client.command("RSET");
    return { data, rset };
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

const lookalikes: Record<string, ReadonlyArray<string>> = {
  "LF.LF": [`${HEAD}\n.\n${SMUGGLED}`],
  "CR.CR": [`${HEAD}\r.\r${SMUGGLED}`],
  "LF.CRLF": [`${HEAD}\n.\r\n${SMUGGLED}`],
  "CRLF.LF": [`${HEAD}\r\n.\n${SMUGGLED}`],
  "CRLF.CR": [`${HEAD}\r\n.\r${SMUGGLED}`],
  "CR.LF": [`${HEAD}\r.\n${SMUGGLED}`],
  "CR.CRLF": [`${HEAD}\r.\r\n${SMUGGLED}`],
  "LF.CR": [`${HEAD}\n.\r${SMUGGLED}`],
  "LF..LF (dot-stuffed, unstuffed to LF.LF)": [`${HEAD}\n..\n${SMUGGLED}`],
  "CRLF.CR CRLF": [`${HEAD}\r\n.\r\r\n${SMUGGLED}`],
  "LF.LF split across segments": [`${HEAD}\n`, ".", `\n${SMUGGLED}`],
  "CR at a segment end, then .CR": [`${HEAD}x\r`, `.\r${SMUGGLED}`],
  "lookalike as the very first line": [`.\n${SMUGGLED}`],
};

describe("SMTP smuggling", () => {
  let relay: Relay;
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    relay = await startRelay((hop) => policy(hop));
    ({ hop, gw } = relay);
  });
  after(() => relay.stop());

  for (const [name, pieces] of Object.entries(lookalikes)) {
    test(`${name}: refused with 550 5.5.2, nothing reaches the next hop`, async () => {
      const { data, rset } = await sendRaw(gw.port, pieces);
      assert.equal(data.raw, "550 5.5.2 Message contains an end-of-data lookalike");
      assert.equal(rset.code, 250);
      assert.equal(hop.messages.length, 0);
      assert.equal(gw.transactions().at(-1)?.outcome, "rejected");
    });
  }

  test("plain bare LFs: one message arrives, every line ending CRLF", async () => {
    const before = hop.messages.length;
    const { data } = await sendRaw(gw.port, ["Subject: bare\nFrom: <a@sender.test>\n\nline one\nline two\r\nend\r\n"]);
    assert.equal(data.code, 250);
    const [message] = await hop.waitForMessages(before + 1).then((all) => all.slice(before));
    const text = message.raw.toString("latin1");
    const body = text.slice(text.indexOf("Subject: bare"));
    assert.equal(body, "Subject: bare\r\nFrom: <a@sender.test>\r\n\r\nline one\r\nline two\r\nend\r\n\r\n");
    assert.doesNotMatch(text, /(^|[^\r])\n/, "no bare LF left");
    assert.equal(hop.messages.length, before + 1);
  });
});

describe("bareLineEndings: reject", () => {
  test("any bare LF or bare CR is refused with 550 5.5.2; CRLF mail still passes", async () => {
    const { hop, gw, stop } = await startRelay((hop) => policy(hop, ", bareLineEndings: reject"));
    try {
      for (const body of ["Subject: x\n\nbody\r\n", "Subject: x\r\n\r\nbo\rdy\r\n"]) {
        const { data } = await sendRaw(gw.port, [body]);
        assert.equal(data.raw, "550 5.5.2 Bare CR or LF not allowed; lines must end with CRLF");
      }
      assert.equal(hop.messages.length, 0);
      const { data } = await sendRaw(gw.port, ["Subject: x\r\n\r\nbody\r\n"]);
      assert.equal(data.code, 250);
      await hop.waitForMessages(1);
    } finally {
      await stop();
    }
  });
});
