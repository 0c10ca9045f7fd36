/**
 * Header injection through SMTPUTF8 addresses, through the wire. Characters such as U+010D and
 * U+010A are CR and LF in their low byte: a gateway that wrote its own header fields as latin1 let
 * a sender address end a field and start `From: ceo@example.test` or end the header section. The
 * red team's exact MAIL FROM goes through the shipped edge-mx.yaml and through queue, proxy and
 * maildir delivery; then seeded hostile text in every client-controlled field, where each
 * delivered header section must hold exactly the fields we meant to add plus the original ones.
 */
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { hostileText, LINE_ENDS, strictHeader } from "../fixtures/hostile-text.js";
import { type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { seededRandom } from "../fixtures/seeded-random.js";
import { connectAs } from "../fixtures/smtp-client.js";

/** The red team's envelope sender: it reads `x`, CRLF, `From:ceo@example.test`, CRLF, CRLF in latin1. */
const HOSTILE_SENDER = "x\u010d\u010aFrom\u013aceo\u0140example.test\u010d\u010a\u010d\u010a@good.test";

const ORIGINAL = [
  "From: alice@good.test",
  "To: rcpt@example.test",
  "Subject: quarterly numbers",
  "Date: Tue, 01 Dec 2026 10:00:00 +0000",
  "Message-ID: <q4@good.test>",
  "",
  "Body line.",
  "",
].join("\r\n");
const ORIGINAL_NAMES = ["From", "To", "Subject", "Date", "Message-ID"];

const ZONE = {
  "10.113.0.203.in-addr.arpa": { PTR: ["mail.good.test"] },
  "mail.good.test": { A: ["203.0.113.10"] },
  "good.test": { TXT: ["v=spf1 ip4:203.0.113.0/24 -all"] },
  "_dmarc.good.test": { TXT: ["v=DMARC1; p=reject"] },
  "_dmarc.example.test": { TXT: ["v=DMARC1; p=reject"] },
};

/** One transaction as 203.0.113.10 with the sender given as is, SMTPUTF8 on; every reply kept. */
async function sendUtf8(port: number, sender: string, data: string = ORIGINAL) {
  const client = await connectAs(port, "203.0.113.10");
  try {
    const replies = [await client.command("EHLO mail.good.test")];
    replies.push(await client.command(`MAIL FROM:<${sender}> SMTPUTF8`));
    replies.push(await client.command("RCPT TO:<rcpt@example.test>"));
    replies.push(await client.command("DATA"));
    if (replies[3].code === 354) replies.push(await client.command(`${data}.`));
    return replies;
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

/** The next message to land in a maildir (not among `seen`), waiting for the queue to deliver it. */
async function nextMaildirMessage(dir: string, seen: Set<string>): Promise<Buffer> {
  const newDir = join(dir, "new");
  let fresh: string | undefined;
  await eventually(async () => {
    fresh = (await readdir(newDir).catch(() => [])).find((file) => !seen.has(file));
    return fresh !== undefined;
  }, `a new message in ${newDir}`);
  seen.add(fresh!);
  return readFile(join(newDir, fresh!));
}

/** Hands out what a gateway delivered, one message at a time, from its maildir or its next hop. */
function deliveries(target: "maildir" | "smtp", gw: () => TestGateway, hop: () => NextHop): () => Promise<Buffer> {
  const seen = new Set<string>();
  let count = 0;
  return async () => {
    if (target === "maildir") return nextMaildirMessage(join(gw().dir, "maildir"), seen);
    count++;
    return (await hop().waitForMessages(count))[count - 1].raw;
  };
}

function assertOnlyOurFields(raw: Buffer, added: readonly string[]): void {
  const header = strictHeader(raw);
  assert.deepEqual(header.names, [...added, ...ORIGINAL_NAMES], raw.toString("utf8").slice(0, 800));
  assert.equal(header.values[header.names.indexOf("From")], " alice@good.test");
  assert.equal(header.body.toString(), "Body line.\r\n");
}

describe("the red team's SMTPUTF8 sender through the shipped edge-mx.yaml", () => {
  let dns: TestDnsServer;
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    dns = await startDnsServer(ZONE);
    hop = await startNextHop();
    const shipped = await readFile(new URL("../../policies/edge-mx.yaml", import.meta.url), "utf8");
    const policy = shipped
      .replace("  hostname: mx.example.test", "  hostname: mx.example.test\n  proxyProtocol: true")
      .replace("delay: 3s", "delay: 100ms")
      .replace('"smtp://10.0.0.25:25"', `"smtp://127.0.0.1:${hop.port}"`);
    assert.equal(policy.split("\n").length, shipped.split("\n").length + 1, "the three edits apply");
    gw = await startGateway(policy, { dnsServers: [dns.address] });
  });
  after(async () => {
    await gw.stop();
    await hop.close();
    await dns.close();
  });

  test("is accepted as the SPF- and DMARC-passing sender it is, and injects no field", async () => {
    const replies = await sendUtf8(gw.port, HOSTILE_SENDER);
    assert.deepEqual(
      replies.map((reply) => reply.code),
      [250, 250, 250, 354, 250],
      JSON.stringify(replies),
    );
    const [message] = await hop.waitForMessages(1);
    assertOnlyOurFields(message.raw, ["Received", "Authentication-Results"]);
    const results = strictHeader(message.raw).values[1];
    // The address is in the field, whole and as UTF-8: encoded, not dropped.
    assert.ok(results.includes(HOSTILE_SENDER), results);
    assert.match(results, /spf=pass/);
    assert.match(results, /dmarc=pass/);
    assert.equal(message.raw.toString("utf8").match(/\r\nFrom:/gi)?.length, 1);
  });
});

const DELIVERIES = {
  "queue mode into a maildir": { mode: "queue", target: "maildir" },
  "queue mode to a next hop": { mode: "queue", target: "smtp" },
  "proxy mode to a next hop": { mode: "proxy", target: "smtp" },
} as const;

function policyFor(delivery: Delivery, hopPort: number, trusted: boolean): string {
  return `
version: 1
server: { hostname: mx.example.test, proxyProtocol: true }
relay: { domains: [example.test], networks: [${trusted ? "127.0.0.0/8, 203.0.113.0/24" : ""}] }
pipeline:
  - plugin: spf
  - plugin: dkim
  - plugin: dmarc
  - plugin: auth-results
rules:
  - name: envelope
    when: { dmarc.result: { ne: no-such-result } }
    action: { addHeader: "X-Envelope: {sender} {helo} {client.name} {dmarc.fromDomain} {spf.result}" }
routes:
  - to: "${delivery.target === "maildir" ? "maildir:./maildir" : `smtp://127.0.0.1:${hopPort}`}"
delivery: { mode: ${delivery.mode} }
`;
}

type Delivery = (typeof DELIVERIES)[keyof typeof DELIVERIES];

/**
 * A DNS server, a next hop and a gateway delivering as `delivery` says, started and stopped around
 * the describe block that calls this; with the header fields we add in the order we add them.
 */
function gatewayDelivering(delivery: Delivery, trusted: boolean) {
  let dns: TestDnsServer;
  let hop: NextHop;
  let gw: TestGateway;
  before(async () => {
    dns = await startDnsServer(ZONE);
    hop = await startNextHop();
    gw = await startGateway(policyFor(delivery, hop.port, trusted), { dnsServers: [dns.address] });
  });
  after(async () => {
    await gw.stop();
    await hop.close();
    await dns.close();
  });
  return {
    port: () => gw.port,
    added: [
      ...(delivery.target === "maildir" ? ["Return-Path"] : []),
      "Received",
      "X-Envelope",
      "Authentication-Results",
    ],
    nextDelivery: deliveries(
      delivery.target,
      () => gw,
      () => hop,
    ),
  };
}

for (const [name, delivery] of Object.entries(DELIVERIES)) {
  describe(`the red team's sender, auth-results and a {sender} header rule: ${name}`, () => {
    const { port, added, nextDelivery } = gatewayDelivering(delivery, false);

    test("no injected field reaches the next hop or the file", async () => {
      const replies = await sendUtf8(port(), HOSTILE_SENDER);
      assert.equal(replies.at(-1)?.code, 250, JSON.stringify(replies));
      const raw = await nextDelivery();
      assertOnlyOurFields(raw, added);
      const header = strictHeader(raw);
      assert.ok(header.values[added.indexOf("X-Envelope")].includes(HOSTILE_SENDER));
      if (delivery.target === "maildir") assert.equal(header.values[0], ` <${HOSTILE_SENDER}>`);
    });
  });
}

