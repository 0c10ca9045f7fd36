/**
 * PROXY v1/v2 and XCLIENT: only trusted peers may name another client address, and that address
 * then drives every check (here: relay access and the connect log); from anyone else the claim is
 * refused. Plus the v2 parser as a pure table.
 */
import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parseProxyV2 } from "../../core/smtp/proxy-v2.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { calls } from "../fixtures/plugins/recorder.js";
import { SmtpTestClient } from "../fixtures/smtp-client.js";
import { proxyV2Header, proxyV2Raw } from "./proxy-header.js";

const recorder = fileURLToPath(new URL("../fixtures/plugins/recorder.ts", import.meta.url));
const GATEWAY_END = { address: "192.0.2.1", port: 25 };

/** Whether the gateway lets this connection relay to another domain (relay.networks decides). */
async function mayRelay(client: SmtpTestClient): Promise<boolean> {
  await client.command("EHLO client.test");
  assert.equal((await client.command("MAIL FROM:<a@sender.test>")).code, 250);
  const rcpt = await client.command("RCPT TO:<x@other.test>");
  await client.quit();
  return rcpt.code === 250;
}

function connectedClients(gw: TestGateway): unknown[] {
  return gw.logs.filter((line) => line.event === "connect").map((line) => line.client);
}

function policy(extra: string): string {
  return `
version: 1
server: { ${extra} }
relay: { domains: [example.test], networks: [192.0.2.0/24, "2001:db8::/32"] }
pipeline: [{ plugin: ${recorder}, id: r }]
routes: [{ to: discard }]
`;
}

describe("PROXY v2 from a trusted balancer", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startGateway(policy("proxyProtocol: true"));
  });
  after(async () => {
    await gw.stop();
  });

  test("IPv4 and IPv6 sources drive relay access; a LOCAL header keeps the peer address", async () => {
    const send = async (header: Buffer) => {
      const client = await SmtpTestClient.connect(gw.port, { greeting: false });
      client.write(header);
      client.greeting = await client.reply();
      return mayRelay(client);
    };
    assert.equal(await send(proxyV2Header({ address: "192.0.2.10", port: 40000 }, GATEWAY_END)), true);
    assert.equal(await send(proxyV2Header({ address: "198.51.100.7", port: 40000 }, GATEWAY_END)), false);
    assert.equal(
      await send(proxyV2Header({ address: "2001:db8::5", port: 40000 }, { address: "::1", port: 25 })),
      true,
    );
    assert.equal(await send(proxyV2Raw(0x20, 0x00, Buffer.alloc(0))), false);
    assert.deepEqual(connectedClients(gw), ["192.0.2.10", "198.51.100.7", "2001:db8::5", "127.0.0.1"]);
  });

  test("the v1 text header still works next to v2", async () => {
    const client = await SmtpTestClient.connect(gw.port, { proxy: "PROXY TCP4 192.0.2.77 192.0.2.1 40000 25" });
    assert.equal(await mayRelay(client), true);
    assert.equal(connectedClients(gw).at(-1), "192.0.2.77");
  });

  test("a malformed v2 header closes the connection before any greeting", async () => {
    const client = await SmtpTestClient.connect(gw.port, { greeting: false });
    client.write(proxyV2Raw(0x31, 0x11, Buffer.alloc(12)));
    await client.waitClosed();
    await assert.rejects(client.reply(), /connection closed/);
  });
});

describe("PROXY from an untrusted peer", () => {
  test("the header is not read: it is an unknown command, and the peer's own address decides", async () => {
    const gw = await startGateway(policy("proxyProtocol: [203.0.113.0/24]"));
    try {
      const client = await SmtpTestClient.connect(gw.port);
      assert.equal((await client.command("PROXY TCP4 192.0.2.10 192.0.2.1 40000 25")).code, 500);
      assert.equal(await mayRelay(client), false);
      assert.deepEqual(connectedClients(gw), ["127.0.0.1"]);
    } finally {
      await gw.stop();
    }
  });
});

