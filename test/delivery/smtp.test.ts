import assert from "node:assert/strict";
import { Socket } from "node:net";
import { Readable } from "node:stream";
import { before, describe, it } from "node:test";
import type { DeliveryResult } from "../../core/delivery/result.js";
import { deliverSmtp, type SmtpDeliveryOptions } from "../../core/delivery/smtp.js";
import {
  closedPort,
  type NextHop,
  selfSignedCertificate,
  startNextHop,
  startSilentServer,
} from "../fixtures/next-hop.js";

const OPTIONS: SmtpDeliveryOptions = { name: "gw.portcullis.test", timeoutMs: 10_000 };
const SIMPLE = Buffer.from("From: a@a.test\r\nTo: b@b.test\r\nSubject: hi\r\n\r\nHello\r\n");

function summary(result: DeliveryResult): Array<[string, string, number, string]> {
  return result.recipients.map((r) => [r.recipient, r.status, r.reply.code, r.reply.enhanced]);
}

/** What the sockets of this process pass to the kernel from now on: one entry per write or writev. */
function recordSocketWrites(): { writes: string[]; restore(): void } {
  const writes: string[] = [];
  const proto = Socket.prototype as unknown as {
    _write: (chunk: Buffer | string, encoding: string, done: () => void) => void;
    _writev: (chunks: Array<{ chunk: Buffer | string }>, done: () => void) => void;
  };
  const { _write: write, _writev: writev } = proto;
  proto._write = function (this: Socket, chunk, encoding, done) {
    writes.push(String(chunk));
    return write.call(this, chunk, encoding, done);
  };
  proto._writev = function (this: Socket, chunks, done) {
    writes.push(chunks.map(({ chunk }) => String(chunk)).join(""));
    return writev.call(this, chunks, done);
  };
  return {
    writes,
    restore() {
      proto._write = write;
      proto._writev = writev;
    },
  };
}

async function withHop<T>(options: Parameters<typeof startNextHop>[0], run: (hop: NextHop) => Promise<T>): Promise<T> {
  const hop = await startNextHop(options);
  try {
    return await run(hop);
  } finally {
    await hop.close();
  }
}

