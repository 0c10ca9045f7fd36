/**
 * core/toolkit/random.ts: pooled random bytes make unique ids of the documented forms, across refills of
 * the pool, using the whole alphabet in every position (no bits lost in the base-32 packing).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { randomHex, sessionId } from "../../core/toolkit/random.js";

test("session ids: 16 base-32 digits, unique, every digit seen in every position", () => {
  const ids = Array.from({ length: 5000 }, sessionId);
  assert.equal(new Set(ids).size, ids.length);
  for (const id of ids) assert.match(id, /^[0-9a-v]{16}$/);
  for (let position = 0; position < 16; position++) {
    assert.equal(new Set(ids.map((id) => id[position])).size, 32, `position ${position}`);
  }
});

test("randomHex: the asked number of bytes, unique across pool refills", () => {
  const values = Array.from({ length: 2000 }, () => randomHex(5));
  assert.equal(new Set(values).size, values.length);
  for (const value of values) assert.match(value, /^[0-9a-f]{10}$/);
});