describe("XCLIENT", () => {
  beforeEach(() => {
    calls.length = 0;
  });

  test("from a trusted peer: the forwarded address reruns the connect phase and drives relay access", async () => {
    const gw = await startGateway(policy("xclient: true"));
    try {
      const client = await SmtpTestClient.connect(gw.port);
      assert.ok((await client.command("EHLO proxy.test")).lines.some((line) => line.startsWith("XCLIENT")));
      assert.match((await client.command("XCLIENT ADDR=192.0.2.10 NAME=mail.sender.test")).raw, /^220 /);
      // Once handed over, the forwarded client cannot name yet another address.
      assert.ok(!(await client.command("EHLO client.test")).lines.some((line) => line.startsWith("XCLIENT")));
      assert.equal(await mayRelay(client), true);
      assert.deepEqual(connectedClients(gw), ["127.0.0.1", "192.0.2.10"]);
      assert.equal(calls.filter((call) => call === "r:connect").length, 2);
      for (let i = 0; i < 100 && gw.gateway.openSessions().sessions > 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      assert.deepEqual(gw.gateway.openSessions(), { sessions: 0, ipSlots: 0 });
    } finally {
      await gw.stop();
    }
  });

  test("from an untrusted peer: not offered, refused with 550, and the peer's own address decides", async () => {
    const gw = await startGateway(policy("xclient: [203.0.113.0/24]"));
    try {
      const client = await SmtpTestClient.connect(gw.port);
      assert.ok(!(await client.command("EHLO proxy.test")).lines.some((line) => line.startsWith("XCLIENT")));
      assert.equal((await client.command("XCLIENT ADDR=192.0.2.10")).raw, "550 5.7.0 Error: Not allowed");
      assert.equal(await mayRelay(client), false);
      assert.deepEqual(connectedClients(gw), ["127.0.0.1"]);
    } finally {
      await gw.stop();
    }
  });
});

describe("PROXY v2 parser", () => {
  const v4 = proxyV2Header({ address: "192.0.2.10", port: 40000 }, GATEWAY_END);
  const cases: Record<string, [Buffer, ReturnType<typeof parseProxyV2>]> = {
    "a TCP4 header": [v4, { kind: "header", length: 28, source: { address: "192.0.2.10", port: 40000 } }],
    "a TCP6 header, canonical address": [
      proxyV2Header({ address: "2001:DB8:0:0:0:0:0:5", port: 1 }, { address: "::1", port: 25 }),
      { kind: "header", length: 52, source: { address: "2001:db8::5", port: 1 } },
    ],
    "LOCAL (health check)": [proxyV2Raw(0x20, 0x00, Buffer.alloc(0)), { kind: "header", length: 16, source: null }],
    "UNIX family: no client address": [
      proxyV2Raw(0x21, 0x31, Buffer.alloc(216)),
      { kind: "header", length: 232, source: null },
    ],
    "only part of the fixed header": [v4.subarray(0, 10), { kind: "incomplete", need: 16 }],
    "fixed header without its addresses": [v4.subarray(0, 20), { kind: "incomplete", need: 28 }],
    "version 3": [proxyV2Raw(0x31, 0x11, Buffer.alloc(12)), { kind: "invalid", reason: "unsupported version" }],
    "command 2": [proxyV2Raw(0x22, 0x11, Buffer.alloc(12)), { kind: "invalid", reason: "unknown command" }],
    "a TCP4 block too short": [
      proxyV2Raw(0x21, 0x11, Buffer.alloc(4)),
      { kind: "invalid", reason: "address block too short" },
    ],
    "a huge length": [proxyV2Raw(0x21, 0x11, Buffer.alloc(4000)), { kind: "invalid", reason: "header too long" }],
    "a broken signature": [Buffer.from("\r\n\r\n\0\r\nQUIX\n!!!!"), { kind: "invalid", reason: "bad signature" }],
  };
  for (const [name, [bytes, expected]] of Object.entries(cases)) {
    test(name, () => assert.deepEqual(parseProxyV2(bytes), expected));
  }
});