/** Raw bytes in the local part that are not UTF-8: a lone continuation byte, a cut sequence, 0xFF. */
const NOT_UTF8 = [Buffer.from([0x80]), Buffer.from([0xc4]), Buffer.from([0xff]), Buffer.from([0xed, 0xa0, 0x80])];

describe("envelope addresses smtp-server would have decoded to U+FFFD", () => {
  let hop: NextHop;
  let gw: TestGateway;
  before(async () => {
    hop = await startNextHop();
    gw = await startGateway(policyFor(DELIVERIES["proxy mode to a next hop"], hop.port, true));
  });
  after(async () => {
    await gw.stop();
    await hop.close();
  });

  test("bytes that are not UTF-8 in MAIL or RCPT get 553 5.6.7, and the session goes on", async () => {
    for (const bad of NOT_UTF8) {
      const client = await connectAs(gw.port, "203.0.113.10");
      await client.command("EHLO client.test");
      client.write(Buffer.concat([Buffer.from("MAIL FROM:<a"), bad, Buffer.from("@good.test> SMTPUTF8\r\n")]));
      assert.equal((await client.reply()).raw, "553 5.6.7 Address is not valid UTF-8");
      assert.equal((await client.command("MAIL FROM:<a@good.test> SMTPUTF8")).code, 250);
      client.write(Buffer.concat([Buffer.from("RCPT TO:<b"), bad, Buffer.from("@example.test>\r\n")]));
      assert.equal((await client.reply()).raw, "553 5.6.7 Address is not valid UTF-8");
      assert.equal((await client.command("RCPT TO:<b@example.test>")).code, 250);
      await client.quit();
    }
  });

  test("a non-ASCII address without SMTPUTF8 gets 553 5.6.7; with it, 250", async () => {
    const client = await connectAs(gw.port, "203.0.113.10");
    await client.command("EHLO client.test");
    assert.equal(
      (await client.command("MAIL FROM:<jörg@good.test>")).raw,
      "553 5.6.7 Non-ASCII address requires SMTPUTF8",
    );
    assert.equal((await client.command("MAIL FROM:<a@good.test>")).code, 250);
    assert.equal(
      (await client.command("RCPT TO:<jörg@example.test>")).raw,
      "553 5.6.7 Non-ASCII address requires SMTPUTF8",
    );
    await client.command("RSET");
    assert.equal((await client.command("MAIL FROM:<jörg@good.test> SMTPUTF8")).code, 250);
    assert.equal((await client.command("RCPT TO:<jörg@bücher.example>")).code, 250);
    await client.quit();
  });
});

