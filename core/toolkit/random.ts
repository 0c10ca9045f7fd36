/**
 * Random identifiers drawn from a block of random bytes filled a few kilobytes at a time: a crypto
 * call per message and per connection showed in profiles. The bytes are the same CSPRNG's.
 */
import { randomFillSync } from "node:crypto";

const pool = { bytes: Buffer.alloc(4096), next: 4096 };

function take(length: number): number {
  if (pool.next + length > pool.bytes.length) {
    randomFillSync(pool.bytes);
    pool.next = 0;
  }
  const at = pool.next;
  pool.next += length;
  return at;
}

/** `length` random bytes as lower-case hex. */
export function randomHex(length: number): string {
  const at = take(length);
  return pool.bytes.toString("hex", at, at + length);
}

const BASE32 = "0123456789abcdefghijklmnopqrstuv";

/** 80 random bits as 16 base-32 digits (0-9, a-v): the form of smtp-server's own session ids. */
export function sessionId(): string {
  const at = take(10);
  let id = "";
  let bits = 0;
  let value = 0;
  for (let i = at; i < at + 10; i++) {
    value = (value << 8) | pool.bytes[i];
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      id += BASE32[(value >>> bits) & 31];
    }
    value &= (1 << bits) - 1;
  }
  return id;
}
