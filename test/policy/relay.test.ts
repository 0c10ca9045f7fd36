import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Address } from "../../core/contract/api.js";
import { compileRelayAccess, type RelayConfig } from "../../core/policy/relay.js";
import { isAddressProblem, parseEnvelopeAddress } from "../../core/toolkit/address.js";

const DENIED = { code: 550, enhanced: "5.7.1", text: "Relaying denied" };

const config: RelayConfig = {
  // Written in every form a policy may use: Unicode with capitals, punycode with trailing dot, wildcard.
  domains: ["example.test", "BÜCHER.example", "xn--caf-dma.test.", "*.sub.test"],
  networks: ["192.0.2.0/24", "2001:db8:1::/48"],
  authenticatedUsersMayRelay: true,
};
const access = compileRelayAccess(config);

type Client = { ip: string; authUser: string | null };
const outsiders: Record<string, Client> = {
  "outside IPv4": { ip: "198.51.100.7", authUser: null },
  "outside IPv4-mapped": { ip: "::ffff:198.51.100.7", authUser: null },
  "outside IPv6": { ip: "2001:db8:2::1", authUser: null },
  "outside, empty auth user": { ip: "198.51.100.7", authUser: "" },
};
const trusted: Record<string, Client> = {
  "relay network IPv4": { ip: "192.0.2.10", authUser: null },
  "relay network IPv4-mapped": { ip: "::ffff:192.0.2.10", authUser: null },
  "relay network IPv4-mapped, upper case": { ip: "::FFFF:192.0.2.10", authUser: null },
  "relay network IPv6": { ip: "2001:db8:1::25", authUser: null },
  "authenticated, outside IP": { ip: "198.51.100.7", authUser: "alice" },
};

function recipient(raw: string): Address {
  const result = parseEnvelopeAddress(raw, {}, { nullAllowed: false });
  assert.ok(!isAddressProblem(result), `${raw}: ${isAddressProblem(result) ? result.reason : ""}`);
  return result;
}

// local: accepted from anyone; relay: only from trusted clients.
const variants: Array<[name: string, raw: string, expected: "local" | "relay"]> = [
  ["relay domain", "user@example.test", "local"],
  ["relay domain, mixed case", "User@EXAMPLE.Test", "local"],
  ["postmaster at a relay domain", "postmaster@example.test", "local"],
  ["domainless postmaster", "postmaster", "local"],
  ["domainless postmaster, mixed case", "PostMaster", "local"],
  ["IDN relay domain in Unicode (configured in Unicode)", "user@bücher.example", "local"],
  ["IDN relay domain in punycode (configured in Unicode)", "user@xn--bcher-kva.example", "local"],
  ["IDN relay domain in upper-case punycode", "user@XN--BCHER-KVA.EXAMPLE", "local"],
  ["IDN relay domain in Unicode (configured in punycode)", "user@café.test", "local"],
  ["IDN relay domain in punycode (configured in punycode)", "user@xn--caf-dma.test", "local"],
  ["wildcard: subdomain", "user@a.sub.test", "local"],
  ["wildcard: deeper subdomain", "user@deep.a.sub.test", "local"],
  ["wildcard: not the apex", "user@sub.test", "relay"],
  ["wildcard: not a name merely ending in it", "user@xsub.test", "relay"],
  ["exact domain: not its subdomains", "user@mail.example.test", "relay"],
  ["relay domain as a prefix of another", "user@example.test.other.test", "relay"],
  ["relay domain as a suffix of a label", "user@notexample.test", "relay"],
  ["foreign domain", "user@other.test", "relay"],
  ["foreign IDN domain", "user@bücher.other", "relay"],
  ["foreign postmaster", "postmaster@other.test", "relay"],
  ["percent hack", "user%other.test@example.test", "relay"],
  ["percent hack, IDN relay domain", "user%other.test@bücher.example", "relay"],
  ["bang path", "other.test!user@example.test", "relay"],
  ["quoted local part with @", '"user@other.test"@example.test', "relay"],
  ["quoted local part with %", '"user%other.test"@example.test', "relay"],
  ["quoted local part with escaped @", '"user\\@other.test"@example.test', "relay"],
  ["quoted local part without routing characters", '"john smith"@example.test', "local"],
  ["source route to a foreign domain", "@a.test:user@other.test", "relay"],
  ["source route through a relay domain to a foreign one", "@example.test:user@other.test", "relay"],
  ["source route from a foreign domain to a relay one", "@other.test,@a.test:user@example.test", "local"],
  ["IPv4 literal (even in a relay network)", "user@[192.0.2.1]", "relay"],
  ["IPv6 literal", "user@[IPv6:2001:db8:1::1]", "relay"],
];

describe("relay access: parsed recipients", () => {
  for (const [name, raw, expected] of variants) {
    describe(`${name}: ${raw}`, () => {
      for (const [clientName, client] of Object.entries(outsiders)) {
        const verdict = expected === "local" ? "accepted" : "refused";
        it(`${verdict} from ${clientName}`, () => {
          assert.deepEqual(access.check(recipient(raw), client), expected === "local" ? null : DENIED);
        });
      }
      for (const [clientName, client] of Object.entries(trusted)) {
        it(`accepted from ${clientName}`, () => assert.equal(access.check(recipient(raw), client), null));
      }
    });
  }
});

