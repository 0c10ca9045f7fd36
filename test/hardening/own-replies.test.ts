/**
 * smtp-server's own HELO/EHLO refusals carry no enhanced status code; the gateway sends them with
 * one (core/smtp/hardening.ts), and they still count as errors towards maxErrors.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

describe("smtp-server's own HELO/EHLO replies", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startGateway("version: 1\nserver: { hostname: gw.test, limits: { maxErrors: 3 } }\n");
  });
  after(() => gw.stop());

  // smtp-server's "bad hostname": a control character, or longer than 300 characters.
  const LONG_NAME = `${"a".repeat(301)}.test`;
  const cases: Record<string, string> = {
    "EHLO bad\x01host": "501 5.5.2 Bad hostname syntax",
    [`EHLO ${LONG_NAME}`]: "501 5.5.2 Bad hostname syntax",
    [`HELO ${LONG_NAME}`]: "501 5.5.2 Bad hostname syntax",
    EHLO: "501 5.5.2 Syntax: EHLO hostname",
    HELO: "501 5.5.2 Syntax: HELO hostname",
  };
  for (const [command, expected] of Object.entries(cases)) {
    test(`${JSON.stringify(command.slice(0, 20))} → ${expected}`, async () => {
      const client = await SmtpTestClient.connect(gw.port);
      try {
        assert.equal((await client.command(command)).raw, expected);
        assert.equal((await client.command("EHLO client.test")).code, 250);
      } finally {
        await client.quit().catch(() => client.destroy());
      }
    });
  }

  test("bad HELO names count towards maxErrors", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    try {
      for (let i = 0; i < 3; i++) assert.equal((await client.command(`EHLO ${LONG_NAME}`)).code, 501);
      assert.equal((await client.reply()).raw, "421 4.7.0 Too many errors, closing connection");
      await client.waitClosed();
    } finally {
      client.destroy();
    }
  });
});
