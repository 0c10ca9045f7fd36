import type { Decision } from "../contract/decision.js";
import { type StoreErrorPolicy, StoreUnavailableError } from "./types.js";

const STORE_DEFER: Decision = {
  kind: "defer",
  reply: { code: 451, enhanced: "4.3.0", text: "Temporary failure, try again later" },
  by: { source: "core", name: "state" },
  reason: "state store unavailable",
};

/**
 * What a hook answers when its store call failed: the policy's `state.onStoreError` for an
 * unreachable store (undefined = allow, go on), and a rethrow for anything else, which the core
 * turns into the entry's `onError`.
 */
export function storeFailure(error: unknown, policy: StoreErrorPolicy): Decision | undefined {
  if (!(error instanceof StoreUnavailableError)) throw error;
  return policy === "allow" ? undefined : STORE_DEFER;
}
