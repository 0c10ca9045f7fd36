/**
 * The line-ending scanner as a pure table: which byte sequences are end-of-data lookalikes, how
 * bare CR and LF are rewritten, and that chunk boundaries (a CR at the end of one chunk, a dot at
 * the start of the next) never change the answer.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { LineEndingScanner, scanMessage } from "../../core/smtp/smuggling.js";

interface Case {
  readonly input: string;
  readonly lookalike: boolean;
  readonly bare: number;
  readonly normalized: string;
}

const cases: Record<string, Case> = {
  "plain CRLF message": {
    input: "a: b\r\n\r\nbody\r\n",
    lookalike: false,
    bare: 0,
    normalized: "a: b\r\n\r\nbody\r\n",
  },
  "a real one-dot line (CRLF.CRLF after unstuffing)": {
    input: "x\r\n.\r\ny\r\n",
    lookalike: false,
    bare: 0,
    normalized: "x\r\n.\r\ny\r\n",
  },
  "LF.LF": { input: "x\n.\ny\r\n", lookalike: true, bare: 2, normalized: "x\r\n.\r\ny\r\n" },
  "CR.CR": { input: "x\r.\ry\r\n", lookalike: true, bare: 2, normalized: "x\r\n.\r\ny\r\n" },
  "LF.CRLF": { input: "x\n.\r\ny\r\n", lookalike: true, bare: 1, normalized: "x\r\n.\r\ny\r\n" },
  "CRLF.LF": { input: "x\r\n.\ny\r\n", lookalike: true, bare: 1, normalized: "x\r\n.\r\ny\r\n" },
  "CRLF.CR": { input: "x\r\n.\ry\r\n", lookalike: true, bare: 1, normalized: "x\r\n.\r\ny\r\n" },
  "CR.LF": { input: "x\r.\ny\r\n", lookalike: true, bare: 2, normalized: "x\r\n.\r\ny\r\n" },
  "CR.CRLF": { input: "x\r.\r\ny\r\n", lookalike: true, bare: 1, normalized: "x\r\n.\r\ny\r\n" },
  "LF.CR": { input: "x\n.\ry\r\n", lookalike: true, bare: 2, normalized: "x\r\n.\r\ny\r\n" },
  "lookalike on the first line (after DATA CRLF)": {
    input: ".\nx\r\n",
    lookalike: true,
    bare: 1,
    normalized: ".\r\nx\r\n",
  },
  "bare LF in text": { input: "a\nb\r\n", lookalike: false, bare: 1, normalized: "a\r\nb\r\n" },
  "bare CR in text": { input: "a\rb\r\n", lookalike: false, bare: 1, normalized: "a\r\nb\r\n" },
  "LF then a dot that starts a longer line": {
    input: "a\n.b\r\n",
    lookalike: false,
    bare: 1,
    normalized: "a\r\n.b\r\n",
  },
  "a dot in the middle of a line": { input: "a.\nb\r\n", lookalike: false, bare: 1, normalized: "a.\r\nb\r\n" },
  "LFCR is a bare LF then a bare CR": { input: "a\n\rb\r\n", lookalike: false, bare: 2, normalized: "a\r\n\r\nb\r\n" },
  "trailing bare CR": { input: "a\r", lookalike: false, bare: 1, normalized: "a\r\n" },
  "empty message": { input: "", lookalike: false, bare: 0, normalized: "" },
};

/** Runs the scanner over `input` cut at the given offsets. */
function scanInChunks(input: Buffer, cuts: number[]) {
  const scanner = new LineEndingScanner();
  const parts: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, input.length]) {
    parts.push(scanner.push(input.subarray(from, cut)));
    from = cut;
  }
  parts.push(scanner.end());
  return { lookalike: scanner.lookalike, bare: scanner.bareLineEndings, normalized: Buffer.concat(parts) };
}

