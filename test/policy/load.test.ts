// Valid policies: the shipped default, a policy using every key, JSON, and the JSON Schema.
import assert from "node:assert/strict";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPolicy, parsePolicy } from "../../app/catalogue.js";
import { policyJsonSchema } from "../../core/policy/load.js";
import { LOOPBACK_NETWORKS } from "../../core/policy/schema.js";
import { builtinPluginNames, builtinPlugins } from "../../plugins/index.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const fixtures = join(root, "test/fixtures/policies");

test("policies/default.yaml loads, with its relative paths anchored at policies/", async () => {
  const policy = await loadPolicy(join(root, "policies/default.yaml"));
  const { config } = policy;
  assert.equal(policy.file, join(root, "policies/default.yaml"));
  assert.equal(policy.dir, join(root, "policies"));
  assert.equal(config.server.hostname, "localhost");
  assert.deepEqual(config.server.listen, [{ address: "127.0.0.1:2525", submission: false, implicitTls: false }]);
  assert.equal(config.state.store, "memory");
  assert.deepEqual(config.relay.domains, ["localhost", "example.test"]);
  assert.deepEqual(config.relay.networks, ["127.0.0.0/8", "::1"]);
  assert.deepEqual(policy.pipeline, []);
  assert.deepEqual(config.routes, [{ to: `maildir:${join(root, "var/maildir")}` }]);
  assert.equal(config.delivery.mode, "proxy");
  assert.equal(config.delivery.spool, join(root, "var/spool"));
  assert.ok(config.hooks.onError.type === "defer" && config.hooks.onError.reply?.startsWith("451 4.3.0"));
});

test("a policy setting every key comes out as written, normalised and with absolute paths", async () => {
  const policy = await loadPolicy(join(fixtures, "full.yaml"));
  const { pipeline: entries, ...config } = policy.config;
  assert.deepEqual(config, {
    version: 1,
    server: {
      hostname: "mx.example.test",
      listen: [
        { address: "0.0.0.0:2525", submission: false, implicitTls: false },
        { address: "[::1]:2587", submission: true, implicitTls: false },
        { address: "127.0.0.1:2465", submission: false, implicitTls: true },
      ],
      tls: { cert: join(fixtures, "certs/cert.pem"), key: "/etc/portcullis/key.pem" },
      proxyProtocol: ["10.0.0.0/8", "2001:db8::/32"],
      greetingDelay: 2000,
      limits: {
        maxMessageSize: 10 * 1024 * 1024,
        maxRecipients: 50,
        maxClients: 200,
        maxConnectionsPerIp: 5,
        idleTimeout: 30_000,
        maxTransactionsPerConnection: 10,
        dataTimeout: 120_000,
        maxHeaderSize: 32 * 1024,
        maxHeaderCount: 500,
        maxCommandLength: 2048,
        maxErrors: 10,
        commandTimeout: 120_000,
        maxConnectionTime: 600_000,
        stressThreshold: 0.5,
        stressTimeout: 5_000,
      },
      xclient: ["192.0.2.25"],
      bareLineEndings: "reject",
      nulBytes: "strip",
      longLines: "allow",
      workers: 2,
      auth: {
        users: join(fixtures, "users"),
        senders: "any",
        maxFailures: 3,
        failureWindow: 300_000,
        maxFailuresPerUser: 10,
        maxInFlightPerIp: 1,
        hashConcurrency: 1,
        hashQueue: 8,
        refusalDelay: 500,
      },
    },
    dns: { servers: ["127.0.0.1:5353", "192.0.2.53:53", "[::1]:53"], timeout: 1500, cacheSize: 100 },
    state: { store: { redis: "redis://127.0.0.1:6379/2" }, timeout: 500, onStoreError: "allow" },
    relay: {
      domains: ["example.test", "*.example.org", "bücher.example"],
      networks: ["192.0.2.0/24", "2001:db8::1"],
      authenticatedUsersMayRelay: false,
      recipients: [
        "alice@example.test",
        "*@example.org",
        { file: join(fixtures, "lists/recipients.txt"), entries: ["bob@example.test"] },
      ],
      postmaster: `maildir:${join(fixtures, "var/postmaster")}`,
      verify: { positiveTtl: 86_400_000, negativeTtl: 600_000, timeout: 5000, cacheSize: 1000 },
    },
    hooks: { timeout: 5000, onError: { type: "disconnect", reply: "421 4.3.0 Try again later [{client.ip}]" } },
    rules: [
      {
        name: "listed",
        when: { kind: "test", path: "score", test: { kind: "compare", op: "gte", value: 10 }, at: ["score"] },
        actions: [{ type: "reject", reply: "554 5.7.1 Blocked by {rule}" }],
        mode: "observe",
      },
    ],
    routes: [
      {
        match: {
          recipientDomain: ["example.test"],
          senderDomain: ["a.example", "*.b.example"],
          clientNetwork: ["192.0.2.0/24"],
        },
        to: "lmtp://127.0.0.1:2400",
        verify: "rcpt",
      },
      { match: { recipientDomain: ["*.example.org"] }, to: `maildir:${join(fixtures, "var/maildir")}` },
      { match: { clientNetwork: ["2001:db8::/32"] }, to: "discard" },
      { to: "smtp://[::1]:2600" },
    ],
    delivery: {
      mode: "queue",
      spool: join(fixtures, "var/spool"),
      retry: { schedule: [30_000, 120_000], maxAge: 86_400_000 },
      timeout: 90_000,

      mxPort: 2525,
      maxReceived: 50,
      spoolLimit: 1_000_000_000,
      mtaSts: { enabled: false, policyUrl: "http://127.0.0.1:8080/{domain}" },
      bounces: { suppressSuspect: false, unauthenticated: "full" },
    },
    observability: {
      // Per-module levels.
      log: {
        level: "debug",
        levels: { smtp: "info", queue: "trace", state: "warn", "plugin:./plugins/check.ts": "error" },
      },
      metrics: "127.0.0.1:9464",
      // Rotation and privacy defaults.
      transactionLog: {
        path: join(fixtures, "var/log/transactions.jsonl"),
        maxSize: 100_000_000,
        maxAge: 86_400_000,
        keep: 7,
        hashLocalParts: false,
      },
    },
  });
  assert.equal(entries.length, 2);

  const [first, second] = policy.pipeline;
  assert.equal(first.name, "./plugins/check.ts");
  assert.equal(first.definition.name, "fixture-check");
  assert.equal(first.index, 0);
  assert.deepEqual(first.options, { threshold: 3, mode: "strict" });
  assert.deepEqual(first.on, {
    hit: { type: "reject", reply: "554 5.7.1 Blocked [{client.ip}]" },
    soft: { type: "score", points: 2.5 },
  });
  assert.equal(first.timeoutMs, 750);
  assert.deepEqual(first.onError, { type: "ignore" });

  // An entry without its own timeout and onError takes the hooks: defaults; its options get the plugin's defaults.
  assert.equal(second.index, 1);
  assert.deepEqual(second.options, { threshold: 1, mode: "lax" });
  assert.deepEqual(second.on, {});
  assert.equal(second.timeoutMs, 5000);
  assert.deepEqual(second.onError, config.hooks.onError);
  assert.equal(second.definition, first.definition);
});

