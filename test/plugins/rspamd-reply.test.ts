/**
 * What an Rspamd reply means, without a daemon: the header changes of its milter block as Rspamd's
 * protocol defines them (removal by occurrence, the forms of an added field, Rspamd's order), and
 * the findings, whose texts stay on one line.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { headerChanges, parseCheckReply, replyFacts } from "../../plugins/rspamd/reply.js";

const RECEIVED = [
  { name: "Received" }, // 0
  { name: "X-Spam" }, // 1
  { name: "Received" }, // 2
  { name: "Subject" }, // 3
  { name: "received" }, // 4
  { name: "DKIM-Signature" }, // 5
];

function reply(extra: Record<string, unknown>) {
  return parseCheckReply({ action: "no action", score: 0, required_score: 15, symbols: {}, ...extra });
}

test("remove_headers: 0 is every occurrence, N the Nth from the top, -N the Nth from the bottom", () => {
  const cases: Array<[number | number[], number[]]> = [
    [0, [0, 2, 4]],
    [1, [0]],
    [2, [2]],
    [-1, [4]],
    [-3, [0]],
    [4, []],
    [-4, []],
    [
      [1, -1],
      [0, 4],
    ],
  ];
  for (const [order, removed] of cases) {
    const changes = headerChanges(reply({ milter: { remove_headers: { Received: order } } }), RECEIVED, null);
    assert.deepEqual([...changes.remove].sort(), removed, `order ${JSON.stringify(order)}`);
  }
});

test("add_headers: a value, { value, order } or a list of them; Rspamd's order kept, -1 last", () => {
  const changes = headerChanges(
    reply({
      milter: {
        add_headers: {
          "X-Last": "plain",
          "X-Both": [
            { value: "second", order: 1 },
            { value: "first", order: 0 },
          ],
          "X-Also-Last": { value: "kept after X-Last", order: -1 },
        },
      },
    }),
    RECEIVED,
    null,
  );
  assert.deepEqual(changes.add, ["X-Both: first", "X-Both: second", "X-Last: plain", "X-Also-Last: kept after X-Last"]);
});

test("a spam action adds the spam header in place of any received one; ham does not", () => {
  for (const action of ["reject", "add header", "rewrite subject"]) {
    const changes = headerChanges(reply({ action }), RECEIVED, "X-Spam");
    assert.deepEqual(changes.add, ["X-Spam: Yes"], action);
    assert.deepEqual([...changes.remove], [1], action);
  }
  for (const action of ["no action", "greylist", "soft reject"]) {
    assert.deepEqual(headerChanges(reply({ action }), RECEIVED, "X-Spam").add, [], action);
  }
  const named = headerChanges(reply({ action: "add header", milter: { spam_header: "X-Junk" } }), RECEIVED, "X-Spam");
  assert.deepEqual(named.add, ["X-Junk: Yes"], "the milter block's spam_header wins");
  assert.deepEqual(headerChanges(reply({ action: "reject" }), RECEIVED, null).add, [], "spamHeader: null adds none");
});

test("field names that are not field names are refused, whatever the block says", () => {
  const changes = headerChanges(
    reply({ milter: { add_headers: { "Bad Name": "x", "X-Ok": "y", "X:Colon": "z" }, remove_headers: { "": 0 } } }),
    RECEIVED,
    null,
  );
  assert.deepEqual(changes.add, ["X-Ok: y"]);
  assert.deepEqual(changes.refused, ["", "Bad Name", "X:Colon"]);
  assert.equal(changes.remove.size, 0);
});

test("findings: symbols highest score first, texts on one line; a reply without an action is refused", () => {
  const facts = replyFacts(
    reply({
      action: "add header",
      score: 7.5,
      "message-id": "id@x\r\nBcc: y",
      symbols: {
        LOW: { score: 0.5 },
        HIGH: { score: 5, options: ["option\nwith a break"] },
      },
      messages: { smtp_message: "Spam\r\nsecond line" },
    }),
  );
  assert.deepEqual(
    facts.symbols.map((symbol) => [symbol.name, symbol.score, symbol.options]),
    [
      ["HIGH", 5, ["option with a break"]],
      ["LOW", 0.5, []],
    ],
  );
  assert.equal(facts.messageId, "id@x Bcc: y");
  assert.equal(facts.message, "Spam second line");
  assert.throws(() => parseCheckReply({ score: 1, required_score: 15 }), /unexpected reply: action: /);
});