describe("deliverSmtp to a live next hop", () => {
  it("forwards the message byte for byte: dot lines, 8-bit bytes, a 998-character line, CRLF", async () => {
    const message = Buffer.concat([
      Buffer.from("From: a@a.test\r\nTo: b@b.test\r\nSubject: bytes\r\n\r\n"),
      Buffer.from(".starts with a dot\r\n..two dots\r\n.\r\nalone above\r\n"),
      Buffer.from([0xc3, 0xa9, 0xff, 0x80, 0x0d, 0x0a]),
      Buffer.from(`${"x".repeat(998)}\r\n`),
      Buffer.from("last line\r\n"),
    ]);
    await withHop({}, async (hop) => {
      const result = await deliverSmtp(
        { host: hop.host, port: hop.port },
        { from: "a@a.test", to: ["b@b.test"] },
        Readable.from([message.subarray(0, 70), message.subarray(70)]),
        OPTIONS,
      );
      assert.deepEqual(summary(result), [["b@b.test", "delivered", 250, "2.0.0"]]);
      assert.equal(result.response, "250 2.0.0 queued");
      assert.equal(result.nextHop, `127.0.0.1:${hop.port}`);
      assert.equal(result.recipients[0].nextHop, result.nextHop);
      const [received] = await hop.waitForMessages(1);
      assert.ok(received.raw.equals(message), "next hop received exactly the bytes sent");
      assert.equal(received.from, "a@a.test");
      assert.equal(received.helo, "gw.portcullis.test");
    });
  });

  it("sends the null sender as MAIL FROM:<>", async () => {
    await withHop({}, async (hop) => {
      const result = await deliverSmtp(
        { host: hop.host, port: hop.port },
        { from: "", to: ["b@b.test"] },
        SIMPLE,
        OPTIONS,
      );
      assert.equal(result.recipients[0].status, "delivered");
      assert.equal(hop.messages[0].from, "");
    });
  });

  it("reports per recipient: one rejected (failed), one deferred, one delivered", async () => {
    const rejectRecipients = { "gone@b.test": "550 5.1.1 no such user", "full@b.test": "452 4.2.2 mailbox full" };
    await withHop({ rejectRecipients }, async (hop) => {
      const result = await deliverSmtp(
        { host: hop.host, port: hop.port },
        { from: "a@a.test", to: ["gone@b.test", "ok@b.test", "full@b.test"] },
        SIMPLE,
        OPTIONS,
      );
      assert.deepEqual(summary(result), [
        ["gone@b.test", "failed", 550, "5.1.1"],
        ["ok@b.test", "delivered", 250, "2.0.0"],
        ["full@b.test", "deferred", 452, "4.2.2"],
      ]);
      assert.equal(result.recipients[0].reply.text, "no such user");
      assert.deepEqual(hop.messages[0].to, ["ok@b.test"]);
    });
  });

  it("fails or defers everyone when all recipients are rejected", async () => {
    await withHop(
      { rejectRecipients: { "x@b.test": "550 5.1.1 unknown", "y@b.test": "450 4.2.1 try later" } },
      async (hop) => {
        const result = await deliverSmtp(
          { host: hop.host, port: hop.port },
          { from: "a@a.test", to: ["x@b.test", "y@b.test"] },
          SIMPLE,
          OPTIONS,
        );
        assert.deepEqual(summary(result), [
          ["x@b.test", "failed", 550, "5.1.1"],
          ["y@b.test", "deferred", 450, "4.2.1"],
        ]);
        assert.equal(hop.messages.length, 0);
      },
    );
  });

  it("gives every recipient the reply to a refused MAIL FROM", async () => {
    for (const [rejectMail, status] of [
      ["550 5.7.1 sender blocked", "failed"],
      ["451 4.7.1 try again", "deferred"],
    ] as const) {
      await withHop({ rejectMail }, async (hop) => {
        const result = await deliverSmtp(
          { host: hop.host, port: hop.port },
          { from: "a@a.test", to: ["x@b.test", "y@b.test"] },
          SIMPLE,
          OPTIONS,
        );
        const code = Number(rejectMail.slice(0, 3));
        const enhanced = rejectMail.slice(4, 9);
        assert.deepEqual(summary(result), [
          ["x@b.test", status, code, enhanced],
          ["y@b.test", status, code, enhanced],
        ]);
        assert.equal(result.recipients[0].reply.text, rejectMail.slice(10));
      });
    }
  });

  it("applies a refused DATA to the accepted recipients, keeping RCPT refusals", async () => {
    for (const [rejectData, status] of [
      ["554 5.6.0 content rejected", "failed"],
      ["451 4.3.0 spool full", "deferred"],
    ] as const) {
      await withHop({ rejectData, rejectRecipients: { "gone@b.test": "550 5.1.1 no such user" } }, async (hop) => {
        const result = await deliverSmtp(
          { host: hop.host, port: hop.port },
          { from: "a@a.test", to: ["ok@b.test", "gone@b.test"] },
          SIMPLE,
          OPTIONS,
        );
        assert.deepEqual(summary(result), [
          ["ok@b.test", status, Number(rejectData.slice(0, 3)), rejectData.slice(4, 9)],
          ["gone@b.test", "failed", 550, "5.1.1"],
        ]);
        assert.equal(result.response, rejectData);
      });
    }
  });

  it("reads LMTP's one DATA reply per recipient", async () => {
    const options = {
      lmtp: true,
      rejectRecipients: { "gone@b.test": "550 5.1.1 no such user" },
      rejectDataRecipients: { "full@b.test": "452 4.2.2 over quota", "bad@b.test": "554 5.6.0 refused" },
    };
    await withHop(options, async (hop) => {
      const result = await deliverSmtp(
        { host: hop.host, port: hop.port, lmtp: true },
        { from: "a@a.test", to: ["ok@b.test", "full@b.test", "gone@b.test", "bad@b.test"] },
        SIMPLE,
        OPTIONS,
      );
      assert.deepEqual(summary(result), [
        ["ok@b.test", "delivered", 250, "2.0.0"],
        ["full@b.test", "deferred", 452, "4.2.2"],
        ["gone@b.test", "failed", 550, "5.1.1"],
        ["bad@b.test", "failed", 554, "5.6.0"],
      ]);
      assert.equal(result.recipients[0].reply.text, `Delivered by 127.0.0.1:${hop.port}`);
    });
  });

  it("sends MAIL, RCPT and DATA in one write when the next hop offers PIPELINING, one by one when not", async () => {
    const { writes, restore } = recordSocketWrites();
    const envelopeWrites = async (pipelining: boolean) => {
      writes.length = 0;
      await withHop({ pipelining, rejectRecipients: { "gone@b.test": "550 5.1.1 no such user" } }, async (hop) => {
        const result = await deliverSmtp(
          { host: hop.host, port: hop.port },
          { from: "a@a.test", to: ["b@b.test", "gone@b.test"] },
          SIMPLE,
          OPTIONS,
        );
        // A refusal in the middle of the group still settles each recipient by its own reply.
        assert.deepEqual(summary(result), [
          ["b@b.test", "delivered", 250, "2.0.0"],
          ["gone@b.test", "failed", 550, "5.1.1"],
        ]);
        assert.ok((await hop.waitForMessages(1))[0].raw.equals(SIMPLE));
      });
      return writes.filter((text) => /^(MAIL FROM|RCPT TO|DATA\r\n)/.test(text));
    };
    try {
      assert.deepEqual(await envelopeWrites(true), [
        "MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nRCPT TO:<gone@b.test>\r\nDATA\r\n",
      ]);
      assert.deepEqual(await envelopeWrites(false), [
        "MAIL FROM:<a@a.test>\r\n",
        "RCPT TO:<b@b.test>\r\n",
        "RCPT TO:<gone@b.test>\r\n",
        "DATA\r\n",
      ]);
    } finally {
      restore();
    }
  });

  it("sends the message and the end-of-data line in one write", async () => {
    const { writes, restore } = recordSocketWrites();
    try {
      await withHop({}, async (hop) => {
        const result = await deliverSmtp(
          { host: hop.host, port: hop.port },
          { from: "a@a.test", to: ["b@b.test"] },
          SIMPLE,
          OPTIONS,
        );
        assert.deepEqual(summary(result), [["b@b.test", "delivered", 250, "2.0.0"]]);
        assert.ok((await hop.waitForMessages(1))[0].raw.equals(SIMPLE));
      });
      const body = SIMPLE.toString();
      assert.deepEqual(
        writes.filter((text) => text.startsWith(body) || text === ".\r\n"),
        [`${body}.\r\n`],
      );
    } finally {
      restore();
    }
  });

  it("does not report LMTP success when every recipient failed at DATA", async () => {
    await withHop({ lmtp: true, rejectDataRecipients: { "x@b.test": "552 5.2.2 over quota" } }, async (hop) => {
      const result = await deliverSmtp(
        { host: hop.host, port: hop.port, lmtp: true },
        { from: "a@a.test", to: ["x@b.test"] },
        SIMPLE,
        OPTIONS,
      );
      assert.deepEqual(summary(result), [["x@b.test", "failed", 552, "5.2.2"]]);
    });
  });
});