test("a minimal policy gets every default", async () => {
  const { config, pipeline } = await parsePolicy("version: 1\n", "/srv/portcullis/policy.yaml");
  assert.equal(config.server.hostname, hostname());
  assert.deepEqual(config.server.listen, [{ address: "127.0.0.1:2525", submission: false, implicitTls: false }]);
  assert.equal(config.server.proxyProtocol, false);
  assert.equal(config.server.greetingDelay, 0);
  assert.deepEqual(config.server.limits, {
    maxMessageSize: 25_000_000,
    maxRecipients: 100,
    maxClients: 1000,
    maxConnectionsPerIp: 20,
    idleTimeout: 60_000,
    maxTransactionsPerConnection: 100,
    dataTimeout: 600_000,
    maxHeaderSize: 65_536,
    maxHeaderCount: 1000,
    maxCommandLength: 4096,
    maxErrors: 20,
    commandTimeout: 300_000,
    maxConnectionTime: 1_800_000,
    stressThreshold: 0.8,
    stressTimeout: 10_000,
  });
  assert.equal(config.server.xclient, false);
  assert.equal(config.server.bareLineEndings, "normalize");
  assert.equal(config.server.nulBytes, "reject");
  assert.equal(config.server.longLines, "reject");
  assert.equal(config.server.auth, undefined);
  assert.deepEqual(config.dns, { timeout: 3000, cacheSize: 50_000 });
  assert.deepEqual(config.state, { store: "memory", timeout: 250, onStoreError: "defer" });
  assert.deepEqual(config.relay, {
    domains: [],
    networks: [],
    authenticatedUsersMayRelay: true,
    verify: { positiveTtl: 7 * 86_400_000, negativeTtl: 3 * 3_600_000, timeout: 10_000, cacheSize: 100_000 },
  });
  assert.deepEqual(config.hooks, {
    timeout: 10_000,
    onError: { type: "defer", reply: "451 4.3.0 Temporary policy failure, try again later" },
  });
  assert.deepEqual(pipeline, []);
  assert.deepEqual(config.routes, [{ to: "mx" }]);
  assert.deepEqual(config.delivery, {
    mode: "proxy",
    spool: "/srv/portcullis/var/spool",
    retry: { schedule: [60_000, 300_000, 900_000, 3_600_000, 14_400_000], maxAge: 5 * 86_400_000 },
    timeout: 300_000,

    mxPort: 25,
    maxReceived: 100,
    spoolLimit: 10_000_000_000,
    mtaSts: { enabled: true, policyUrl: "https://mta-sts.{domain}/.well-known/mta-sts.txt" },
    bounces: { suppressSuspect: true, unauthenticated: "headers" },
  });
  assert.deepEqual(config.observability, { log: { level: "info" } });
});

