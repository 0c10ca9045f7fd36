// The action forms of a policy and the replies each one may carry.
import assert from "node:assert/strict";
import { test } from "node:test";
import { type Action, ActionSchema } from "../../core/contract/actions.js";

function messages(input: unknown): string[] {
  const result = ActionSchema.safeParse(input);
  assert.equal(result.success, false, `${JSON.stringify(input)} should be refused`);
  return result.error?.issues.map((issue) => issue.message) ?? [];
}

test("bare actions compile; a bare refusal keeps the verdict's default reply", () => {
  const cases: Array<[string, Action]> = [
    ["ignore", { type: "ignore" }],
    ["accept", { type: "accept" }],
    ["reject", { type: "reject", reply: null }],
    ["defer", { type: "defer", reply: null }],
    ["disconnect", { type: "disconnect", reply: null }],
  ];
  for (const [input, expected] of cases) assert.deepEqual(ActionSchema.parse(input), expected);
});

test("replies are kept as templates, placeholders untouched", () => {
  assert.deepEqual(ActionSchema.parse({ reject: "554 5.7.1 Blocked [{client.ip}]: {dnsbl.txt}" }), {
    type: "reject",
    reply: "554 5.7.1 Blocked [{client.ip}]: {dnsbl.txt}",
  });
  assert.deepEqual(ActionSchema.parse({ defer: "450 4.7.25 No PTR for {client.ip}" }), {
    type: "defer",
    reply: "450 4.7.25 No PTR for {client.ip}",
  });
  assert.deepEqual(ActionSchema.parse({ disconnect: "421 4.7.0 Bye" }), { type: "disconnect", reply: "421 4.7.0 Bye" });
  assert.deepEqual(ActionSchema.parse({ disconnect: "554 5.7.1 Go away" }), {
    type: "disconnect",
    reply: "554 5.7.1 Go away",
  });
  assert.deepEqual(ActionSchema.parse({ score: -2.5 }), { type: "score", points: -2.5 });
});

test("a reply must have the class of its action", () => {
  assert.match(messages({ reject: "451 4.7.1 Later" })[0], /reject action needs a 5xx reply/);
  assert.match(messages({ defer: "550 5.7.1 No" })[0], /defer action needs a 4xx reply/);
  assert.match(messages({ disconnect: "450 4.7.1 Later" })[0], /disconnect action needs 421 or a 5xx reply/);
  assert.match(messages({ reject: "550 4.7.1 Mixed" })[0], /does not match reply class 5xx/);
  assert.match(messages({ reject: "Go away" })[0], /is not an SMTP reply/);
});

test("a malformed action names the mistake", () => {
  assert.match(messages("bounce")[0], /unknown action "bounce": use one of ignore, accept, reject, defer, disconnect/);
  assert.match(messages({ rejet: "550 5.7.1 No" })[0], /unknown action "rejet"/);
  assert.match(messages({ reject: 550 })[0], /reject needs a reply text/);
  assert.match(messages({ score: "5" })[0], /score needs a number/);
  assert.match(
    messages({ reject: "550 No", defer: "451 Later" })[0],
    /one action per entry, not several \(reject, defer\)/,
  );
  assert.match(messages({})[0], /empty action/);
  assert.match(messages(5)[0], /expected an action/);
});
