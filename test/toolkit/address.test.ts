import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Address } from "../../core/contract/api.js";
import {
  type AddressProblem,
  asciiDomain,
  isAddressProblem,
  parseEnvelopeAddress,
  pathAsWritten,
} from "../../core/toolkit/address.js";

const RECIPIENT = { nullAllowed: false };
const SENDER = { nullAllowed: true };

function parsed(raw: string, options = RECIPIENT, args: Record<string, string | boolean> = {}): Address {
  const result = parseEnvelopeAddress(raw, args, options);
  assert.ok(!isAddressProblem(result), `${JSON.stringify(raw)} refused: ${(result as AddressProblem).reason}`);
  return result;
}

function refused(raw: string, options = RECIPIENT): AddressProblem {
  const result = parseEnvelopeAddress(raw, {}, options);
  assert.ok(isAddressProblem(result), `${JSON.stringify(raw)} accepted as ${JSON.stringify(result)}`);
  return result;
}

const label63 = "a".repeat(63);

describe("parseEnvelopeAddress: accepted", () => {
  const cases: Array<[name: string, raw: string, local: string, domain: string, address?: string]> = [
    ["plain", "user@example.test", "user", "example.test"],
    ["mixed case: domain lower-cased, local kept", "User@EXAMPLE.Test", "User", "example.test"],
    ["dots and subaddress", "first.last+tag@example.test", "first.last+tag", "example.test"],
    ["IDN domain becomes punycode", "u@bücher.example", "u", "xn--bcher-kva.example"],
    ["upper-case IDN", "u@BÜCHER.example", "u", "xn--bcher-kva.example"],
    ["punycode domain, any case", "u@XN--BCHER-KVA.Example", "u", "xn--bcher-kva.example"],
    ["UTF-8 local part (RFC 6531)", "üser@example.test", "üser", "example.test"],
    ["percent in local part is syntax-valid", "user%other.test@example.test", "user%other.test", "example.test"],
    ["bang path is syntax-valid", "other.test!user@example.test", "other.test!user", "example.test"],
    ["quoted local part with @", '"a@b"@example.test', '"a@b"', "example.test"],
    ["quoted local part with %", '"user%x"@example.test', '"user%x"', "example.test"],
    ["quoted local part with space", '"john smith"@example.test', '"john smith"', "example.test"],
    ["quoted-pair in quoted local part", '"a\\"b"@example.test', '"a\\"b"', "example.test"],
    ["IPv4 literal kept as literal", "u@[192.0.2.1]", "u", "[192.0.2.1]"],
    ["IPv6 literal lower-cased", "u@[IPv6:2001:DB8::1]", "u", "[ipv6:2001:db8::1]"],
    ["domainless postmaster", "postmaster", "postmaster", "", "postmaster"],
    ["domainless postmaster, any case", "PostMaster", "postmaster", "", "PostMaster"],
    ["source route dropped", "@a.test,@b.test:user@other.test", "user", "other.test", "user@other.test"],
    ["local part of exactly 64 octets", `${"l".repeat(64)}@example.test`, "l".repeat(64), "example.test"],
    ["63-character label", `u@${label63}.test`, "u", `${label63}.test`],
  ];
  for (const [name, raw, local, domain, address = raw] of cases) {
    it(name, () => {
      const result = parsed(raw);
      assert.deepEqual({ ...result }, { address, local, domain, args: {} });
    });
  }

  it("null sender when allowed", () => {
    assert.deepEqual({ ...parsed("", SENDER) }, { address: "", local: "", domain: "", args: {} });
  });

  it("sender with IDN domain", () => {
    assert.equal(parsed("a@bücher.example", SENDER).domain, "xn--bcher-kva.example");
  });

  it("parameter names upper-cased, values kept", () => {
    const result = parsed("u@example.test", RECIPIENT, { notify: "SUCCESS,DELAY", Orcpt: "rfc822;u@example.test" });
    assert.deepEqual(result.args, { NOTIFY: "SUCCESS,DELAY", ORCPT: "rfc822;u@example.test" });
    const sender = parsed("u@example.test", SENDER, { SMTPUTF8: true, size: "1000" });
    assert.deepEqual(sender.args, { SMTPUTF8: true, SIZE: "1000" });
  });
});