const SEED = Number(process.env.PORTCULLIS_SEED ?? 6122026);
const TRANSACTIONS = Number(process.env.PORTCULLIS_PROPERTY_TRANSACTIONS ?? 150);

/** The fields of one generated transaction: every one chosen by the client. */
interface HostileTransaction {
  readonly helo: string;
  readonly local: string;
  readonly senderDomain: string;
  readonly recipientLocal: string;
  readonly recipientDomain: string;
  readonly fromHeader: string;
  readonly subject: string;
}

/**
 * What the address parser refuses in an unquoted local part anyway: most local parts leave these
 * out, so that most transactions get as far as the header fields we write.
 */
const ADDRESS_SPECIALS: ReadonlySet<number> = new Set([
  ...LINE_ENDS,
  ...' <>"\\(),:;@[]'.split("").map((char) => char.charCodeAt(0)),
  ...Array.from({ length: 0x20 }, (_, i) => i),
  ...Array.from({ length: 0x21 }, (_, i) => 0x7f + i),
]);

function generate(random: () => number): HostileTransaction {
  // CR and LF would end the command or the line on the wire: that is another command, not this field.
  const text = (maxLength = 24) => hostileText(random, { exclude: LINE_ENDS, maxLength });
  // smtp-server splits a command's words at any Unicode white space, and RFC 5321 caps a local part at 64 octets.
  const parsable = () => hostileText(random, { exclude: ADDRESS_SPECIALS, maxLength: 12 }).replace(/\s/gu, "") || "a";
  const local = () => (random() < 0.2 ? text() : parsable());
  const domain = () => (random() < 0.5 ? "example.test" : random() < 0.6 ? "bücher.example" : text(12));
  return {
    helo: random() < 0.5 ? "client.test" : text(),
    local: local(),
    senderDomain: domain(),
    recipientLocal: local(),
    recipientDomain: domain(),
    fromHeader: `${text()} <${text()}@${domain()}>`,
    subject: text(60),
  };
}

