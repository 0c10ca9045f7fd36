import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { addressPattern, type RouteQuery, Router, routeKey } from "../../core/delivery/routes.js";
import { DomainSet } from "../../core/toolkit/address.js";

const base: RouteQuery = {
  recipientDomain: "example.test",
  recipient: "user@example.test",
  senderDomain: "sender.test",
  clientIp: "192.0.2.10",
  listener: { ip: "127.0.0.1", port: 25 },
  tags: new Set(),
};

const router = new Router([
  { match: { tag: ["quarantine"] }, to: "maildir:/var/quarantine" },
  { match: { recipient: ["postmaster@*"] }, to: "smtp://10.0.0.1:25" },
  { match: { recipient: "*+bulk@example.test" }, to: "discard" },
  { match: { listener: 587 }, to: "smtp://10.0.0.2:25", tls: "required" },
  { match: { listener: "127.0.0.2:25" }, to: "smtp://10.0.0.3:25" },
  { match: { recipientDomain: ["exact.test", "*.wild.test"] }, to: ["smtp://10.0.0.4:25", "smtp://10.0.0.5:25"] },
  { match: { senderDomain: "vip.test", clientNetwork: "198.51.100.0/24" }, to: "lmtp://10.0.0.6:24" },
  {
    match: { recipientDomain: "tls.test" },
    to: "smtp://10.0.0.7:25",
    tls: { mode: "opportunistic", verify: true, sni: "relay.tls.test" },
    connections: 2,
    sourceAddress: "192.0.2.1",
  },
]);

describe("Router.routeFor: first match wins", () => {
  const table: Array<[string, Partial<RouteQuery>, string[]]> = [
    ["no route matches: mx", {}, ["mx"]],
    ["a tag set by a rule", { tags: new Set(["quarantine"]) }, ["maildir:/var/quarantine"]],
    ["a recipient pattern", { recipient: "POSTMASTER@any.test" }, ["smtp://10.0.0.1:25"]],
    ["a pattern with the wildcard in the local part", { recipient: "news+bulk@example.test" }, ["discard"]],
    ["a listener port", { listener: { ip: "127.0.0.1", port: 587 } }, ["smtp://10.0.0.2:25"]],
    ["a listener host:port", { listener: { ip: "127.0.0.2", port: 25 } }, ["smtp://10.0.0.3:25"]],
    ["an exact recipient domain", { recipientDomain: "exact.test" }, ["smtp://10.0.0.4:25", "smtp://10.0.0.5:25"]],
    ["a subdomain of a wildcard", { recipientDomain: "a.b.wild.test" }, ["smtp://10.0.0.4:25", "smtp://10.0.0.5:25"]],
    ["the wildcard's parent itself does not match", { recipientDomain: "wild.test" }, ["mx"]],
    ["sender and network together", { senderDomain: "vip.test", clientIp: "198.51.100.7" }, ["lmtp://10.0.0.6:24"]],
    ["sender without the network", { senderDomain: "vip.test" }, ["mx"]],
    ["locally made mail has no client", { senderDomain: "vip.test", clientIp: undefined }, ["mx"]],
  ];
  for (const [name, query, to] of table) {
    it(name, () => assert.deepEqual(router.routeFor({ ...base, ...query }).to, to));
  }

  it("carries the route's TLS, connection limit and source address", () => {
    assert.deepEqual(router.routeFor({ ...base, recipientDomain: "tls.test" }), {
      to: ["smtp://10.0.0.7:25"],
      tls: { mode: "opportunistic", verify: true, sni: "relay.tls.test" },
      connections: 2,
      sourceAddress: "192.0.2.1",
    });
    assert.deepEqual(router.routeFor({ ...base, listener: { ip: "127.0.0.1", port: 587 } }).tls, { mode: "required" });
  });

  it("keeps the old API: targetFor gives the target text", () => {
    assert.equal(
      router.targetFor({ ...base, recipientDomain: "exact.test" }),
      "smtp://10.0.0.4:25, smtp://10.0.0.5:25",
    );
  });

  it("gives equal routes equal keys and different settings different keys", () => {
    const a = router.routeFor({ ...base, recipientDomain: "exact.test" });
    const b = router.routeFor({ ...base, recipientDomain: "x.wild.test" });
    assert.equal(routeKey(a), routeKey(b));
    assert.notEqual(routeKey(a), routeKey({ ...a, tls: { mode: "none" } }));
  });
});

describe("matching helpers", () => {
  it("DomainSet: exact names and *.parent for subdomains only", () => {
    const set = new DomainSet(["example.test", "*.sub.test"]);
    assert.equal(set.has("example.test"), true);
    assert.equal(set.has("x.example.test"), false);
    assert.equal(set.has("a.sub.test"), true);
    assert.equal(set.has("sub.test"), false);
  });

  it("addressPattern: * is the only wildcard, the rest is literal", () => {
    assert.equal(addressPattern("a.b@*").test("a.b@x.test"), true);
    assert.equal(addressPattern("a.b@*").test("aXb@x.test"), false);
    assert.equal(addressPattern("*@example.test").test("Someone@EXAMPLE.test"), true);
  });
});
