/**
 * ioredis costs a gateway tens of megabytes of memory, so it is loaded only when a policy asks for
 * a Redis store: a gateway on the memory store never loads it. Its own file, because a process
 * that has loaded ioredis once keeps it.
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";
import { eventually } from "../fixtures/eventually.js";
import { startGateway } from "../fixtures/gateway.js";
import { closedPort } from "../fixtures/next-hop.js";

const moduleCache = createRequire(import.meta.url).cache;
const ioredisLoaded = () => Object.keys(moduleCache).some((file) => file.includes("/node_modules/ioredis/"));

const policy = (state: string) => `
version: 1
server: { hostname: gw.test }
state: ${state}
routes: [{ to: discard }]
`;

test("a gateway on the memory store does not load ioredis; one on Redis loads it when it starts", async () => {
  const memory = await startGateway(policy("{ store: memory }"));
  try {
    assert.equal(ioredisLoaded(), false, "ioredis loaded for a memory store");
  } finally {
    await memory.stop();
  }
  // Nothing listens there: the store loads ioredis and starts connecting all the same.
  const url = `redis://127.0.0.1:${await closedPort()}/0`;
  const shared = await startGateway(policy(`{ store: { redis: "${url}" }, onStoreError: allow }`));
  try {
    await eventually(ioredisLoaded, "the Redis store loaded ioredis");
  } finally {
    await shared.stop();
  }
});
