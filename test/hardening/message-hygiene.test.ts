/**
 * What a message may hold besides well-formed CRLF lines, through a real socket into an in-process
 * next hop: NUL bytes (refused, or stripped so the next hop never sees one), a lone dot padded with
 * NUL, space or tab (an end-of-data lookalike, refused in every mode), and lines over RFC 5322's
 * 998 octets (refused, or passed on when the policy allows them). DATA bytes go out exactly as
 * written here, without dot-stuffing, the way an attacker would send them.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { NextHop } from "../fixtures/next-hop.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const HEAD = "From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: hygiene\r\n\r\nfirst line\r\n";
const LOOKALIKE = "550 5.5.2 Message contains an end-of-data lookalike";
const NUL_REFUSED = "550 5.6.0 Message contains NUL characters";
const LONG_LINE_REFUSED = "550 5.6.0 Message has a line longer than 998 characters";

function policy(hop: NextHop, server = ""): string {
  return `
version: 1
server: { hostname: gw.test${server} }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`;
}

/** One transaction whose DATA bytes (ending in CRLF) go out exactly as given; returns the reply to the final dot. */
async function sendRaw(port: number, data: string) {
  const client = await SmtpTestClient.connect(port);
  try {
    await client.command("EHLO client.test");
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
    assert.equal((await client.command("RCPT TO:<b@example.test>")).code, 250);
    assert.equal((await client.command("DATA")).code, 354);
    client.write(Buffer.from(`${data}.\r\n`, "latin1"));
    const reply = await client.reply();
    // Still in step: nothing after a lookalike was taken for a command.
    assert.equal((await client.command("RSET")).code, 250);
    return reply;
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

/** The next hop's copy of the one message that arrived after `before` others. */
async function arrived(hop: NextHop, before: number): Promise<Buffer> {
  const all = await hop.waitForMessages(before + 1);
  assert.equal(all.length, before + 1);
  return all[before].raw;
}

const SMUGGLED = "MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n\r\nforged\r\n";
const paddedDots: Record<string, string> = {
  "CRLF NUL . CRLF": `${HEAD}\0.\r\n${SMUGGLED}`,
  "CRLF . NUL CRLF": `${HEAD}.\0\r\n${SMUGGLED}`,
  "CRLF . SP CRLF": `${HEAD}. \r\n${SMUGGLED}`,
  "CRLF . HTAB CRLF": `${HEAD}.\t\r\n${SMUGGLED}`,
};

for (const mode of ["reject", "strip"] as const) {
  describe(`nulBytes: ${mode}`, () => {
    let relay: Relay;
    before(async () => {
      relay = await startRelay((hop) => policy(hop, `, nulBytes: ${mode}`));
    });
    after(() => relay.stop());

    for (const [name, data] of Object.entries(paddedDots)) {
      test(`${name}: refused as an end-of-data lookalike, nothing reaches the next hop`, async () => {
        assert.equal((await sendRaw(relay.gw.port, data)).raw, LOOKALIKE);
        assert.equal(relay.hop.messages.length, 0);
        assert.equal(relay.gw.transactions().at(-1)?.outcome, "rejected");
      });
    }

    if (mode === "reject") {
      test("NUL in the middle of a line: 550 5.6.0, located in the log, nothing forwarded", async () => {
        assert.equal((await sendRaw(relay.gw.port, `${HEAD}a\0b\r\nc\0\r\n`)).raw, NUL_REFUSED);
        assert.equal(relay.hop.messages.length, 0);
        const logged = relay.gw.transactions().at(-1);
        assert.equal(logged?.decidedBy, "core:limits");
        assert.equal(logged?.reason, `2 NUL byte(s), the first on line 6 at offset ${HEAD.length + 1}`);
      });
    } else {
      test("NUL in the middle of a line: accepted, and the next hop receives no NUL byte", async () => {
        assert.equal((await sendRaw(relay.gw.port, `${HEAD}a\0b\r\n\0c\0\r\n`)).code, 250);
        const raw = await arrived(relay.hop, 0);
        assert.equal(raw.indexOf(0), -1, "no NUL forwarded");
        assert.ok(raw.toString("latin1").endsWith(`${HEAD}ab\r\nc\r\n`), JSON.stringify(raw.toString("latin1")));
      });
    }
  });
}

describe("longLines", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay((hop) => policy(hop));
  });
  after(() => relay.stop());

  test("by default a 1 MB line is refused with 550 5.6.0, located in the log", async () => {
    assert.equal((await sendRaw(relay.gw.port, `${HEAD}${"x".repeat(1024 * 1024)}\r\n`)).raw, LONG_LINE_REFUSED);
    assert.equal(relay.gw.transactions().at(-1)?.reason, `line 6 is ${1024 * 1024} octets long`);
    assert.equal(relay.hop.messages.length, 0);
  });

  test("a 999-octet line is refused, in the header section too", async () => {
    assert.equal((await sendRaw(relay.gw.port, `${HEAD}${"x".repeat(999)}\r\n`)).raw, LONG_LINE_REFUSED);
    assert.equal((await sendRaw(relay.gw.port, `X-Long: ${"x".repeat(991)}\r\n${HEAD}`)).raw, LONG_LINE_REFUSED);
    assert.equal(relay.hop.messages.length, 0);
  });

  test("a 998-octet line passes byte for byte", async () => {
    const line = `${"x".repeat(997)}.`;
    assert.equal((await sendRaw(relay.gw.port, `${HEAD}${line}\r\nlast\r\n`)).code, 250);
    const raw = await arrived(relay.hop, 0);
    assert.ok(raw.toString("latin1").endsWith(`${HEAD}${line}\r\nlast\r\n`));
  });

  test("longLines: allow passes a 1 MB line on unchanged", async () => {
    const allowing = await startRelay((hop) => policy(hop, ", longLines: allow"));
    try {
      const line = "y".repeat(1024 * 1024);
      assert.equal((await sendRaw(allowing.gw.port, `${HEAD}${line}\r\n`)).code, 250);
      const raw = await arrived(allowing.hop, 0);
      assert.ok(raw.toString("latin1").endsWith(`${HEAD}${line}\r\n`));
    } finally {
      await allowing.stop();
    }
  });
});