describe("relay access: what never gets as far as check()", () => {
  // These are refused at RCPT with 501 before relay access is asked, whoever the client is.
  for (const raw of ["user@other.test@example.test", "user@example.test.", "user@example.test@other.test"]) {
    it(raw, () => {
      const result = parseEnvelopeAddress(raw, {}, { nullAllowed: false });
      assert.ok(isAddressProblem(result));
      assert.equal(result.reply.code, 501);
      assert.equal(result.reply.enhanced, "5.1.3");
    });
  }
});

describe("relay access: check() trusts only canonical domains from outsiders", () => {
  const outsider = outsiders["outside IPv4"];
  const network = trusted["relay network IPv4"];
  const handMade = (local: string, domain: string): Address => ({
    address: `${local}@${domain}`,
    local,
    domain,
    args: {},
  });
  const cases: Array<[name: string, address: Address]> = [
    ["trailing dot", handMade("user", "example.test.")],
    ["upper case", handMade("user", "EXAMPLE.TEST")],
    ["Unicode", handMade("user", "bücher.example")],
    ["empty domain, not postmaster", handMade("user", "")],
    ["null address", handMade("", "")],
  ];
  for (const [name, address] of cases) {
    it(`${name}: refused from outside, accepted from a relay network`, () => {
      assert.deepEqual(access.check(address, outsider), DENIED);
      assert.equal(access.check(address, network), null);
    });
  }
});

describe("relay access: authenticatedUsersMayRelay: false", () => {
  const strict = compileRelayAccess({ ...config, authenticatedUsersMayRelay: false });
  const alice = { ip: "198.51.100.7", authUser: "alice" };
  it("an authenticated outsider may not relay", () => {
    assert.deepEqual(strict.check(recipient("user@other.test"), alice), DENIED);
    assert.deepEqual(strict.check(recipient("user%other.test@example.test"), alice), DENIED);
  });
  it("but still reaches relay domains", () => assert.equal(strict.check(recipient("user@example.test"), alice), null));
  it("and the relay network still relays", () => {
    assert.equal(strict.check(recipient("user@other.test"), { ip: "192.0.2.1", authUser: null }), null);
  });
});

describe("relay access: empty configuration is closed", () => {
  const closed = compileRelayAccess({ domains: [], networks: [], authenticatedUsersMayRelay: false });
  const loopback = { ip: "127.0.0.1", authUser: "alice" };
  it("refuses everything", () => {
    for (const raw of ["user@example.test", "user@localhost", "user@[127.0.0.1]"]) {
      assert.deepEqual(closed.check(recipient(raw), loopback), DENIED, raw);
    }
  });
  it("except the domainless postmaster", () => assert.equal(closed.check(recipient("postmaster"), loopback), null));
  it("an unparseable client IP is no relay network", () => {
    const open = compileRelayAccess({ domains: [], networks: ["0.0.0.0/0"], authenticatedUsersMayRelay: false });
    assert.deepEqual(open.check(recipient("user@other.test"), { ip: "not-an-ip", authUser: null }), DENIED);
  });
});

describe("isLocalDomain", () => {
  const cases: Array<[domain: string, expected: boolean]> = [
    ["example.test", true],
    ["EXAMPLE.Test", true],
    ["example.test.", true],
    ["bücher.example", true],
    ["BÜCHER.EXAMPLE", true],
    ["xn--bcher-kva.example", true],
    ["café.test", true],
    ["xn--caf-dma.test", true],
    ["a.sub.test", true],
    ["sub.test", false],
    ["mail.example.test", false],
    ["other.test", false],
    ["[192.0.2.1]", false],
    ["", false],
    ["example..test", false],
  ];
  for (const [domain, expected] of cases) {
    it(`${JSON.stringify(domain)} → ${expected}`, () => assert.equal(access.isLocalDomain(domain), expected));
  }
});

describe("compileRelayAccess: configuration errors", () => {
  const cases: Array<[name: string, patch: Partial<RelayConfig>, message: RegExp]> = [
    ["address literal as a domain", { domains: ["[192.0.2.1]"] }, /relay\.domains: "\[192\.0\.2\.1\]"/],
    ["bare wildcard", { domains: ["*"] }, /relay\.domains: "\*"/],
    ["wildcard inside a name", { domains: ["mail.*.test"] }, /relay\.domains/],
    ["space in a domain", { domains: ["exa mple.test"] }, /relay\.domains/],
    ["empty domain", { domains: [""] }, /relay\.domains/],
    ["bad network", { networks: ["192.0.2.0/33"] }, /relay\.networks: .*192\.0\.2\.0\/33/],
    ["host name as network", { networks: ["localhost"] }, /relay\.networks/],
  ];
  for (const [name, patch, message] of cases) {
    it(name, () => assert.throws(() => compileRelayAccess({ ...config, ...patch }), message));
  }
});
