/**
 * Rule actions, each through the test kit's simulated transaction (the real session engine), plus
 * the evaluation order: non-deciding actions go on, the first deciding match ends it, a rule acts
 * once, observe mode acts nowhere.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parsePolicy } from "../../../app/catalogue.js";
import { policyRuntime, type SimulatedTransaction, simulate } from "../../../app/testkit.js";
import type { ConnectionContext, TransactionContext } from "../../../core/contract/api.js";
import { createLogger } from "../../../core/observability/log.js";
import { applyRules, connectionRuleState } from "../../../core/policy/rules/apply.js";
import { runs } from "./fixtures/sample.js";

const fixtures = fileURLToPath(new URL("./fixtures/", import.meta.url));

const mail: SimulatedTransaction = {
  ip: "192.0.2.10",
  helo: "mail.client.test",
  from: "alice@sender.test",
  to: ["bob@example.test"],
};

/** Runs `mail` (or `input`) through a policy made of `rules` (YAML lines) and the sample plugin. */
async function run(rules: string[], input: Partial<SimulatedTransaction> = {}, pipeline: string[] = []) {
  const source = [
    "version: 1",
    "server: { hostname: gw.test }",
    "relay: { domains: [example.test] }",
    "routes: [{ to: discard }]",
    `pipeline: [${pipeline.join(", ")}]`,
    "rules:",
    ...rules.map((line) => `  ${line}`),
  ].join("\n");
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split("\n")) if (line) logs.push(JSON.parse(line));
      callback();
    },
  });
  const runtime = await policyRuntime(await parsePolicy(source, `${fixtures}policy.yaml`), {
    log: createLogger("info", sink),
  });
  const result = await simulate(runtime, { ...mail, ...input });
  return { ...result, logs };
}

const ruleTrace = (
  trace: ReadonlyArray<{ plugin: string; source?: string; verdict: string | null; decision: string }>,
) => trace.filter((t) => t.source === "rule").map((t) => `${t.plugin}: ${t.verdict} → ${t.decision}`);

test("reject with a custom reply fills placeholders; the rule is recorded as who decided", async () => {
  const result = await run(
    [
      "- name: sample-fail",
      "  when: { sample: fail }",
      '  action: { reject: "550 5.7.1 {sender} from [{client.ip}] refused by {rule}: sample {sample.result}" }',
    ],
    {},
    ["{ plugin: ./sample.ts, phase: mail, value: { result: fail } }"],
  );
  assert.equal(result.outcome, "rejected");
  assert.equal(result.phase, "mail");
  assert.deepEqual(result.decidedBy, { source: "rule", name: "sample-fail" });
  assert.deepEqual(result.reply, {
    code: 550,
    enhanced: "5.7.1",
    text: "alice@sender.test from [192.0.2.10] refused by sample-fail: sample fail",
  });
});

test("defer without a reply sends the generic temporary reply; disconnect closes", async () => {
  const deferred = await run(["- { name: later, when: { helo: mail.client.test }, action: defer }"]);
  assert.equal(deferred.outcome, "deferred");
  assert.equal(deferred.phase, "helo");
  assert.equal(deferred.reply?.code, 451);
  const closed = await run(['- { name: go, action: { disconnect: "421 4.7.0 Go away {client.ip}" } }']);
  assert.equal(closed.outcome, "disconnected");
  assert.equal(closed.phase, "connect");
  assert.equal(closed.reply?.text, "Go away 192.0.2.10");
});

test("accept ends rule evaluation for the transaction: a later rule never acts", async () => {
  const result = await run([
    "- { name: vip, when: { sender: { address: 'alice@*' } }, action: accept }",
    "- { name: deny-sender, when: { sender.domain: sender.test }, action: reject }",
    "- { name: deny-late, when: { recipients: { exists: true } }, action: reject }",
  ]);
  assert.equal(result.outcome, "accepted");
  assert.deepEqual(ruleTrace(result.trace), ["vip: accept → accept"]);
});

test("score adds points; later rules see the new score; each rule acts once per transaction", async () => {
  const result = await run([
    "- { name: base, when: { client.ip: { network: 192.0.2.0/24 } }, action: { score: 4 } }",
    "- { name: sender, when: { sender.domain: sender.test }, action: { score: 3.5 } }",
    "- { name: threshold, when: { score: { gte: 7.5 } }, action: { reject: '554 5.7.1 Score {rule}' } }",
  ]);
  // base acts at connect (once, not again in later phases); sender at MAIL; then the threshold.
  assert.deepEqual(ruleTrace(result.trace).slice(-2), [
    "sender: score +3.5 → continue",
    'threshold: reject "554 5.7.1 Score {rule}" → reject',
  ]);
  assert.equal(result.score, 7.5);
  assert.equal(result.reply?.text, "Score threshold");
});

test("tag, addHeader and route change the transaction; headers get placeholders", async () => {
  const result = await run([
    "- name: mark",
    "  when: { sender.domain: sender.test }",
    "  action:",
    "    - { tag: partner }",
    "    - { addHeader: 'X-Portcullis-Rule: {rule} for {sender}' }",
    "    - { route: 'smtp://127.0.0.1:2600' }",
  ]);
  assert.equal(result.outcome, "accepted");
  assert.deepEqual(result.tags, ["partner"]);
  assert.deepEqual(result.addedHeaders, ["X-Portcullis-Rule: mark for alice@sender.test"]);
  assert.deepEqual(result.routes, { "smtp://127.0.0.1:2600": ["bob@example.test"] });
});

