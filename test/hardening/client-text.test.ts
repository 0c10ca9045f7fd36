/**
 * The one encoder for client-controlled text (core/toolkit/client-text.ts), held to its promise over
 * seeded hostile input, and the source tree held to using it: no other string-to-bytes encoding
 * that keeps only the low byte of each character.
 */
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { describe, test } from "node:test";
import { binaryStringBytes, headerFieldBytes, oneLine } from "../../core/toolkit/client-text.js";
import { hostileText, strictHeader } from "../fixtures/hostile-text.js";
import { seededRandom } from "../fixtures/seeded-random.js";

const SEED = Number(process.env.PORTCULLIS_SEED ?? 20261206);
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding them is the point
const UNSAFE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]|[\ud800-\udfff]/u;

describe("oneLine", () => {
  test(`leaves no character that could end a line (seed ${SEED}, 5000 strings)`, () => {
    const random = seededRandom(SEED);
    for (let i = 0; i < 5000; i++) {
      const input = hostileText(random, { maxLength: 40 });
      const output = oneLine(input);
      assert.doesNotMatch(output, UNSAFE, JSON.stringify(input));
      assert.equal(output, output.trim());
      // Nothing but the unsafe characters is lost: the safe ones come out in order.
      const safe = input.replace(new RegExp(UNSAFE.source, "gu"), "").replace(/\s/g, "");
      assert.equal(output.replace(/\s/g, ""), safe, JSON.stringify(input));
    }
  });

  test("cuts at the length asked for without splitting a surrogate pair", () => {
    assert.equal(oneLine("ab\u{1F600}", 3), "ab");
    assert.equal(oneLine("ab\u{1F600}", 4), "ab\u{1F600}");
    assert.equal(oneLine("x\r\nFrom: ceo@example.test"), "x From: ceo@example.test");
  });
});

describe("headerFieldBytes", () => {
  test(`each field stays one field of its own name, as UTF-8 (seed ${SEED}, 5000 fields)`, () => {
    const random = seededRandom(SEED + 1);
    for (let i = 0; i < 5000; i++) {
      const values = [hostileText(random), hostileText(random)];
      const fields = [`X-First: ${values[0]}`, `X-Second: a\r\n\t${values[1]}\r\n b`];
      const bytes = headerFieldBytes(fields);
      const parsed = strictHeader(Buffer.concat([bytes, Buffer.from("\r\nbody")]));
      assert.deepEqual(parsed.names, ["X-First", "X-Second"], JSON.stringify(values));
      assert.equal(parsed.body.toString(), "body");
    }
  });

  test("the red team's address: letters whose low byte is CR, LF, ':' and '@' stay letters", () => {
    const sender = "x\u010d\u010aFrom\u013aceo\u0140example.test\u010d\u010a\u010d\u010a@good.test";
    const bytes = headerFieldBytes([`Authentication-Results: mx.example.test; spf=pass smtp.mailfrom="${sender}"`]);
    assert.equal(
      bytes.toString("utf8"),
      `Authentication-Results: mx.example.test; spf=pass smtp.mailfrom="${sender}"\r\n`,
    );
    assert.equal(bytes.indexOf("\r\n"), bytes.length - 2);
  });

  test("keeps a signer's folds and white space byte for byte, and drops folds of nothing", () => {
    const signature = "DKIM-Signature: v=1; a=rsa-sha256; \r\n\tc=relaxed/simple;  \r\n b=abc";
    assert.equal(headerFieldBytes([signature]).toString(), `${signature}\r\n`);
    assert.equal(headerFieldBytes(["X-A: a\r\n \r\n\tb"]).toString(), "X-A: a\r\n\tb\r\n");
  });

  test("a field without a valid name is a bug, not something to write", () => {
    assert.throws(() => headerFieldBytes(["no colon here"]), /not a header field/);
    assert.throws(() => headerFieldBytes(["Bad Name: x"]), /not a header field/);
  });
});

/** Encodings that keep only the low byte of each UTF-16 unit: U+010D becomes CR under each of them. */
const LOW_BYTE_ENCODING =
  /(?:Buffer\.(?:from|byteLength|alloc)|\.write|\.end|\.fill|\.setEncoding|createWriteStream|writeFile(?:Sync)?|appendFile(?:Sync)?)\([^;]*["'](?:latin1|binary|ascii)["']/s;

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile() && /\.[cm]?[jt]s$/.test(entry.name))
    .map((entry) => join(entry.parentPath, entry.name));
}

test("no source file writes a string as latin1, binary or ascii", async () => {
  const root = new URL("../..", import.meta.url).pathname;
  const dirs = ["core", "plugins", "app", "bin"].map((dir) => join(root, dir));
  const found: string[] = [];
  for (const dir of dirs) {
    const files = await sourceFiles(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [];
      throw error;
    });
    for (const file of files) {
      const lines = (await readFile(file, "utf8")).split("\n");
      lines.forEach((line, i) => {
        if (LOW_BYTE_ENCODING.test(line)) found.push(`${relative(root, file)}:${i + 1}: ${line.trim()}`);
      });
    }
  }
  assert.deepEqual(found, [], "write client text through core/toolkit/client-text.ts");
});

test("binaryStringBytes gives back the bytes of a binary string and refuses anything else", () => {
  assert.deepEqual([...binaryStringBytes("A\u00c4\u008d\r")], [0x41, 0xc4, 0x8d, 0x0d]);
  assert.throws(() => binaryStringBytes("x\u010d"), /not a binary string: U\+010d at 1/);
});
