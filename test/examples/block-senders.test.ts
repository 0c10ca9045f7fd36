/**
 * The worked example of docs/writing-plugins.md, tested the way an outside plugin author would:
 * imports from "portcullis/testkit", no sockets.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { runPlugin, runPolicy } from "portcullis/testkit";
import blockSenders from "../../examples/block-senders/block-senders.js";

const policyFile = new URL("../../examples/block-senders/policy.yaml", import.meta.url).pathname;

test("refuses a listed sender domain with the plugin's reply and records the finding", async () => {
  const result = await runPlugin(
    blockSenders,
    { domains: ["spam.test"] },
    { ip: "192.0.2.1", helo: "mx.spam.test", from: "x@SPAM.test", to: ["u@example.test"] },
  );
  assert.equal(result.outcome, "rejected");
  assert.equal(result.phase, "mail");
  assert.deepEqual(result.reply, { code: 550, enhanced: "5.7.1", text: "Mail from spam.test is not accepted here" });
  assert.deepEqual(result.decidedBy, { source: "plugin", name: "block-senders" });
  assert.deepEqual(result.facts["block-senders"], { domain: "spam.test", blocked: true });
});

test("lets other senders through", async () => {
  const result = await runPlugin(
    blockSenders,
    { domains: ["spam.test"] },
    { ip: "192.0.2.1", from: "x@ham.test", to: ["u@example.test"] },
  );
  assert.equal(result.outcome, "accepted");
  assert.deepEqual(result.facts["block-senders"], { domain: "ham.test", blocked: false });
});

test("the example policy loads the plugin by path and its `on:` turns the reject into a deferral", async () => {
  const result = await runPolicy(policyFile, { ip: "192.0.2.1", from: "x@junk.test", to: ["u@example.test"] });
  assert.equal(result.outcome, "deferred");
  assert.deepEqual(result.reply, { code: 450, enhanced: "4.7.1", text: "Mail from junk.test is not accepted here" });
  const accepted = await runPolicy(policyFile, { ip: "192.0.2.1", from: "x@ham.test", to: ["u@example.test"] });
  assert.equal(accepted.outcome, "accepted");
  assert.deepEqual(Object.keys(accepted.routes), [
    `maildir:${new URL("../../var/example-maildir", `file://${policyFile}`).pathname}`,
  ]);
});

test("bad options are refused by the plugin's schema", async () => {
  await assert.rejects(
    runPlugin(blockSenders, { domains: [] }, { ip: "192.0.2.1", from: "x@ham.test", to: ["u@example.test"] }),
    /too_small|at least 1|>=1/i,
  );
});
