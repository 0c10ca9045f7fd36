#!/usr/bin/env node
// An installed package runs the compiled dist/. A checkout, where the TypeScript sources sit beside
// this file, runs them through tsx instead, so the tests and `node bin/portcullis.js` never run a
// stale build; the published package ships no sources, so it always takes the compiled path.
import { existsSync } from "node:fs";

const sources = new URL("../app/cli.ts", import.meta.url);
if (existsSync(sources)) {
  const { register } = await import("tsx/esm/api");
  register();
  await import(sources.href);
} else {
  await import("../dist/app/cli.js");
}
