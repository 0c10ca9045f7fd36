/**
 * spf through the wire: each SPF result leads to the policy's action and reply at MAIL FROM, the
 * null sender is checked by its HELO name, trusted clients are only recorded, and the finding
 * reaches Authentication-Results.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { TestGateway } from "../fixtures/gateway.js";
import type { NextHop } from "../fixtures/next-hop.js";
import { type DnsRelay, startDnsRelay } from "../fixtures/relay.js";
import { fieldValues, message, parseAuthResults, sendAs } from "../fixtures/sender-auth.js";

const PERMITTED = "192.0.2.10";
const STRANGER = "198.51.100.9";

describe("spf", () => {
  let relay: DnsRelay;
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    relay = await startDnsRelay(
      {
        "pass.test": { TXT: [`v=spf1 ip4:${PERMITTED} -all`] },
        "soft.test": { TXT: [`v=spf1 ip4:${PERMITTED} ~all`] },
        "neutral.test": { TXT: ["v=spf1 ?all"] },
        "none.test": { A: ["192.0.2.99"] },
        "temp.test": "servfail",
        "perm.test": { TXT: ["v=spf1 ip4:not-an-address -all"] },
        "mail.bounce.test": { TXT: [`v=spf1 ip4:${PERMITTED} -all`] },
      },
      (hop) => `
version: 1
server: { hostname: gw.test, proxyProtocol: true }
relay: { domains: [example.test], networks: [10.0.0.0/8] }
pipeline:
  - plugin: spf
    on:
      permerror: { reject: "550 5.7.24 Broken SPF record at {spf.domain}" }
  - plugin: auth-results
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
    ({ hop, gw } = relay);
  });
  after(() => relay.stop());

  async function send(ip: string, from: string, helo = "client.test") {
    return sendAs(gw.port, ip, {
      helo,
      from,
      to: ["rcpt@example.test"],
      data: message({ from: `<${from || "mailer-daemon@bounce.test"}>` }),
    });
  }

  function lastTransaction() {
    const all = gw.transactions();
    return all[all.length - 1] as { score: number; trace: Array<{ plugin: string; verdict: string | null }> };
  }

  function spfVerdict(): string | null {
    return lastTransaction().trace.find((entry) => entry.plugin === "spf")?.verdict ?? null;
  }

  function lastSpfResult() {
    const ar = fieldValues(hop.messages[hop.messages.length - 1].raw, "Authentication-Results")[0];
    return parseAuthResults(ar).results.find((result) => result.method === "spf");
  }

  test("pass is accepted and reported with smtp.mailfrom", async () => {
    const replies = await send(PERMITTED, "a@pass.test");
    assert.equal(replies.mail.code, 250);
    assert.equal(replies.data?.code, 250);
    assert.equal(spfVerdict(), "pass");
    const spf = lastSpfResult();
    assert.equal(spf?.result, "pass");
    assert.deepEqual(spf?.properties, { "smtp.mailfrom": "a@pass.test" });
    assert.match(spf?.comment ?? "", /designates 192\.0\.2\.10 as permitted sender/);
  });

  test("fail is refused at MAIL FROM with 550 5.7.23", async () => {
    const replies = await send(STRANGER, "a@pass.test");
    assert.equal(replies.mail.code, 550);
    assert.equal(
      replies.mail.raw,
      `550 5.7.23 SPF: pass.test does not permit [${STRANGER}] to send mail as a@pass.test`,
    );
    assert.equal(replies.data, null);
    assert.equal(spfVerdict(), "fail");
  });

  test("softfail is accepted and scores", async () => {
    const replies = await send(STRANGER, "a@soft.test");
    assert.equal(replies.data?.code, 250);
    assert.equal(spfVerdict(), "softfail");
    assert.equal(lastTransaction().score, 3);
    assert.equal(lastSpfResult()?.result, "softfail");
  });

  test("neutral and none lead to nothing", async () => {
    for (const [from, result] of [
      ["a@neutral.test", "neutral"],
      ["a@none.test", "none"],
    ]) {
      const replies = await send(STRANGER, from);
      assert.equal(replies.data?.code, 250, from);
      assert.equal(spfVerdict(), result);
      assert.equal(lastTransaction().score, 0);
      assert.equal(lastSpfResult()?.result, result);
    }
  });

  test("temperror defers with 451 4.7.24", async () => {
    const replies = await send(STRANGER, "a@temp.test");
    assert.equal(replies.mail.raw, "451 4.7.24 SPF: lookup for temp.test failed, try again later");
    assert.equal(spfVerdict(), "temperror");
  });

  test("permerror takes the policy's configured reply", async () => {
    const replies = await send(STRANGER, "a@perm.test");
    assert.equal(replies.mail.raw, "550 5.7.24 Broken SPF record at perm.test");
    assert.equal(spfVerdict(), "permerror");
  });

  test("the null sender is checked by its HELO name", async () => {
    const refused = await send(STRANGER, "", "mail.bounce.test");
    assert.equal(refused.mail.code, 550);
    assert.match(refused.mail.raw, /^550 5\.7\.23 SPF: mail\.bounce\.test does not permit/);

    const accepted = await send(PERMITTED, "", "mail.bounce.test");
    assert.equal(accepted.data?.code, 250);
    const spf = lastSpfResult();
    assert.equal(spf?.result, "pass");
    assert.deepEqual(spf?.properties, { "smtp.helo": "mail.bounce.test" });
  });

  test("a client in relay.networks is recorded, not refused", async () => {
    const replies = await send("10.1.2.3", "a@pass.test");
    assert.equal(replies.mail.code, 250);
    assert.equal(replies.data?.code, 250);
    assert.equal(spfVerdict(), null, "no verdict for a trusted client");
    assert.equal(lastSpfResult()?.result, "fail");
  });
});