test("quarantine accepts into its route, tags the transaction, and no later rule acts", async () => {
  const result = await run([
    "- { name: suspicious, when: { sender.domain: sender.test }, action: { quarantine: 'maildir:./quarantine' } }",
    "- { name: reroute, action: { route: 'smtp://127.0.0.1:2600' } }",
  ]);
  assert.equal(result.outcome, "accepted");
  assert.deepEqual(result.tags, ["quarantine"]);
  assert.deepEqual(result.routes, { [`maildir:${fixtures}quarantine`]: ["bob@example.test"] });
  assert.deepEqual(ruleTrace(result.trace), ["suspicious: quarantine maildir:" + `${fixtures}quarantine → continue`]);
});

test("skip: the named plugins' hooks do not run for the rest of the transaction", async () => {
  runs.length = 0;
  const pipeline = ["{ plugin: ./sample.ts, phase: data, value: { result: fail } }"];
  const skipped = await run(
    ["- { name: trusted-sender, when: { sender.domain: sender.test }, action: { 'skip': ./sample.ts } }"],
    {},
    pipeline,
  );
  assert.deepEqual(runs, []);
  assert.equal(skipped.facts.sample, undefined);
  const ran = await run(
    ["- { name: trusted-sender, when: { sender.domain: other.test }, action: { 'skip': ./sample.ts } }"],
    {},
    pipeline,
  );
  assert.deepEqual(runs, ["data"]);
  assert.deepEqual(ran.facts.sample, { result: "fail" });
});

test("log only: the rule logs its text and changes nothing", async () => {
  const result = await run([
    "- { name: note, when: { helo: { domain: '*.client.test' } }, action: { log: 'helo {helo} seen' } }",
  ]);
  assert.equal(result.outcome, "accepted");
  const line = result.logs.find((l) => l.msg === "rule log");
  assert.deepEqual([line?.rule, line?.note], ["note", "helo mail.client.test seen"]);
});

test("observe mode: the rule is logged and traced as what it would do, and acts nowhere", async () => {
  const result = await run([
    "- { name: strict, when: { sender.domain: sender.test }, action: [{ score: 50 }, reject], mode: observe }",
  ]);
  assert.equal(result.outcome, "accepted");
  assert.equal(result.score, 0);
  assert.deepEqual(ruleTrace(result.trace), ["strict: observe: score +50, reject → continue"]);
  const line = result.logs.find((l) => l.rule === "strict");
  assert.deepEqual(
    [line?.msg, line?.mode, line?.action],
    ["rule would act (observe mode)", "observe", "score +50, reject"],
  );
});

test("in the rcpt phase a refusing rule acts once per recipient; the others are accepted", async () => {
  const result = await run(
    [
      "- { name: no-postmaster, when: { recipient: { address: 'postmaster@*' } }, action: { reject: '550 5.1.1 {recipient} unknown' } }",
    ],
    { to: ["postmaster@example.test", "bob@example.test", "POSTMASTER@example.test"] },
  );
  assert.equal(result.outcome, "accepted");
  assert.deepEqual(
    result.recipients.map((r) => [r.address, r.decision?.reply.text ?? "ok"]),
    [
      ["postmaster@example.test", "postmaster@example.test unknown"],
      ["bob@example.test", "ok"],
      ["POSTMASTER@example.test", "POSTMASTER@example.test unknown"],
    ],
  );
  assert.deepEqual(result.routes, { discard: ["bob@example.test"] });
});

test("removeHeader registers a case-insensitive removal of incoming fields", () => {
  const connection = {
    client: { ip: "192.0.2.1" },
    facts: {},
    score: 0,
    helo: null,
    tls: null,
  } as unknown as ConnectionContext;
  const transaction = {
    sender: { address: "a@b.test", local: "a", domain: "b.test" },
    recipients: [],
    facts: {},
    score: 0,
    tags: new Set<string>(),
    headers: { prepend: [], remove: [] },
    route: null,
  } as unknown as TransactionContext;
  const rules = {
    rules: [],
    byPhase: {
      connect: [],
      helo: [],
      mail: [
        {
          name: "strip",
          index: 0,
          mode: "enforce" as const,
          actions: [{ type: "removeHeader" as const, name: "X-Internal" }],
          unconditional: true,
          phases: new Set(["mail" as const]),
          perRecipient: false,
          paths: [],
          when: { kind: "always" as const },
          matches: () => true,
        },
      ],
      rcpt: [],
      data: [],
      queue: [],
    },
  };
  const log = createLogger("silent");
  const decision = applyRules(rules, "mail", { connection, transaction }, connectionRuleState(), { log }, []);
  assert.equal(decision.kind, "continue");
  const [remove] = transaction.headers.remove;
  assert.equal(remove("x-internal", "1", 0), true);
  assert.equal(remove("X-Internal-Other", "1", 1), false);
});
