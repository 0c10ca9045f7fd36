import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatRouteTarget, parseRouteTarget, type RouteTarget } from "../../core/delivery/target.js";

describe("parseRouteTarget", () => {
  const valid: Array<[string, RouteTarget]> = [
    ["smtp://relay.example.test:2525", { kind: "smtp", host: "relay.example.test", port: 2525 }],
    ["smtp://Relay.Example.Test", { kind: "smtp", host: "relay.example.test", port: 25 }],
    ["smtp://192.0.2.1:587", { kind: "smtp", host: "192.0.2.1", port: 587 }],
    ["smtp://[2001:db8::25]:2525", { kind: "smtp", host: "2001:db8::25", port: 2525 }],
    ["smtp://[::1]", { kind: "smtp", host: "::1", port: 25 }],
    ["lmtp://127.0.0.1:24", { kind: "lmtp", host: "127.0.0.1", port: 24 }],
    ["lmtp://dovecot.internal", { kind: "lmtp", host: "dovecot.internal", port: 24 }],
    ["mx", { kind: "mx" }],
    [" discard ", { kind: "discard" }],
    ["maildir:/var/mail/inbox", { kind: "maildir", path: "/var/mail/inbox" }],
  ];
  for (const [text, expected] of valid) {
    it(`parses ${JSON.stringify(text)}`, () => assert.deepEqual(parseRouteTarget(text), expected));
  }

  const invalid = [
    "",
    "smtp://",
    "smtp://host:0",
    "smtp://host:65536",
    "smtp://host:25/path",
    "smtp://user@host:25",
    "smtp://[not-v6]:25",
    "smtp://2001:db8::1:25",
    "smtp://-bad-.test",
    "http://host:80",
    "maildir:relative/path",
    "maildir:",
    "MX",
    "discard-all",
  ];
  for (const text of invalid) {
    it(`refuses ${JSON.stringify(text)}`, () => assert.equal(parseRouteTarget(text), undefined));
  }
});

describe("formatRouteTarget", () => {
  const texts = [
    "smtp://relay.example.test:2525",
    "smtp://[2001:db8::25]:25",
    "lmtp://127.0.0.1:24",
    "mx",
    "discard",
    "maildir:/var/mail/inbox",
  ];
  for (const text of texts) {
    it(`round-trips ${text}`, () => {
      const target = parseRouteTarget(text);
      assert.ok(target);
      assert.equal(formatRouteTarget(target), text);
      assert.deepEqual(parseRouteTarget(formatRouteTarget(target)), target);
    });
  }
});