describe("deliverSmtp when the next hop is not there", () => {
  it("defers with 451 4.4.1 when the connection is refused", async () => {
    const port = await closedPort();
    const result = await deliverSmtp(
      { host: "127.0.0.1", port },
      { from: "a@a.test", to: ["x@b.test", "y@b.test"] },
      SIMPLE,
      OPTIONS,
    );
    assert.deepEqual(summary(result), [
      ["x@b.test", "deferred", 451, "4.4.1"],
      ["y@b.test", "deferred", 451, "4.4.1"],
    ]);
    assert.equal(result.unreachable, true);
    assert.match(result.recipients[0].reply.text, /ECONNREFUSED/);
  });

  it("defers, within its deadline, when the next hop accepts the connection and never greets", async () => {
    const silent = await startSilentServer();
    try {
      const result = await deliverSmtp(
        { host: "127.0.0.1", port: silent.port },
        { from: "a@a.test", to: ["x@b.test"] },
        SIMPLE,
        { ...OPTIONS, timeoutMs: 300 },
      );
      assert.deepEqual(summary(result), [["x@b.test", "deferred", 451, "4.4.1"]]);
      assert.equal(result.unreachable, true);
    } finally {
      await silent.close();
    }
  });

  it("honours an abort signal, before and during the attempt", async () => {
    const port = await closedPort();
    const aborted = await deliverSmtp({ host: "127.0.0.1", port }, { from: "a@a.test", to: ["x@b.test"] }, SIMPLE, {
      ...OPTIONS,
      signal: AbortSignal.abort(),
    });
    assert.deepEqual(summary(aborted), [["x@b.test", "deferred", 451, "4.4.1"]]);

    const silent = await startSilentServer();
    try {
      const controller = new AbortController();
      const pending = deliverSmtp(
        { host: "127.0.0.1", port: silent.port },
        { from: "a@a.test", to: ["x@b.test"] },
        SIMPLE,
        {
          ...OPTIONS,
          timeoutMs: 60_000,
          signal: controller.signal,
        },
      );
      setImmediate(() => controller.abort());
      const result = await pending;
      assert.equal(result.recipients[0].status, "deferred");
      assert.match(result.recipients[0].reply.text, /aborted/);
    } finally {
      await silent.close();
    }
  });

  it("destroys a message stream it never got to send", async () => {
    const port = await closedPort();
    const stream = Readable.from([SIMPLE]);
    await deliverSmtp({ host: "127.0.0.1", port }, { from: "a@a.test", to: ["x@b.test"] }, stream, OPTIONS);
    assert.equal(stream.destroyed, true);
  });

  it("throws for programming errors only", async () => {
    await assert.rejects(
      deliverSmtp({ host: "127.0.0.1", port: 1 }, { from: "a@a.test", to: [] }, SIMPLE, OPTIONS),
      TypeError,
    );
    await assert.rejects(
      deliverSmtp(
        { host: "127.0.0.1", port: 1 },
        { from: "a@a.test", to: ["x@b.test>\r\nRCPT TO:<y@c.test"] },
        SIMPLE,
        OPTIONS,
      ),
      TypeError,
    );
  });
});

