/**
 * U+3002, U+FF0E and U+FF61 are label separators to IDNA, and smtp-server's punycode step turns
 * them into "." before the gateway sees an address. The gateway refuses such an address (501 5.1.3)
 * rather than check and deliver a domain the client did not write: whether or not the ASCII-dot
 * spelling is a relay domain, and in MAIL FROM as in RCPT TO.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { NextHop } from "../fixtures/next-hop.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { connectAs } from "../fixtures/smtp-client.js";

const OUTSIDER = "198.51.100.7";

function policy(hop: NextHop): string {
  return `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`;
}

describe("IDNA dots other than '.' in envelope addresses", () => {
  let relay: Relay;
  before(async () => {
    relay = await startRelay(policy);
  });
  after(() => relay.stop());

  for (const dot of ["\u3002", "\uff0e", "\uff61"]) {
    const label = `U+${dot.codePointAt(0)!.toString(16).toUpperCase()}`;
    test(`${label}: RCPT to a relay domain or another domain, and MAIL FROM, get 501 5.1.3`, async () => {
      const client = await connectAs(relay.gw.port, OUTSIDER);
      try {
        await client.command("EHLO client.test");
        const sender = await client.command(`MAIL FROM:<a@sender${dot}test> SMTPUTF8`);
        assert.equal(sender.raw, "501 5.1.3 Bad sender address syntax");
        assert.equal((await client.command("MAIL FROM:<a@sender.test> SMTPUTF8")).code, 250);
        for (const to of [`user@example${dot}test`, `user@other${dot}test`, `@relay.test:user@example${dot}test`]) {
          assert.equal((await client.command(`RCPT TO:<${to}>`)).raw, "501 5.1.3 Bad recipient address syntax", to);
        }
        // The same outsider with the ASCII dot: the relay domain is accepted, another one is not.
        assert.equal((await client.command("RCPT TO:<user@other.test>")).code, 550);
        assert.equal((await client.command("RCPT TO:<user@example.test>")).code, 250);
      } finally {
        await client.quit().catch(() => client.destroy());
      }
      assert.equal(relay.hop.messages.length, 0);
    });
  }
});