for (const [name, delivery] of Object.entries(DELIVERIES)) {
  describe(`seeded hostile text in every client field (seed ${SEED}, ${TRANSACTIONS} transactions): ${name}`, () => {
    const { port, added, nextDelivery } = gatewayDelivering(delivery, true);

    test("every reply is one well-formed line; every delivered header holds exactly our fields and the client's", async (t) => {
      const random = seededRandom(SEED);
      let accepted = 0;
      const refusals = new Map<string, number>();
      for (let i = 0; i < TRANSACTIONS; i++) {
        const input = generate(random);
        const body = `Body of ${i}.\r\n`;
        const data = `From: ${input.fromHeader}\r\nTo: x@example.test\r\nSubject: ${input.subject}\r\n\r\n${body}`;
        const client = await connectAs(port(), "203.0.113.10");
        const replies = [];
        try {
          const ehlo = await client.command(`EHLO ${input.helo}`);
          // An EHLO's 250 is a list of extensions, without enhanced codes (RFC 2034 §3).
          if (ehlo.code !== 250) {
            replies.push(ehlo);
            await client.command("EHLO client.test");
          }
          const mail = await client.command(`MAIL FROM:<${input.local}@${input.senderDomain}> SMTPUTF8`);
          const rcpt = await client.command(`RCPT TO:<${input.recipientLocal}@${input.recipientDomain}>`);
          replies.push(mail, rcpt);
          if (mail.code === 250 && rcpt.code === 250 && (await client.command("DATA")).code === 354) {
            const end = await client.command(`${data}.`);
            replies.push(end);
            if (end.code === 250) {
              accepted++;
              const raw = await nextDelivery();
              const header = strictHeader(raw);
              assert.deepEqual(header.names, [...added, "From", "To", "Subject"], JSON.stringify(input));
              assert.equal(header.body.toString(), body);
            }
          }
        } finally {
          await client.quit().catch(() => client.destroy());
        }
        for (const reply of replies.filter((reply) => reply.code >= 400)) {
          refusals.set(reply.raw, (refusals.get(reply.raw) ?? 0) + 1);
        }
        for (const reply of replies) {
          // The client reads replies as latin1: a reply line is UTF-8 with no control character in it.
          const line = Buffer.from(reply.raw, "latin1").toString("utf8");
          assert.match(line, /^\d{3} [245]\.\d{1,3}\.\d{1,3} /, JSON.stringify({ input, line }));
          // biome-ignore lint/suspicious/noControlCharactersInRegex: finding them is the point
          assert.doesNotMatch(line, /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/, JSON.stringify({ input, line }));
        }
      }
      t.diagnostic(`${accepted} of ${TRANSACTIONS} accepted and checked; refusals: ${JSON.stringify([...refusals])}`);
      // Enough got through for the header check to have meant something.
      assert.ok(accepted >= TRANSACTIONS / 4, `only ${accepted} of ${TRANSACTIONS} accepted`);
    });
  });
}
