/**
 * Shared state for limits, greylisting and pass caches: one interface (core/state/types.ts), an
 * embedded store (memory, one gateway) and a Redis store (shared by a cluster), chosen by the
 * policy's `state:` section.
 */
import type { Logger } from "pino";
import type { Clock } from "../contract/api.js";
import type { PolicyConfig } from "../policy/schema.js";
import { MemoryStore } from "./memory.js";
import { RedisStore, type RedisTarget } from "./redis.js";
import type { StateStore } from "./types.js";

export { gcra, greylistStep } from "./arithmetic.js";
export { clientNet } from "./keys.js";
export { MemoryStore, type MemoryStoreOptions } from "./memory.js";
export { storeFailure } from "./outage.js";
export { RedisStore, type RedisStoreOptions, type RedisTarget } from "./redis.js";
export {
  type BucketParams,
  type BucketRequest,
  type BucketResult,
  type GreylistParams,
  type GreylistResult,
  type GreylistStatus,
  type KeyReport,
  type SlotResult,
  type StateStore,
  type StoreErrorPolicy,
  StoreUnavailableError,
} from "./types.js";

/** The store a policy's `state:` section asks for. The memory store follows `clock`; Redis uses its own. */
export function createStore(config: PolicyConfig["state"], services: { clock: Clock; log: Logger }): StateStore {
  if (config.store === "memory") return new MemoryStore({ clock: services.clock, onStoreError: config.onStoreError });
  return new RedisStore({
    ...redisTarget(config.store),
    log: services.log.child({ store: "redis" }),
    onStoreError: config.onStoreError,
    commandTimeoutMs: config.timeout,
  });
}

/** Where a policy's shared store is: one Redis server, a Redis Cluster, or a Sentinel-watched primary. */
export function redisTarget(store: Exclude<PolicyConfig["state"]["store"], "memory">): RedisTarget {
  if ("redis" in store) return { url: store.redis };
  if ("cluster" in store) return { cluster: store.cluster.nodes };
  return { sentinel: store.sentinel };
}
