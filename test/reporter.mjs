// The test runner's reporter for test/run.mjs: a dot per passing test, each failure in full (its
// name, file and error), and node's closing summary as the TAP reporter prints it ("# tests N",
// "# pass N", "# fail N"…) and a last "N passed, N failed" line, which CI reads. The default TAP
// output is thousands of lines.
import { inspect } from "node:util";

export default async function* reporter(source) {
  let column = 0;
  let passed = 0;
  let failed = 0;
  const newline = () => {
    const text = column > 0 ? "\n" : "";
    column = 0;
    return text;
  };
  for await (const event of source) {
    const { type, data } = event;
    if (type === "test:pass" && data.details?.type !== "suite") {
      passed++;
      column++;
      yield column % 80 === 0 ? ".\n" : ".";
    } else if (type === "test:fail" && data.details?.type !== "suite") {
      failed++;
      const error = data.details?.error;
      const cause = error?.cause ?? error;
      yield `${newline()}not ok - ${data.name} (${data.file ?? "?"})\n`;
      yield `${inspect(cause, { depth: 4 })
        .split("\n")
        .map((line) => `  ${line}`)
        .join("\n")}\n`;
    } else if (type === "test:stderr" || type === "test:stdout") {
      // Output of a test file outside any test (a crash at import): shown, as nothing else would tell.
      if (data.message?.trim()) yield `${newline()}${data.message}`;
    } else if (type === "test:diagnostic" && data.nesting === 0) {
      yield `${newline()}# ${data.message}\n`;
    }
  }
  // The plain closing line any CI reads, besides node's own summary above.
  yield `${newline()}${passed} passed, ${failed} failed\n`;
}