describe("line-ending scanner", () => {
  for (const [name, expected] of Object.entries(cases)) {
    test(name, () => {
      const input = Buffer.from(expected.input, "latin1");
      const whole = scanMessage(input);
      assert.equal(whole.lookalike, expected.lookalike, "lookalike");
      assert.equal(whole.bareLineEndings, expected.bare, "bare count");
      assert.equal(whole.normalized.toString("latin1"), expected.normalized);
      // Every single cut, and one byte per chunk, give the same answer.
      const splits = [...Array(input.length).keys()].map((cut) => [cut]);
      splits.push([...Array(input.length).keys()].slice(1));
      for (const cuts of splits) {
        const result = scanInChunks(input, cuts);
        assert.deepEqual(
          { ...result, normalized: result.normalized.toString("latin1") },
          { lookalike: expected.lookalike, bare: expected.bare, normalized: expected.normalized },
          `cut at ${cuts.join(",")}`,
        );
      }
    });
  }

  test("a long CRLF message passes through as the same buffer content", () => {
    const input = Buffer.from(`Subject: x\r\n\r\n${"line of text\r\n".repeat(5000)}`, "latin1");
    const result = scanMessage(input);
    assert.equal(result.lookalike, false);
    assert.equal(result.bareLineEndings, 0);
    assert.ok(result.normalized.equals(input));
  });

  test("normalised output never contains a lookalike, whatever the input", () => {
    let seed = 7;
    const alphabet = ["\r", "\n", ".", "a"];
    for (let round = 0; round < 2000; round++) {
      let text = "";
      for (let i = 0; i < 12; i++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        text += alphabet[seed % alphabet.length];
      }
      const once = scanMessage(Buffer.from(text, "latin1"));
      const twice = scanMessage(once.normalized);
      assert.equal(twice.bareLineEndings, 0, JSON.stringify(text));
      assert.equal(twice.lookalike, false, JSON.stringify(text));
    }
  });
});

describe("line-ending scanner: NUL, padded dots and line length", () => {
  interface PaddingCase {
    readonly input: string;
    readonly lookalike: boolean;
    readonly nul: number;
    /** What a stripping scanner hands on. */
    readonly stripped: string;
  }
  const padding: Record<string, PaddingCase> = {
    "NUL before a lone dot": { input: "x\r\n\0.\r\ny\r\n", lookalike: true, nul: 1, stripped: "x\r\n.\r\ny\r\n" },
    "NUL after a lone dot": { input: "x\r\n.\0\r\ny\r\n", lookalike: true, nul: 1, stripped: "x\r\n.\r\ny\r\n" },
    "dot then space": { input: "x\r\n. \r\ny\r\n", lookalike: true, nul: 0, stripped: "x\r\n. \r\ny\r\n" },
    "dot then tab": { input: "x\r\n.\t\r\ny\r\n", lookalike: true, nul: 0, stripped: "x\r\n.\t\r\ny\r\n" },
    "NUL in the middle of a line": { input: "a\0b\r\n", lookalike: false, nul: 1, stripped: "ab\r\n" },
    "NULs at both ends of the message": { input: "\0a\r\n\0", lookalike: false, nul: 2, stripped: "a\r\n" },
    "space before a dot is text": { input: "x\r\n .\r\n", lookalike: false, nul: 0, stripped: "x\r\n .\r\n" },
    "dot, space, text is text": { input: "x\r\n. a\r\n", lookalike: false, nul: 0, stripped: "x\r\n. a\r\n" },
  };
  for (const [name, expected] of Object.entries(padding)) {
    test(name, () => {
      const input = Buffer.from(expected.input, "latin1");
      for (const stripNul of [false, true]) {
        // Whole, and cut at every offset: the answer never depends on where chunks end.
        for (const cut of [input.length, ...input.keys()]) {
          const scanner = new LineEndingScanner({ stripNul });
          const out = Buffer.concat([
            scanner.push(input.subarray(0, cut)),
            scanner.push(input.subarray(cut)),
            scanner.end(),
          ]).toString("latin1");
          const label = `stripNul ${stripNul}, cut at ${cut}`;
          assert.equal(scanner.lookalike, expected.lookalike, label);
          assert.equal(scanner.nulBytes, expected.nul, label);
          assert.equal(out, stripNul ? expected.stripped : expected.input, label);
        }
      }
    });
  }

  test("the first NUL is located by line and offset", () => {
    const { firstNul } = scanMessage(Buffer.from("a\r\nb\nc\0d\0\r\n", "latin1"));
    assert.deepEqual(firstNul, { line: 3, offset: 6 });
  });

  test("998 octets pass, 999 do not, wherever the chunks end and whatever ends the line", () => {
    for (const ending of ["\r\n", "\n", "\r"]) {
      for (const [length, overlong] of [
        [998, false],
        [999, true],
      ] as const) {
        const input = Buffer.from(`a: b\r\n\r\n${"x".repeat(length)}${ending}end\r\n`, "latin1");
        for (const cut of [input.length, 8, 500, 8 + length, 9 + length]) {
          const scanner = new LineEndingScanner();
          scanner.push(input.subarray(0, cut));
          scanner.push(input.subarray(cut));
          scanner.end();
          const expected = overlong ? { line: 3, length } : null;
          assert.deepEqual(scanner.firstOverlongLine, expected, `${length} ${JSON.stringify(ending)} cut ${cut}`);
        }
      }
    }
  });

  test("a last line without a line break is measured too", () => {
    assert.deepEqual(scanMessage(Buffer.alloc(1000, "x")).firstOverlongLine, { line: 1, length: 1000 });
  });
});
