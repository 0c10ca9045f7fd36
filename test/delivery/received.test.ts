import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type ReceivedInput, receivedHeader, rfc5322Date } from "../../core/delivery/received.js";

const DATE = new Date(Date.UTC(2026, 10, 26, 9, 5, 3));

const BASE: ReceivedInput = {
  heloName: "mail.sender.test",
  clientIp: "192.0.2.10",
  verifiedName: "mail.sender.test",
  byHost: "gw.portcullis.test",
  protocol: "ESMTPS",
  tls: { protocol: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384" },
  id: "01JABCDEF",
  recipient: "rcpt@example.test",
  date: DATE,
};

/** Unfolds (RFC 5322 §2.2.3) and drops the field name. */
function unfold(header: string): string {
  return header.replace(/\r\n[ \t]/g, " ");
}

function lines(header: string): string[] {
  assert.ok(!header.endsWith("\r\n"), "a field without its line break (the header encoder adds it)");
  return header.split("\r\n");
}

describe("receivedHeader", () => {
  it("writes every clause in RFC 5321 §4.4 order", () => {
    assert.equal(
      unfold(receivedHeader(BASE)),
      "Received: from mail.sender.test (mail.sender.test [192.0.2.10]) by gw.portcullis.test " +
        "with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id 01JABCDEF for <rcpt@example.test>; " +
        "Thu, 26 Nov 2026 09:05:03 +0000",
    );
  });

  it("folds at 78 columns with CRLF TAB, one header field", () => {
    const header = receivedHeader(BASE);
    const all = lines(header);
    assert.ok(all.length > 1);
    assert.ok(all[0].startsWith("Received: "));
    for (const line of all) assert.ok(line.length <= 78, `${JSON.stringify(line)} is longer than 78`);
    for (const line of all.slice(1)) assert.ok(line.startsWith("\t"), "continuation lines start with TAB");
  });

  it("writes IPv6 as an IPv6 address literal, and IPv4-mapped addresses as IPv4", () => {
    assert.match(
      unfold(receivedHeader({ ...BASE, clientIp: "2001:DB8::1" })),
      /\(mail\.sender\.test \[IPv6:2001:db8::1\]\)/,
    );
    assert.match(unfold(receivedHeader({ ...BASE, clientIp: "::ffff:192.0.2.7" })), /\[192\.0\.2\.7\]\)/);
  });

  it("leaves out what is unknown: no HELO, no verified name, no TLS, no single recipient", () => {
    const header = receivedHeader({
      ...BASE,
      heloName: null,
      verifiedName: null,
      tls: null,
      protocol: "ESMTP",
      recipient: undefined,
    });
    assert.equal(
      unfold(header),
      "Received: from unknown ([192.0.2.10]) by gw.portcullis.test with ESMTP id 01JABCDEF; Thu, 26 Nov 2026 09:05:03 +0000",
    );
  });

  it("cannot be made to inject a header through HELO, the DNS name or the recipient", () => {
    const header = receivedHeader({
      ...BASE,
      heloName: "evil.test\r\nX-Injected: yes (x) ; y",
      verifiedName: "name\nBcc: victim@example.test",
      recipient: "a@b.test>\r\nX-Other: 1",
    });
    assert.equal(header.match(/\r\n(?![\t ])/g), null, "every line break is a fold");
    // biome-ignore lint/suspicious/noControlCharactersInRegex: checking that none remain
    assert.doesNotMatch(header.replace(/\r\n\t/g, ""), /[\u0000-\u001f\u007f]/);
    const text = unfold(header);
    assert.match(text, /^Received: from evil\.testX-Injected:yesxy \(nameBccvictimexample\.test \[192\.0\.2\.10\]\)/);
    assert.doesNotMatch(text, / for </, "a recipient that needs rewriting is left out");
    assert.equal(text.split(";").length, 2, "the only ';' is the one before the date");
  });

  it("bounds client-supplied pieces and keeps address literals as HELO", () => {
    const long = receivedHeader({ ...BASE, heloName: "a".repeat(2000) });
    for (const line of lines(long)) assert.ok(line.length < 300);
    assert.match(
      unfold(receivedHeader({ ...BASE, heloName: "[IPv6:2001:db8::1]" })),
      /^Received: from \[IPv6:2001:db8::1\] \(/,
    );
  });

  it("formats dates as RFC 5322 in UTC", () => {
    assert.equal(rfc5322Date(new Date(Date.UTC(2027, 0, 3, 23, 59, 9))), "Sun, 3 Jan 2027 23:59:09 +0000");
  });
});