describe("parseEnvelopeAddress: bad syntax is 501 5.1.3", () => {
  const cases: Array<[name: string, raw: string]> = [
    ["null recipient", ""],
    ["two unquoted @", "user@other.test@example.test"],
    ["trailing dot on the domain", "user@example.test."],
    ["empty local part", "@example.test"],
    ["empty quoted local part", '""@example.test'],
    ["empty domain", "user@"],
    ["no domain", "user"],
    ["leading dot in local part", ".user@example.test"],
    ["double dot in local part", "us..er@example.test"],
    ["trailing dot in local part", "user.@example.test"],
    ["space in unquoted local part", "us er@example.test"],
    ["angle brackets left in", "<user@example.test>"],
    ["trailing space", "user@example.test "],
    ["NUL", "user\u0000@example.test"],
    ["CR in domain", "user@exam\rple.test"],
    ["LF", "user\n@example.test"],
    ["DEL", "user\u007f@example.test"],
    ["C1 control", "user\u0085@example.test"],
    ["control character inside quotes", '"a\u0001b"@example.test'],
    ["unterminated quoted string", '"user@example.test'],
    ["text after closing quote", '"a"b@example.test'],
    ["unquoted backslash", "a\\b@example.test"],
    ["local part of 65 octets", `${"l".repeat(65)}@example.test`],
    ["local part of 33 two-octet characters", `${"ü".repeat(33)}@example.test`],
    ["label of 64 characters", `u@${"a".repeat(64)}.test`],
    ["path over 256 octets", `${"l".repeat(64)}@${label63}.${label63}.${label63}.test`],
    ["domain over 255 octets", `u@${Array(5).fill(label63).join(".")}`],
    ["unbalanced address literal", "u@[192.0.2.1"],
    ["bad IPv4 literal", "u@[192.0.2.256]"],
    ["IPv6 literal without tag", "u@[2001:db8::1]"],
    ["bad IPv6 literal", "u@[IPv6:2001:db8::zz]"],
    ["IPv6 literal with zone index", "u@[IPv6:fe80::1%eth0]"],
    ["general address literal", "u@[x400:c=us;a=;]"],
    ["bare IPv4 as domain", "u@192.0.2.1"],
    ["WHATWG-style IPv4 shorthand", "u@0x7f.1"],
    ["all-numeric top-level label", "u@example.123"],
    ["label starting with hyphen", "u@-example.test"],
    ["label ending with hyphen", "u@example-.test"],
    ["underscore in domain", "u@exa_mple.test"],
    ["empty label", "u@example..test"],
    ["leading dot on domain", "u@.example.test"],
    ["ideographic full stop as separator", "u@example\u3002test"],
    ["full-width letters", "u@ｅｘａｍｐｌｅ.test"],
    ["invalid punycode label", "u@xn--zz.test"],
    ["invalid source route hop", "@bad_hop.test:user@example.test"],
    ["empty source route hop", "@:user@example.test"],
    ["source route hop with trailing dot", "@a.test.:user@example.test"],
    ["source route without a mailbox", "@a.test:"],
  ];
  for (const [name, raw] of cases) {
    it(name, () => {
      assert.deepEqual(refused(raw).reply, { code: 501, enhanced: "5.1.3", text: "Bad recipient address syntax" });
    });
  }

  it("a sender gets the sender wording", () => {
    assert.deepEqual(refused("user@other.test@example.test", SENDER).reply, {
      code: 501,
      enhanced: "5.1.3",
      text: "Bad sender address syntax",
    });
  });

  it("domainless postmaster is not a sender", () => {
    assert.equal(refused("postmaster", SENDER).reply.text, "Bad sender address syntax");
  });

  it("the reason is for the log, not the reply", () => {
    const reasons: Array<[raw: string, reason: RegExp]> = [
      [`${"l".repeat(65)}@example.test`, /local part longer than 64 octets/],
      [`${"l".repeat(64)}@${label63}.${label63}.${label63}.test`, /path longer than 256 octets/],
      ["user@example.test.", /ends with a dot/],
      ["user@other.test@example.test", /invalid domain/],
      ["u@[192.0.2.256]", /address literal/],
      ["@bad_hop.test:user@example.test", /source route/],
      ["user\u0000@example.test", /control character/],
    ];
    for (const [raw, reason] of reasons) {
      const problem = refused(raw);
      assert.match(problem.reason, reason, raw);
      assert.equal(problem.reply.text, "Bad recipient address syntax");
    }
  });
});

describe("asciiDomain", () => {
  const cases: Array<[input: string, expected: string | undefined]> = [
    ["example.test", "example.test"],
    ["Example.TEST", "example.test"],
    ["example.test.", "example.test"],
    ["bücher.example", "xn--bcher-kva.example"],
    ["BÜCHER.Example.", "xn--bcher-kva.example"],
    ["xn--bcher-kva.example", "xn--bcher-kva.example"],
    ["localhost", "localhost"],
    // All-digit labels are valid host names (163.com, 126.com are large mail providers) — but not last.
    ["163.com", "163.com"],
    ["Mail.126.COM", "mail.126.com"],
    ["example.123", undefined],
    ["0x7f.1", undefined],
    ["xn--.example", undefined],
    ["", undefined],
    [".", undefined],
    ["example.test..", undefined],
    ["[192.0.2.1]", undefined],
    ["192.0.2.1", undefined],
    ["*.example.test", undefined],
    ["exa mple.test", undefined],
    ["user@example.test", undefined],
    ["example\u3002test", undefined],
    ["in\r\njected.test", undefined],
    ["tab\tbed.test", undefined],
    [Array(4).fill(label63).join("."), Array(4).fill(label63).join(".")],
    [`a.${Array(4).fill(label63).join(".")}`, undefined],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input)} → ${String(expected)}`, () => {
      assert.equal(asciiDomain(input), expected);
      assert.equal(asciiDomain(input), expected, "asked again (answered from memory)");
    });
  }
});

describe("pathAsWritten", () => {
  const cases: Array<[string, string | undefined]> = [
    ["RCPT TO:<u@example\u3002test>", "u@example\u3002test"],
    ["MAIL FROM:<u@example\uff0etest> SMTPUTF8", "u@example\uff0etest"],
    ["RCPT TO:<@a.test:u@example\uff61test>", "@a.test:u@example\uff61test"],
    ["RCPT TO:<u@example.test>", undefined],
    ["RCPT TO:<u@bücher.example>", undefined],
  ];
  for (const [command, expected] of cases) {
    it(JSON.stringify(command), () => assert.equal(pathAsWritten(command), expected));
  }
});
