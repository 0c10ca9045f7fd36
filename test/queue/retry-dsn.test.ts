import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { buildDsn, headerSection } from "../../core/queue/dsn.js";
import { nextAttemptAt, type RetryPolicy } from "../../core/queue/retry.js";
import { hostileText, strictHeader } from "../fixtures/hostile-text.js";
import { seededRandom } from "../fixtures/seeded-random.js";
import { parseDsn } from "./helpers.js";

describe("nextAttemptAt", () => {
  const policy: RetryPolicy = { schedule: [60_000, 300_000, 900_000], maxAgeMs: 3_600_000, jitter: 0 };
  const table: Array<[string, number, number, number | "expired"]> = [
    ["after the first attempt: the first wait", 1, 1_000, 61_000],
    ["after the second: the second wait", 2, 61_000, 361_000],
    ["the last wait repeats", 7, 1_000_000, 1_900_000],
    ["never past maxAge: the last attempt is at the deadline", 3, 3_000_000, 3_600_000],
    ["at maxAge: expired", 4, 3_600_000, "expired"],
  ];
  for (const [name, attempts, now, expected] of table) {
    it(name, () => assert.equal(nextAttemptAt(attempts, 0, now, policy), expected));
  }

  it("jitters within ±jitter of the wait", () => {
    const jittered = { ...policy, jitter: 0.1 };
    assert.equal(
      nextAttemptAt(1, 0, 0, jittered, () => 0),
      54_000,
    );
    assert.equal(
      nextAttemptAt(1, 0, 0, jittered, () => 1),
      66_000,
    );
    assert.equal(
      nextAttemptAt(1, 0, 0, jittered, () => 0.5),
      60_000,
    );
  });
});

describe("buildDsn", () => {
  const original = Buffer.from("From: a@x.test\r\nSubject: hi\r\nMessage-ID: <m1@x.test>\r\n\r\nbody line\r\n");
  const input = {
    reportingMta: "gw.test",
    to: "a@x.test",
    envid: "E1",
    arrivalDate: new Date("2026-01-01T00:00:00Z"),
    date: new Date("2026-01-01T00:05:00Z"),
    recipients: [
      {
        address: "b@y.test",
        orcpt: "rfc822;B@y.test",
        action: "failed" as const,
        reply: { code: 550, enhanced: "5.1.1", text: "no such user\r\nInjected: header" },
        remoteMta: "mx.y.test",
        lastAttempt: new Date("2026-01-01T00:04:00Z"),
      },
    ],
  };

  it("is a multipart/report a parser reads back, fields per RFC 3464", () => {
    const { raw, messageId } = buildDsn({ ...input, returned: { kind: "full", content: original } });
    const dsn = parseDsn(raw);
    assert.equal(dsn.headers["message-id"], messageId);
    assert.equal(dsn.headers.to, "<a@x.test>");
    assert.equal(dsn.headers.from, "Mail Delivery System <MAILER-DAEMON@gw.test>");
    assert.deepEqual(dsn.status[0], {
      "reporting-mta": "dns; gw.test",
      "original-envelope-id": "E1",
      "arrival-date": "Thu, 1 Jan 2026 00:00:00 +0000",
    });
    assert.deepEqual(dsn.status[1], {
      "original-recipient": "rfc822;B@y.test",
      "final-recipient": "rfc822; b@y.test",
      action: "failed",
      status: "5.1.1",
      "remote-mta": "dns; mx.y.test",
      "diagnostic-code": "smtp; 550 5.1.1 no such user Injected: header",
      "last-attempt-date": "Thu, 1 Jan 2026 00:04:00 +0000",
    });
    assert.equal(dsn.returnedType, "message/rfc822");
    assert.match(dsn.returned, /body line/);
    assert.doesNotMatch(raw.toString(), /\r\nInjected:/, "remote text cannot add header lines");
  });

  it("keeps a hostile SMTPUTF8 sender, ENVID and reply inside their fields, as UTF-8", () => {
    const random = seededRandom(3464);
    for (let i = 0; i < 500; i++) {
      const hostile = () => hostileText(random);
      const { raw } = buildDsn({
        ...input,
        to: `${hostile()}@x.test`,
        envid: hostile(),
        recipients: [
          {
            ...input.recipients[0],
            orcpt: `rfc822;${hostile()}`,
            reply: { ...input.recipients[0].reply, text: hostile() },
          },
        ],
        returned: { kind: "headers", content: headerSection(original) },
      });
      const header = strictHeader(raw);
      assert.deepEqual(header.names, [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
      ]);
      const status = raw.toString("utf8").split("Content-Type: message/delivery-status")[1].split("\r\n--")[0];
      const names = status
        .split("\r\n")
        .filter((line) => line !== "")
        .map((line) => /^([A-Za-z-]+): /.exec(line)?.[1] ?? `not a field: ${line}`);
      assert.deepEqual(names, [
        "Content-Description",
        "Reporting-MTA",
        "Original-Envelope-Id",
        "Arrival-Date",
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
      ]);
    }
  });

  it("returns only the header section for RET=HDRS", () => {
    const { raw } = buildDsn({ ...input, returned: { kind: "headers", content: headerSection(original) } });
    const dsn = parseDsn(raw);
    assert.equal(dsn.returnedType, "text/rfc822-headers");
    assert.match(dsn.returned, /Message-ID: <m1@x.test>/);
    assert.doesNotMatch(dsn.returned, /body line/);
  });
});
