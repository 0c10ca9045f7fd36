/**
 * The relay core through real sockets: pipeline order, early exit, per-recipient decisions, hook
 * deadlines and errors, forwarding to a next hop byte for byte, next-hop failures, relay access.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPolicy } from "../../app/catalogue.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { closedPort, type NextHop } from "../fixtures/next-hop.js";
import { calls } from "../fixtures/plugins/recorder.js";
import { type Relay, startRelay } from "../fixtures/relay.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";

const recorder = fileURLToPath(new URL("../fixtures/plugins/recorder.ts", import.meta.url));

function message(body: string): string {
  return `From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: test\r\nMessage-ID: <1@sender.test>\r\n\r\n${body}`;
}

async function send(port: number, input: { from?: string; to: string[]; data?: string | Buffer; helo?: string }) {
  const client = await SmtpTestClient.connect(port);
  try {
    return await client.transaction({
      helo: input.helo,
      from: input.from ?? "a@sender.test",
      to: input.to,
      data: input.data ?? message("hello\r\n"),
    });
  } finally {
    await client.quit().catch(() => client.destroy());
  }
}

describe("pipeline through the wire", () => {
  let relay: Relay;
  let gw: TestGateway;

  before(async () => {
    relay = await startRelay(
      (hop) => `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
hooks: { timeout: 300ms }
pipeline:
  - { plugin: ${recorder}, id: first, rejectRecipient: blocked@example.test }
  - { plugin: ${recorder}, id: second, hangIn: data }
  - plugin: ${recorder}
    id: third
    throwIn: queue
    onError: { defer: "451 4.3.0 third is broken" }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
      { hop: { rejectRecipients: { "gone@example.test": "550 5.1.1 no such user here" } } },
    );
    ({ gw } = relay);
  });
  after(() => relay.stop());
  beforeEach(() => {
    calls.length = 0;
  });

  test("hooks run in declared order and a reject at rcpt stops later rcpt hooks", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
    const blocked = await client.command("RCPT TO:<blocked@example.test>");
    assert.equal(blocked.raw, "550 5.1.1 Recipient blocked@example.test unwanted from 127.0.0.1");
    const ok = await client.command("RCPT TO:<ok@example.test>");
    assert.equal(ok.code, 250);
    await client.quit();
    assert.deepEqual(calls, [
      "first:connect",
      "second:connect",
      "third:connect",
      "first:helo",
      "second:helo",
      "third:helo",
      "first:mail",
      "second:mail",
      "third:mail",
      "first:rcpt:blocked@example.test",
      "first:rcpt:ok@example.test",
      "second:rcpt:ok@example.test",
      "third:rcpt:ok@example.test",
    ]);
  });

  test("a hook that hangs past its deadline yields 451 4.3.0 and the server keeps serving", async () => {
    const result = await send(gw.port, { to: ["ok@example.test"] });
    assert.equal(result.data?.raw, "451 4.3.0 Temporary policy failure, try again later");
    const summary = gw.transactions().at(-1)!;
    assert.equal(summary.outcome, "deferred");
    assert.equal(summary.decidedBy, "plugin:" + recorder);
    const trace = summary.trace as Array<{ phase: string; error?: string }>;
    assert.equal(trace.find((t) => t.phase === "data" && t.error)?.error, "timeout");
    // The same gateway still answers new clients.
    const client = await SmtpTestClient.connect(gw.port);
    assert.equal(client.greeting.code, 220);
    await client.quit();
  });
});

describe("a hook that oversleeps its deadline", () => {
  test("finds its signal aborted when it looks after the deadline, and the client got 451 4.3.0", async () => {
    const { gw, stop } = await startRelay(
      (hop) => `
version: 1
relay: { domains: [example.test] }
hooks: { timeout: 200ms }
pipeline:
  - { plugin: ${recorder}, id: late, sleepIn: mail, sleepMs: 500 }
routes:
  - { to: "smtp://127.0.0.1:${hop.port}" }
`,
    );
    try {
      calls.length = 0;
      const client = await SmtpTestClient.connect(gw.port);
      await client.command("EHLO client.test");
      assert.equal(
        (await client.command("MAIL FROM:<a@sender.test>")).raw,
        "451 4.3.0 Temporary policy failure, try again later",
      );
      await client.quit();
      await eventually(() => calls.some((call) => call.startsWith("late:mail:signal")), "the hook woke up");
      assert.ok(calls.includes("late:mail:signal aborted (Error: timed out after 200 ms)"), calls.join(", "));
    } finally {
      await stop();
    }
  });
});

describe("a throwing hook", () => {
  test("yields the entry's onError reply and never crashes the process", async () => {
    const { hop, gw, stop } = await startRelay(
      (hop) => `
version: 1
relay: { domains: [example.test] }
pipeline:
  - plugin: ${recorder}
    id: thrower
    throwIn: mail
    onError: { defer: "451 4.3.0 thrower is broken" }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
    );
    try {
      for (let i = 0; i < 3; i++) {
        const result = await send(gw.port, { to: ["x@example.test"] });
        assert.equal(result.mail.raw, "451 4.3.0 thrower is broken");
      }
      assert.equal(hop.messages.length, 0);
    } finally {
      await stop();
    }
  });
});

describe("forwarding to the next hop (proxy mode)", () => {
  let relay: Relay;
  let hop: NextHop;
  let gw: TestGateway;

  before(async () => {
    relay = await startRelay(
      (hop) => `
version: 1
server: { hostname: gw.test }
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
      { hop: { rejectRecipients: { "gone@example.test": "550 5.1.1 no such user here" } } },
    );
    ({ hop, gw } = relay);
  });
  after(() => relay.stop());

  test("the message arrives byte for byte after one Received header", async () => {
    const body = Buffer.concat([
      Buffer.from(message(".leading dot\r\n..two dots\r\n.\r\nx\r\n"), "latin1"),
      Buffer.from([0xe4, 0xf6, 0xfc, 0x0d, 0x0a]),
      Buffer.from(`${"x".repeat(998)}\r\n`),
      Buffer.from("last line\r\n"),
    ]);
    const before = hop.messages.length;
    const result = await send(gw.port, { to: ["b@example.test"], data: body, helo: "client.test" });
    assert.equal(result.data?.code, 250);
    assert.match(result.data!.raw, /^250 2\.0\.0 /);
    const [received] = (await hop.waitForMessages(before + 1)).slice(before);
    assert.equal(received.from, "a@sender.test");
    assert.deepEqual(received.to, ["b@example.test"]);
    const raw = received.raw;
    const headerEnd = raw.indexOf("\r\n", raw.indexOf("\r\n") + 1);
    const trace = raw.subarray(0, raw.indexOf(Buffer.from("From:"))).toString("latin1");
    assert.match(
      trace,
      /^Received: from client\.test \(\[127\.0\.0\.1\]\) by gw\.test with ESMTP\r\n\tid \S+ for <b@example\.test>; [^\r\n]+\r\n$/,
    );
    assert.ok(headerEnd > 0);
    assert.deepEqual(raw.subarray(trace.length), body);
  });

  test("one recipient refused by the next hop fails alone; the other is delivered", async () => {
    const before = hop.messages.length;
    const result = await send(gw.port, { to: ["gone@example.test", "here@example.test"] });
    assert.equal(result.data?.code, 250);
    const [received] = (await hop.waitForMessages(before + 1)).slice(before);
    assert.deepEqual(received.to, ["here@example.test"]);
    const summary = gw.transactions().at(-1)!;
    assert.deepEqual(summary.delivery, [
      { to: "gone@example.test", status: "failed", reply: "550 5.1.1 no such user here" },
      { to: "here@example.test", status: "delivered", reply: (summary.delivery as Array<{ reply: string }>)[1].reply },
    ]);
  });

  test("every recipient refused by the next hop → the client gets the next hop's 550", async () => {
    const result = await send(gw.port, { to: ["gone@example.test"] });
    assert.equal(result.data?.raw, "550 5.1.1 no such user here");
  });
});

describe("next hop unavailable", () => {
  test("a refused connection → 451 4.4.1 and nothing acknowledged", async () => {
    const port = await closedPort();
    const gw = await startGateway(`
version: 1
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${port}" }]
`);
    try {
      const result = await send(gw.port, { to: ["b@example.test"] });
      assert.equal(result.data?.code, 451);
      assert.match(result.data!.raw, /^451 4\.4\.1 /);
      assert.equal(gw.transactions().at(-1)!.outcome, "deferred");
    } finally {
      await gw.stop();
    }
  });

  test("a next hop that rejects the whole message with 550 → 550", async () => {
    const { gw, stop } = await startRelay(
      (hop) => `
version: 1
relay: { domains: [example.test] }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
      { hop: { rejectData: "550 5.7.1 content refused" } },
    );
    try {
      const result = await send(gw.port, { to: ["b@example.test"] });
      assert.equal(result.data?.raw, "550 5.7.1 content refused");
    } finally {
      await stop();
    }
  });
});

describe("relay access through the wire", () => {
  let relay: Relay;
  let gw: TestGateway;

  before(async () => {
    // The test client connects from 127.0.0.1, which is deliberately not a relay network here.
    relay = await startRelay(
      (hop) => `
version: 1
relay: { domains: [example.test, bücher.example], networks: [192.0.2.0/24], postmaster: "maildir:./postmaster" }
routes: [{ to: "smtp://127.0.0.1:${hop.port}" }]
`,
    );
    ({ gw } = relay);
  });
  after(() => relay.stop());

  const refused: Array<[string, string]> = [
    ["other.test", "user@other.test"],
    ["percent hack", "user%other.test@example.test"],
    ["source route", "@example.test:user@other.test"],
    ["quoted @", '"user@other.test"@example.test'],
    ["quoted %", '"user%other.test"@example.test'],
    ["IP literal", "user@[192.0.2.1]"],
    ["bang path", "other.test!user@example.test"],
  ];
  for (const [name, address] of refused) {
    test(`refuses ${name}`, async () => {
      const client = await SmtpTestClient.connect(gw.port);
      await client.command("EHLO client.test");
      await client.command("MAIL FROM:<a@sender.test>");
      const reply = await client.command(`RCPT TO:<${address}>`);
      // smtp-server's own parser already refuses some forms (501); either way nothing is relayed.
      assert.match(reply.raw, /^(550 5\.7\.1 Relaying denied|501 5\.1\.3 .*)$/);
      await client.quit();
    });
  }

  const badSyntax = ["user@other.test@example.test", "user@example.test."];
  for (const address of badSyntax) {
    test(`answers ${address} with 501 5.1.3`, async () => {
      const client = await SmtpTestClient.connect(gw.port);
      await client.command("EHLO client.test");
      await client.command("MAIL FROM:<a@sender.test>");
      const reply = await client.command(`RCPT TO:<${address}>`);
      assert.match(reply.raw, /^501 5\.1\.3 /);
      await client.quit();
    });
  }

  test("accepts mail for relay domains in any case and in IDN or punycode form", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<a@sender.test>");
    for (const address of ["u@EXAMPLE.test", "u@xn--bcher-kva.example", "postmaster"]) {
      assert.equal((await client.command(`RCPT TO:<${address}>`)).code, 250, address);
    }
    await client.quit();
  });

  test("accepts senders from domains with all-digit labels (163.com)", async () => {
    const client = await SmtpTestClient.connect(gw.port);
    await client.command("EHLO client.test");
    assert.equal((await client.command("MAIL FROM:<someone@163.com>")).code, 250);
    assert.equal((await client.command("RCPT TO:<u@example.test>")).code, 250);
    await client.quit();
  });
});

describe("connection bookkeeping", () => {
  test("sessions and per-IP slots return to zero after QUIT and after a reset", async () => {
    const gw = await startGateway("version: 1\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n");
    try {
      const clients = await Promise.all([1, 2, 3].map(() => SmtpTestClient.connect(gw.port)));
      assert.equal(gw.gateway.openSessions().sessions, 3);
      await clients[0].quit();
      clients[1].socket.resetAndDestroy();
      await clients[2].command("EHLO x.test");
      await clients[2].command("MAIL FROM:<a@sender.test>");
      clients[2].socket.resetAndDestroy();
      for (let i = 0; i < 100 && gw.gateway.openSessions().sessions > 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.deepEqual(gw.gateway.openSessions(), { sessions: 0, ipSlots: 0 });
    } finally {
      await gw.stop();
    }
  });

  test("a client that vanishes in the middle of a large DATA: aborted, its spill file removed, nothing kept", async () => {
    const gw = await startGateway("version: 1\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n");
    try {
      const client = await SmtpTestClient.connect(gw.port);
      await client.command("EHLO client.test");
      await client.command("MAIL FROM:<a@sender.test>");
      await client.command("RCPT TO:<b@example.test>");
      assert.equal((await client.command("DATA")).code, 354);
      // More than the in-memory limit (256 KiB), so the message is being written to the spool's tmp/.
      const line = `${"x".repeat(998)}\r\n`;
      client.socket.write(`Subject: big\r\n\r\n${line.repeat(400)}`);
      const tmp = join(gw.dir, "var/spool/tmp");
      await eventually(async () => (await readdir(tmp).catch(() => [])).length === 1, "a spill file");
      client.socket.resetAndDestroy();
      await eventually(() => gw.transactions().at(-1)?.outcome === "aborted", "the transaction aborted");
      await eventually(async () => (await readdir(tmp)).length === 0, "the spill file removed");
      await eventually(() => gw.gateway.openSessions().sessions === 0, "the session closed");
      const next = await SmtpTestClient.connect(gw.port);
      assert.equal(next.greeting.code, 220);
      await next.quit();
    } finally {
      await gw.stop();
    }
  });
});

describe("PROXY protocol from a trusted load balancer", () => {
  test("the client address from the header drives relay access", async () => {
    const gw = await startGateway(`
version: 1
server: { proxyProtocol: true }
relay: { domains: [example.test], networks: [192.0.2.0/24] }
routes: [{ to: discard }]
`);
    try {
      const inside = await SmtpTestClient.connect(gw.port, { proxy: "PROXY TCP4 192.0.2.10 192.0.2.1 40000 25" });
      await inside.command("EHLO client.test");
      await inside.command("MAIL FROM:<a@sender.test>");
      assert.equal((await inside.command("RCPT TO:<x@other.test>")).code, 250);
      await inside.quit();
      const outside = await SmtpTestClient.connect(gw.port, { proxy: "PROXY TCP4 198.51.100.7 192.0.2.1 40000 25" });
      await outside.command("EHLO client.test");
      await outside.command("MAIL FROM:<a@sender.test>");
      assert.equal((await outside.command("RCPT TO:<x@other.test>")).raw, "550 5.7.1 Relaying denied");
      await outside.quit();
      const connects = gw.logs.filter((line) => line.event === "connect").map((line) => line.client);
      assert.deepEqual(connects, ["192.0.2.10", "198.51.100.7"]);
    } finally {
      await gw.stop();
    }
  });
});

describe("reload", () => {
  test("keeps the command line's --dns override", async () => {
    const gw = await startGateway("version: 1\nrelay: { domains: [example.test] }\nroutes: [{ to: discard }]\n", {
      dnsServers: ["127.0.0.1:5399"],
    });
    try {
      assert.deepEqual(gw.gateway.runtime.config.dns.servers, ["127.0.0.1:5399"]);
      await gw.gateway.reload(await loadPolicy(join(gw.dir, "policy.yaml")));
      assert.deepEqual(gw.gateway.runtime.config.dns.servers, ["127.0.0.1:5399"]);
    } finally {
      await gw.stop();
    }
  });
});