describe("deliverSmtp and STARTTLS", () => {
  let tls: { key: Buffer; cert: Buffer };
  before(() => {
    tls = selfSignedCertificate("next-hop.test");
  });

  /** SIMPLE from a@a.test to b@b.test through `hop`. */
  const deliverSimple = (hop: NextHop, options: Partial<SmtpDeliveryOptions> = {}, servername?: string) =>
    deliverSmtp({ host: hop.host, port: hop.port, servername }, { from: "a@a.test", to: ["b@b.test"] }, SIMPLE, {
      ...OPTIONS,
      ...options,
    });

  it("uses TLS opportunistically, even with a self-signed certificate", async () => {
    await withHop({ tls }, async (hop) => {
      const result = await deliverSimple(hop);
      assert.equal(result.recipients[0].status, "delivered");
      assert.equal(hop.messages[0].secure, true);
    });
  });

  it("falls back to plain text when an opportunistic STARTTLS handshake fails", async () => {
    // Node's client refuses anything below TLS 1.2, so this handshake cannot succeed.
    await withHop({ tls: { ...tls, maxVersion: "TLSv1.1" } }, async (hop) => {
      const result = await deliverSimple(hop);
      assert.equal(result.recipients[0].status, "delivered");
      assert.equal(hop.messages[0].secure, false);
    });
  });

  it("with TLS required, refuses an unverifiable certificate and a next hop without STARTTLS", async () => {
    for (const hopOptions of [{ tls }, {}]) {
      await withHop(hopOptions, async (hop) => {
        const result = await deliverSimple(hop, { tls: "required" });
        assert.deepEqual(summary(result), [["b@b.test", "deferred", 451, "4.4.1"]]);
        assert.equal(hop.messages.length, 0);
      });
    }
  });

  it("with TLS required, delivers when the certificate verifies for the expected name", async () => {
    await withHop({ tls }, async (hop) => {
      const result = await deliverSimple(hop, { tls: "required", rejectUnauthorized: false }, "next-hop.test");
      assert.equal(result.recipients[0].status, "delivered");
      assert.equal(result.nextHop, `next-hop.test[127.0.0.1]:${hop.port}`);
      assert.equal(hop.messages[0].secure, true);
    });
  });
});
