import { isIPv4 } from "node:net";
import { ipv6Hextets } from "../toolkit/netaddr.js";

/**
 * The network a client address belongs to for limits and greylisting: its /24 for IPv4, its /64
 * for IPv6 (one customer's allocation; a host rotates freely inside it).
 */
export function clientNet(ip: string): string {
  if (isIPv4(ip)) return `${ip.split(".").slice(0, 3).join(".")}.0/24`;
  return `${ipv6Hextets(ip).slice(0, 4).join(":")}::/64`;
}

/** What a state key holds in Redis: a bucket, a counter, a slot set, a greylist record or a value. */
export type RedisKind = "rl" | "ct" | "cc" | "gl" | "kv";

/** Every kind, in the order the INSPECT script reads them. */
export const REDIS_KINDS: readonly RedisKind[] = ["rl", "ct", "cc", "gl", "kv"];

/**
 * The Redis key of one kind of a state key, e.g. `rl:{client.ip/messages:192.0.2.1}`. The braces
 * are a Redis Cluster hash tag: only the text inside them picks the slot, so every kind of one
 * state key lands in the same slot and a script touching several of them (inspect, reset) runs on
 * one node. Keys come from client text (addresses, HELO names), so braces inside them are
 * percent-escaped: a `}` of the client's must not end the tag early and split one key's kinds
 * over two slots. An empty key would make an empty tag, which Redis ignores; state keys are
 * never empty (plugins build them from a name and a value).
 */
export function redisKey(kind: RedisKind, key: string): string {
  return `${kind}:{${hashTag(key)}}`;
}

/** The hash tag of a state key: the same for each of its kinds, and a different one for a different key. */
function hashTag(key: string): string {
  return key.replace(/[%{}]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}
