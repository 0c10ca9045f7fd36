// Every kind of bad policy file is reported as `file:line:col key.path: message`, at the node to fix.
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPolicy, parsePolicy } from "../../app/catalogue.js";
import { PolicyError } from "../../core/policy/load.js";
import { builtinPluginNames } from "../../plugins/index.js";

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/policies/${name}`, import.meta.url));

async function policyError(load: Promise<unknown>): Promise<PolicyError> {
  try {
    await load;
  } catch (error) {
    assert.ok(error instanceof PolicyError, `expected a PolicyError, got ${String(error)}`);
    assert.equal(error.code, "PORTCULLIS_ERR_POLICY");
    return error;
  }
  assert.fail("the policy loaded, but it should have been refused");
}

/** Asserts the message has a line `file:line:col path: …` that contains every fragment; returns that line. */
function assertProblem(
  error: PolicyError,
  where: { file: string; line: number; col: number; path: string },
  ...fragments: string[]
): string {
  const prefix = `${where.file}:${where.line}:${where.col} ${where.path}: `;
  const found = error.message.split("\n").find((line) => line.startsWith(prefix));
  assert.ok(found, `no problem starting with "${prefix}" in:\n${error.message}`);
  for (const fragment of fragments) assert.ok(found.includes(fragment), `"${fragment}" missing from: ${found}`);
  const problem = error.problems.find((p) => p.line === where.line && p.col === where.col && p.path === where.path);
  assert.ok(problem, "the problem is also in error.problems");
  assert.equal(problem.file, where.file);
  return found;
}

async function loadFixture(name: string) {
  const file = fixture(name);
  return { file, error: await policyError(loadPolicy(file)) };
}

test("an unknown key is reported at the key, with the likely intended name", async () => {
  const { file, error } = await loadFixture("unknown-key.yaml");
  assertProblem(error, { file, line: 3, col: 3, path: "server.hostnme" }, 'unknown key "hostnme"', '"hostname"');
  assert.equal(error.problems.length, 1);
});

test("a value of the wrong type names the expected type and what was found", async () => {
  const { file, error } = await loadFixture("wrong-type.yaml");
  assertProblem(error, { file, line: 4, col: 20, path: "server.limits.maxRecipients" }, "expected number", '"many"');
});

test("an unknown plugin name is reported at plugin: with the built-in names", async () => {
  const { file, error } = await loadFixture("unknown-plugin.yaml");
  const line = assertProblem(error, { file, line: 3, col: 13, path: "pipeline.0.plugin" }, 'unknown plugin "fcrdsn"');
  for (const name of builtinPluginNames()) assert.ok(line.includes(name), `${name} is listed`);
  assert.ok(line.includes("./"), "says how to name a plugin file");
});

test("a bad CIDR network is reported at the list item", async () => {
  const { file, error } = await loadFixture("bad-cidr.yaml");
  assertProblem(
    error,
    { file, line: 3, col: 27, path: "relay.networks.1" },
    '"10.0.0.0/33" is not an IP address or CIDR network',
  );
});

test("a bad duration string says how to write one", async () => {
  const { file, error } = await loadFixture("bad-duration.yaml");
  assertProblem(
    error,
    { file, line: 4, col: 18, path: "server.limits.idleTimeout" },
    '"60 seconds" is not a duration',
    '"30s"',
  );
});

test("a bad size string says how to write one", async () => {
  const { file, error } = await loadFixture("bad-size.yaml");
  assertProblem(
    error,
    { file, line: 4, col: 21, path: "server.limits.maxMessageSize" },
    '"25 parsecs" is not a size',
    '"25MB"',
  );
});

// Inline rather than a fixture file: Biome parses the YAML files of the repository and would refuse a broken one.
test("a YAML syntax error is reported with its position and the key where the parser stopped", async () => {
  const source = "version: 1\nrelay:\n  domains: [example.test\n  networks: []\n";
  const error = await policyError(parsePolicy(source, "syntax-error.yaml"));
  assertProblem(error, { file: "syntax-error.yaml", line: 4, col: 3, path: "relay.networks" }, "YAML syntax", "]");
});

test("a duplicate key is reported at its second occurrence", async () => {
  const { file, error } = await loadFixture("duplicate-key.yaml");
  assertProblem(error, { file, line: 4, col: 3, path: "relay.domains" }, "appears twice");
});

test("a reply of the wrong class in on: is refused", async () => {
  const { file, error } = await loadFixture("bad-reply-on.yaml");
  assertProblem(
    error,
    { file, line: 6, col: 22, path: "pipeline.0.on.hit.reject" },
    "reject action needs a 5xx reply",
    "451",
  );
});

test("a reply of the wrong class in onError is refused", async () => {
  const { file, error } = await loadFixture("bad-reply-onerror.yaml");
  assertProblem(error, { file, line: 3, col: 21, path: "hooks.onError.defer" }, "defer action needs a 4xx reply");
});

test("a malformed reply text says what a reply looks like", async () => {
  const error = await policyError(parsePolicy("version: 1\nhooks:\n  onError: { reject: nonsense }\n", "inline.yaml"));
  assertProblem(
    error,
    { file: "inline.yaml", line: 3, col: 22, path: "hooks.onError.reject" },
    "is not an SMTP reply",
    "550 5.7.1",
  );
});

test("a route target without a port is refused with the accepted forms", async () => {
  const { file, error } = await loadFixture("bad-route.yaml");
  assertProblem(error, { file, line: 4, col: 9, path: "routes.0.to" }, "smtp:// needs HOST:PORT");
  const other = await policyError(parsePolicy('version: 1\nroutes:\n  - to: "ftp://x.test"\n', "inline.yaml"));
  assertProblem(other, { file: "inline.yaml", line: 3, col: 9, path: "routes.0.to" }, "mx", "discard", "maildir:PATH");
});

test("bad options of a plugin loaded by path are reported under its entry, prefixed with the plugin", async () => {
  const { file, error } = await loadFixture("plugin-bad-options.yaml");
  assertProblem(
    error,
    { file, line: 4, col: 16, path: "pipeline.0.threshold" },
    "plugin ./plugins/check.ts: must be greater than 0",
  );
  assertProblem(
    error,
    { file, line: 5, col: 5, path: "pipeline.0.mdoe" },
    'plugin ./plugins/check.ts: unknown key "mdoe"',
    '"mode"',
  );
  assert.equal(error.problems.length, 2);
});

test("a missing plugin option is reported at the entry", async () => {
  const error = await policyError(
    parsePolicy("version: 1\npipeline:\n  - plugin: ./plugins/check.ts\n", fixture("inline.yaml")),
  );
  assertProblem(
    error,
    { file: fixture("inline.yaml"), line: 3, col: 5, path: "pipeline.0.threshold" },
    'missing required key "threshold"',
  );
});

test("an on: key that is not a verdict of the plugin lists the valid verdicts", async () => {
  const { file, error } = await loadFixture("unknown-verdict.yaml");
  assertProblem(error, { file, line: 7, col: 7, path: "pipeline.0.on.hot" }, 'no verdict "hot"', "hit, soft");
  assert.equal(error.problems.length, 1);
});

test("a plugin module that throws on import names the file and the error", async () => {
  const { file, error } = await loadFixture("plugin-throws.yaml");
  assertProblem(
    error,
    { file, line: 3, col: 13, path: "pipeline.0.plugin" },
    fixture("plugins/throws.ts"),
    "fixture plugin refuses to load",
  );
});

test("a module whose default export is no plugin says how to write one", async () => {
  const { file, error } = await loadFixture("plugin-not-a-plugin.yaml");
  assertProblem(
    error,
    { file, line: 3, col: 13, path: "pipeline.0.plugin" },
    fixture("plugins/not-a-plugin.ts"),
    "definePlugin",
  );
});

test("a plugin path that does not exist is named, resolved from the policy's folder", async () => {
  const { file, error } = await loadFixture("plugin-missing-file.yaml");
  assertProblem(error, { file, line: 3, col: 13, path: "pipeline.0.plugin" }, fixture("plugins/nowhere.ts"));
});

test("a policy in JSON is located by line and column too", async () => {
  const { file, error } = await loadFixture("bad-json.json");
  assertProblem(error, { file, line: 3, col: 43, path: "relay.networks.1" }, '"192.0.2.300"');
});

test("every problem of a file is listed, in file order", async () => {
  const { file, error } = await loadFixture("many-problems.yaml");
  assert.deepEqual(
    error.problems.map((p) => `${p.line}:${p.col} ${p.path}`),
    [
      "1:10 version",
      "4:18 server.listen.0.address",
      "6:17 server.limits.maxClients",
      "8:14 relay.networks.0",
      "10:13 pipeline.0.plugin",
      "11:5 pipeline.1.threshold",
      "13:22 pipeline.1.on.hit.reject",
      "15:9 routes.0.to",
      "16:1 colour",
    ],
  );
  assert.equal(error.message.split("\n").length, 9);
  assertProblem(error, { file, line: 1, col: 10, path: "version" }, "version must be 1");
});

test("a missing version and an empty file are explained", async () => {
  const missing = await policyError(parsePolicy("server: {}\n", "p.yaml"));
  assertProblem(missing, { file: "p.yaml", line: 1, col: 1, path: "version" }, 'missing required key "version"');
  const empty = await policyError(parsePolicy("", "p.yaml"));
  assert.match(empty.message, /^p\.yaml:1:1 a policy is a mapping of keys; start with `version: 1`$/);
});

test("a listener that needs TLS without server.tls is refused", async () => {
  const source = 'version: 1\nserver:\n  listen:\n    - { address: "127.0.0.1:2587", submission: true }\n';
  const error = await policyError(parsePolicy(source, "p.yaml"));
  assertProblem(error, { file: "p.yaml", line: 4, col: 48, path: "server.listen.0.submission" }, "server.tls");
});

test("an unreadable policy file is a PolicyError naming the file", async () => {
  const file = fixture("does-not-exist.yaml");
  const error = await policyError(loadPolicy(file));
  assert.ok(error.message.startsWith(`${file}:1:1 cannot read the policy file`), error.message);
});

test("a policy made of several YAML documents is refused", async () => {
  const error = await policyError(parsePolicy("version: 1\n---\nversion: 1\n", "p.yaml"));
  assert.match(error.message, /^p\.yaml:2:1 a policy file holds one YAML document/);
});

test("a shared store's Redis Cluster or Sentinel mistakes are reported where they are, not as a shape mismatch", async () => {
  const cluster = await policyError(
    parsePolicy(
      [
        "version: 1",
        "state:",
        "  store:",
        "    cluster:",
        '      nodes: ["redis://10.0.2.5:6379/3", "redis://:secret@10.0.2.6:6379", "10.0.2.7:6379"]',
        "      node: x",
      ].join("\n"),
      "cluster.yaml",
    ),
  );
  const file = "cluster.yaml";
  assertProblem(cluster, { file, line: 5, col: 15, path: "state.store.cluster.nodes.0" }, "only database 0");
  assertProblem(cluster, { file, line: 5, col: 42, path: "state.store.cluster.nodes.1" }, "credentials of the first");
  assertProblem(cluster, { file, line: 5, col: 75, path: "state.store.cluster.nodes.2" }, "not a Redis URL");
  assertProblem(cluster, { file, line: 6, col: 7, path: "state.store.cluster.node" }, 'did you mean "nodes"');
  assert.equal(cluster.problems.length, 4);

  const sentinel = await policyError(
    parsePolicy(
      'version: 1\nstate:\n  store:\n    sentinel: { sentinels: ["10.0.2.5"], nme: mymaster }\n  timeout: soon\n',
      "sentinel.yaml",
    ),
  );
  const where = (line: number, col: number, path: string) => ({ file: "sentinel.yaml", line, col, path });
  assertProblem(sentinel, where(4, 15, "state.store.sentinel.name"), 'missing required key "name"');
  assertProblem(sentinel, where(4, 29, "state.store.sentinel.sentinels.0"), "not host:port");
  assertProblem(sentinel, where(4, 42, "state.store.sentinel.nme"), 'did you mean "name"');
  assertProblem(sentinel, where(5, 12, "state.timeout"), "not a duration");
  assert.equal(sentinel.problems.length, 4);

  const both = await policyError(
    parsePolicy(
      'version: 1\nstate:\n  store: { redis: "redis://10.0.2.5:6379", sentinel: { sentinels: ["10.0.2.5:26379"], name: m } }\n',
      "both.yaml",
    ),
  );
  assertProblem(
    both,
    { file: "both.yaml", line: 3, col: 10, path: "state.store" },
    "exactly one of",
    "redis and sentinel",
  );
  const typo = await policyError(parsePolicy("version: 1\nstate:\n  store: memroy\n", "typo.yaml"));
  assertProblem(typo, { file: "typo.yaml", line: 3, col: 10, path: "state.store" }, 'expected "memory"', "sentinel");
});
