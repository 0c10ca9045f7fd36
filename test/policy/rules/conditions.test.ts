/**
 * Rule conditions as pure tables: each condition type against views that match and views that do
 * not, and the phase from which a rule runs. No contexts, no sockets: the compiled predicate over a
 * plain `RuleView` is the whole of rule logic.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { parsePolicy } from "../../../app/catalogue.js";
import { z } from "../../../core/index.js";
import { PolicyError } from "../../../core/policy/load.js";
import {
  type CompiledRule,
  compileRules,
  type FindingCatalogue,
  findingCatalogue,
  type RuleView,
} from "../../../core/policy/rules/compile.js";
import { PolicySchema } from "../../../core/policy/schema.js";
import sample from "./fixtures/sample.js";

const base: RuleView = {
  client: { ip: "192.0.2.10", name: "mail.client.test" },
  trusted: false,
  role: "mx",
  helo: "mail.client.test",
  tls: true,
  authUser: null,
  sender: { address: "Alice@Sender.test", local: "Alice", domain: "sender.test" },
  recipient: null,
  recipients: [],
  score: 0,
  tags: [],
  facts: {},
};

const catalogue: FindingCatalogue = findingCatalogue([
  { name: "sample", definition: sample, phases: ["mail"] },
  { name: "./late.ts", definition: { ...sample, findings: { dkim: z.unknown() } }, phases: ["data", "queue"] },
  { name: "./dmarc.ts", definition: { ...sample, findings: { dmarc: z.unknown() } }, phases: ["data"] },
]);

function compile(when: unknown, action: unknown = "reject"): CompiledRule {
  const config = PolicySchema.parse({ version: 1, rules: [{ name: "r", when, action }] });
  return compileRules(config.rules, catalogue).rules[0];
}

type Row = [when: unknown, view: Partial<RuleView>, expected: boolean];

function table(rows: Row[]) {
  for (const [when, view, expected] of rows) {
    const rule = compile(when);
    assert.equal(
      rule.matches({ ...base, ...view }),
      expected,
      `${JSON.stringify(when)} over ${JSON.stringify(view)} should be ${expected}`,
    );
  }
}

test("network: IPv4 and IPv6 CIDR sets, bare addresses, IPv4-mapped clients", () => {
  table([
    [{ "client.ip": { network: ["192.0.2.0/24"] } }, {}, true],
    [{ "client.ip": { network: "192.0.2.0/24" } }, { client: { ip: "::ffff:192.0.2.7", name: null } }, true],
    [{ "client.ip": { network: ["192.0.2.0/25"] } }, { client: { ip: "192.0.2.200", name: null } }, false],
    [
      { "client.ip": { network: ["2001:db8::/32", "198.51.100.1"] } },
      { client: { ip: "2001:db8::5", name: null } },
      true,
    ],
    [{ "client.ip": { network: ["198.51.100.1"] } }, { client: { ip: "198.51.100.2", name: null } }, false],
    // A finding holding an IP is tested the same way.
    [{ "sample.ip": { network: ["10.0.0.0/8"] } }, { facts: { sample: { ip: "10.1.2.3" } } }, true],
  ]);
});

test("domain: exact names, *.parent for subdomains only, IDN, the domain of an address", () => {
  table([
    [{ helo: { domain: ["client.test"] } }, {}, false],
    [{ helo: { domain: ["*.client.test"] } }, {}, true],
    [{ helo: { domain: ["*.client.test"] } }, { helo: "client.test" }, false],
    [{ helo: { domain: ["MAIL.client.test"] } }, {}, true],
    [{ sender: { domain: ["sender.test"] } }, {}, true],
    [
      { "sender.domain": { domain: ["bücher.example"] } },
      { sender: { address: "a@xn--bcher-kva.example", local: "a", domain: "xn--bcher-kva.example" } },
      true,
    ],
    [{ "client.name": { domain: "*.client.test" } }, { client: { ip: "192.0.2.1", name: null } }, false],
  ]);
});

test("address: patterns with * over the whole address, case-insensitive", () => {
  table([
    [{ sender: { address: ["*@sender.test"] } }, {}, true],
    [{ sender: { address: ["alice@*"] } }, {}, true],
    [{ sender: { address: ["bob@*"] } }, {}, false],
    [
      { sender: { address: ["*+bulk@sender.test"] } },
      { sender: { address: "news+bulk@sender.test", local: "news+bulk", domain: "sender.test" } },
      true,
    ],
    [{ sender: { address: ["*@sender.test"] } }, { sender: { address: "", local: "", domain: "" } }, false],
  ]);
});

test("equality: scalars, any of a list, case-insensitive strings, list values, { result } findings", () => {
  table([
    [{ role: "mx" }, {}, true],
    [{ role: "submission" }, {}, false],
    [{ tls: true }, {}, true],
    [{ trusted: true }, {}, false],
    [{ "sender.domain": "SENDER.TEST" }, {}, true],
    [{ "sample.result": ["fail", "softfail"] }, { facts: { sample: { result: "softfail" } } }, true],
    [{ "sample.result": { in: ["fail", "softfail"] } }, { facts: { sample: { result: "pass" } } }, false],
    [{ "sample.result": { eq: "pass" } }, { facts: { sample: { result: "pass" } } }, true],
    // A finding recorded as { result, … } compares by its result.
    [{ sample: "pass" }, { facts: { sample: { result: "pass" } } }, true],
    [{ tags: "partner" }, { tags: ["vip", "partner"] }, true],
    [{ "sample.zones": "bl.test" }, { facts: { sample: { zones: ["wl.test", "bl.test"] } } }, true],
    [{ "sample.level": 3 }, { facts: { sample: { level: "3" } } }, false],
    // `ne` is also true when the value is absent.
    [{ "sample.result": { ne: "pass" } }, { facts: {} }, true],
    [{ "sample.result": { ne: "pass" } }, { facts: { sample: { result: "pass" } } }, false],
  ]);
});

test("numeric comparisons: gt, gte, lt, lte, together as a range; non-numbers never compare", () => {
  table([
    [{ score: { gte: 10 } }, { score: 10 }, true],
    [{ score: { gt: 10 } }, { score: 10 }, false],
    [{ score: { lt: 0 } }, { score: -5 }, true],
    [{ score: { lte: -5 } }, { score: -4.5 }, false],
    [{ score: { gte: 5, lt: 10 } }, { score: 7 }, true],
    [{ score: { gte: 5, lt: 10 } }, { score: 10 }, false],
    [{ "sample.level": { gt: 1 } }, { facts: { sample: { level: "5" } } }, false],
  ]);
});

test("presence: exists true and false; null counts as absent", () => {
  table([
    [{ "auth.user": { exists: true } }, {}, false],
    [{ "auth.user": { exists: true } }, { authUser: "alice" }, true],
    [{ "sample.zones": { exists: false } }, { facts: {} }, true],
    [{ "sample.zones": { exists: false } }, { facts: { sample: { zones: null } } }, true],
    [{ sample: { exists: true } }, { facts: { sample: { result: "none" } } }, true],
  ]);
});

test("any, all, not, and several keys in one mapping (all must hold), nested", () => {
  const listed = { facts: { sample: { result: "fail" } }, score: 12 };
  table([
    [{ any: [{ score: { gte: 10 } }, { trusted: true }] }, listed, true],
    [{ any: [{ score: { gte: 20 } }, { trusted: true }] }, listed, false],
    [{ all: [{ score: { gte: 10 } }, { sample: "fail" }] }, listed, true],
    [{ all: [{ score: { gte: 10 } }, { sample: "pass" }] }, listed, false],
    [{ not: { trusted: true } }, listed, true],
    [{ score: { gte: 10 }, sample: "pass" }, listed, false],
    [{ not: { any: [{ sample: "pass" }, { all: [{ tls: false }, { role: "mx" }] }] } }, listed, true],
  ]);
});

test("a camelCase key naming a declared finding's field is that field (dmarcPolicy is dmarc.policy)", () => {
  const rule = compile({ dmarc: "fail", dmarcPolicy: "reject" });
  assert.deepEqual(rule.paths, ["dmarc", "dmarc.policy"]);
  assert.equal(rule.matches({ ...base, facts: { dmarc: { result: "fail", policy: "reject" } } }), true);
  assert.equal(rule.matches({ ...base, facts: { dmarc: { result: "fail", policy: "none" } } }), false);
});

test("a rule runs from the first phase at which everything it names (and its actions need) is known", () => {
  const phases = (when: unknown, action: unknown = "reject") => [...compile(when, action).phases];
  assert.deepEqual(phases(undefined), ["connect", "helo", "mail", "rcpt", "data", "queue"]);
  assert.deepEqual(phases({ "client.ip": "192.0.2.1" }), ["connect", "helo", "mail", "rcpt", "data", "queue"]);
  assert.deepEqual(phases({ helo: "x.test" }), ["helo", "mail", "rcpt", "data", "queue"]);
  // A finding: from the first phase its plugin has a hook in.
  assert.deepEqual(phases({ sample: "fail" }), ["mail", "rcpt", "data", "queue"]);
  assert.deepEqual(phases({ not: { dkim: "pass" } }), ["data", "queue"]);
  // A finding no plugin declares is known only when every hook has run.
  assert.deepEqual(phases({ "mystery.flag": true }), ["queue"]);
  // Transaction actions need a transaction.
  assert.deepEqual(phases({ "client.ip": "192.0.2.1" }, { tag: "x" }), ["mail", "rcpt", "data", "queue"]);
  // `recipient` is tested in the rcpt phase only; with a data-phase finding it can never run.
  assert.deepEqual(phases({ "recipient.domain": "example.test" }), ["rcpt"]);
  assert.deepEqual(phases({ "recipient.domain": "example.test", dkim: "fail" }), []);
});

test("list files: one entry per line, comments and blank lines ignored, paths from the policy's folder", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-lists-"));
  try {
    await writeFile(join(dir, "partners.txt"), "# partner networks\n192.0.2.0/28   # office\n\n2001:db8:1::/48\n");
    await writeFile(join(dir, "blocked.txt"), "*@spam.test\nbulk@*\n");
    await writeFile(join(dir, "domains.txt"), "example.test\n*.example.org\n");
    const policy = await parsePolicy(
      [
        "version: 1",
        "rules:",
        "  - name: partner",
        "    when: { client.ip: { network: [{ file: partners.txt }, 198.51.100.1] } }",
        "    action: accept",
        "  - name: blocked",
        "    when: { sender: { address: { file: ./blocked.txt } } }",
        "    action: reject",
        "  - name: ours",
        "    when: { sender: { domain: [{ file: domains.txt }] } }",
        "    action: { score: -1 }",
      ].join("\n"),
      join(dir, "policy.yaml"),
    );
    const [partner, blocked, ours] = compileRules(policy.config.rules, new Map()).rules;
    const client = (ip: string) => ({ ...base, client: { ip, name: null } });
    assert.equal(partner.matches(client("192.0.2.15")), true);
    assert.equal(partner.matches(client("192.0.2.16")), false);
    assert.equal(partner.matches(client("2001:db8:1:ff::1")), true);
    assert.equal(partner.matches(client("198.51.100.1")), true);
    const sender = (address: string) => ({
      ...base,
      sender: { address, local: address.split("@")[0], domain: address.split("@")[1] },
    });
    assert.equal(blocked.matches(sender("x@spam.test")), true);
    assert.equal(blocked.matches(sender("bulk@any.test")), true);
    assert.equal(blocked.matches(sender("bulky@any.test")), false);
    assert.equal(ours.matches(sender("a@mx.example.org")), true);
    assert.equal(ours.matches(sender("a@example.org")), false);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a bad list file entry or a missing list file is a policy problem at the line naming the file", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-lists-"));
  try {
    await writeFile(join(dir, "nets.txt"), "192.0.2.0/24\n192.0.2.300\n");
    const source = [
      "version: 1",
      "rules:",
      "  - name: a",
      "    when: { client.ip: { network: [{ file: nets.txt }] } }",
      "    action: reject",
      "  - name: b",
      "    when:",
      "      sender: { domain: { file: missing.txt } }",
      "    action: reject",
    ].join("\n");
    const error = await parsePolicy(source, join(dir, "policy.yaml")).then(
      () => assert.fail("the policy should be refused"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof PolicyError);
    assert.deepEqual(
      error.problems.map((p) => [p.line, p.path]),
      [
        [4, "rules.0.when.client.ip.network.0.file"],
        [8, "rules.1.when.sender.domain.file"],
      ],
    );
    assert.match(error.problems[0].message, /nets\.txt:2: "192\.0\.2\.300" is not an IP address/);
    assert.match(error.problems[1].message, /cannot read domain list .*missing\.txt/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("schema problems in rules are located and explained", async () => {
  const source = [
    "version: 1",
    "rules:",
    "  - name: a",
    "    when: { score: { gtee: 10 } }",
    "    action: reject",
    "  - name: b",
    "    when: {}",
    "    action: [reject, { tag: x }]",
    "  - name: c",
    "    when: { client.ip: { network: [300.1.1.1] } }",
    '    action: { reject: "450 4.7.1 soft" }',
    "  - name: d",
    "    action: { frobnicate: 1 }",
    "  - name: e",
    "    action: [{ 'skip': [] }, { addHeader: nocolon }]",
  ].join("\n");
  const problems = await refused(source);
  assert.deepEqual(problems, [
    '4 rules.0.when.score.gtee: unknown key "gtee"',
    "7 rules.1.when: empty condition: leave out `when` for a rule that always matches",
    "8 rules.1.action.0: reject decides, so it must be the last action of the rule",
    '10 rules.2.when.client.ip.network.0: "300.1.1.1" is not an IP address or CIDR network, e.g. "192.0.2.0/24"',
    '11 rules.2.action: reject: a reject action needs a 5xx reply, but "450 4.7.1 soft" starts with 450; e.g. "550 5.7.1 Rejected"',
    problems[5],
    "15 rules.4.action.0.skip: needs at least 1 item",
    '15 rules.4.action.1.addHeader: expected "Name: value", e.g. "X-Spam-Flag: YES"',
  ]);
  assert.match(problems[5], /^13 rules\.3\.action: unknown action \{"frobnicate":1\}: use accept, reject, defer/);
});

test("two rules with one name are refused", async () => {
  const problems = await refused(
    ["version: 1", "rules:", "  - { name: a, action: log }", "  - { name: a, action: accept }"].join("\n"),
  );
  assert.deepEqual(problems, ['4 rules.1.name: another rule is already named "a"']);
});

async function refused(source: string): Promise<string[]> {
  const error = await parsePolicy(source, "/tmp/rules.yaml").then(
    () => assert.fail("the policy should be refused"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof PolicyError);
  return error.problems.map((p) => `${p.line} ${p.path}: ${p.message}`);
}
