/**
 * `portcullis start` sizes V8's heap for memory (app/heap.ts) unless the operator set a heap flag
 * on the node command line or in NODE_OPTIONS. What it saves is measured by the benchmark (peak
 * RSS of (c)), never asserted here; these tests hold the decision and that the started gateway
 * applies it and says so.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { HEAP_FLAGS, heapFlags } from "../../app/heap.js";
import { startChild } from "../ops/child.js";

describe("heap flags", () => {
  test("set when the operator chose none, left alone when the operator set one", () => {
    assert.deepEqual(heapFlags([], undefined), HEAP_FLAGS);
    assert.deepEqual(heapFlags(["--enable-source-maps"], "--trace-warnings"), HEAP_FLAGS);
    assert.deepEqual(heapFlags(["--no-optimize-for-size"], undefined), []);
    assert.deepEqual(heapFlags(["--optimize_for_size"], undefined), []);
    assert.deepEqual(heapFlags(["--max-old-space-size=512"], undefined), []);
    assert.deepEqual(heapFlags([], "--enable-source-maps --max-semi-space-size=16"), []);
    assert.deepEqual(heapFlags(["--heap-growing-percent=50"], ""), []);
    assert.deepEqual(heapFlags(["--semi-space-growth-factor=3"], undefined), []);
    // A flag that only starts like one of them is not one of them.
    assert.deepEqual(heapFlags(["--max-old-space-sizes"], undefined), HEAP_FLAGS);
  });

  test("a started gateway applies them and logs which, and none under the operator's NODE_OPTIONS", async () => {
    const dir = await mkdtemp(join(tmpdir(), "portcullis-heap-"));
    try {
      const file = join(dir, "policy.yaml");
      await writeFile(
        file,
        `version: 1\nserver: { hostname: mx.gateway.test }\nrelay: { domains: [example.test] }\n` +
          `routes: [{ to: "smtp://127.0.0.1:9" }]\ndelivery: { mode: proxy, spool: "${join(dir, "spool")}" }\n`,
      );
      const logged = async (env?: Record<string, string>) => {
        const gateway = await startChild(file, { env });
        gateway.child.kill("SIGTERM");
        await once(gateway.child, "exit");
        return gateway.logs().find((line) => line.event === "heap")?.flags;
      };
      assert.deepEqual(await logged(), [...HEAP_FLAGS]);
      assert.deepEqual(await logged({ NODE_OPTIONS: "--max-semi-space-size=16" }), []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