test("proxyProtocol: true trusts loopback only", async () => {
  const { config } = await parsePolicy("version: 1\nserver: { proxyProtocol: true }\n", "p.yaml");
  assert.deepEqual(config.server.proxyProtocol, LOOPBACK_NETWORKS);
  assert.deepEqual(LOOPBACK_NETWORKS, ["127.0.0.0/8", "::1"]);
});

test("a JSON policy loads like YAML", async () => {
  const policy = await loadPolicy(join(fixtures, "json-policy.json"));
  assert.equal(policy.config.server.hostname, "json.example.test");
  assert.deepEqual(policy.config.server.listen, [{ address: "[::1]:2526", submission: false, implicitTls: false }]);
  assert.deepEqual(policy.config.relay.domains, ["example.test"]);
  assert.equal(policy.pipeline.length, 1);
  assert.deepEqual(policy.pipeline[0].options, { threshold: 7, mode: "lax" });
  assert.deepEqual(policy.pipeline[0].on, { soft: { type: "ignore" } });
});

test("parsePolicy resolves plugin paths and relative paths from the folder of `file`", async () => {
  const file = join(fixtures, "sub/../inline.yaml");
  const policy = await parsePolicy(
    "version: 1\npipeline:\n  - { plugin: ./plugins/check.ts, threshold: 2 }\ndelivery: { spool: spool }\n",
    file,
  );
  assert.equal(policy.file, join(fixtures, "inline.yaml"));
  assert.equal(policy.dir, fixtures);
  assert.equal(policy.pipeline[0].definition.name, "fixture-check");
  assert.equal(policy.config.delivery.spool, join(fixtures, "spool"));
  assert.equal(dirname(policy.config.delivery.spool), policy.dir);
});

test("policyJsonSchema describes every key and accepts durations and sizes as text", () => {
  const schema = policyJsonSchema();
  const undescribed: string[] = [];
  const walk = (node: unknown, path: string) => {
    if (node === null || typeof node !== "object") return;
    const record = node as Record<string, unknown>;
    for (const [key, child] of Object.entries((record.properties ?? {}) as Record<string, Record<string, unknown>>)) {
      if (typeof child.description !== "string" || child.description === "") undescribed.push(`${path}${key}`);
      walk(child, `${path}${key}.`);
    }
    walk(record.items, `${path}[].`);
    for (const alternative of (record.anyOf ?? []) as unknown[]) walk(alternative, path);
    walk(record.additionalProperties, `${path}*.`);
  };
  walk(schema, "");
  assert.deepEqual(undescribed, []);

  const properties = schema.properties as Record<
    string,
    { description?: string; properties: Record<string, Record<string, unknown>> }
  >;
  assert.equal(properties.version.description, "policy format version: 1");
  const serverKeys = properties.server.properties;
  assert.ok(!("default" in serverKeys.hostname), "the generating host's name is not baked in as a default");
  const idleTimeout = (serverKeys.limits as { properties: Record<string, { anyOf?: Array<{ type?: string }> }> })
    .properties.idleTimeout;
  assert.ok(idleTimeout.anyOf?.some((alternative) => alternative.type === "string"));
  // `rules:` keys are described like every other (walked above).
  assert.match(String((properties.rules as { description?: string }).description), /evaluated in order/);
});

test("the built-in registry lists its names sorted, each a lazy loader", () => {
  const names = builtinPluginNames();
  assert.deepEqual(names, Object.keys(builtinPlugins).sort());
  for (const name of names) assert.equal(typeof builtinPlugins[name], "function");
});
