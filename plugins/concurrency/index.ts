/**
 * Simultaneous connections per client IP or network, counted in the state store so a cluster
 * shares the limit. A slot is taken at connect and given back by the `close` hook, which the core
 * runs however the connection ended (QUIT, reset, timeout); a slot is also a lease, so a gateway
 * that dies without closing cannot hold its slots for longer than `lease`.
 */
import { randomUUID } from "node:crypto";
import { z } from "zod";
import {
  type ConnectionContext,
  clientNet,
  Duration,
  definePlugin,
  NetworkList,
  storeFailure,
  verdict,
} from "../../core/index.js";
import { NetworkEntry } from "../shared/options.js";

export const ConcurrencyOptions = z.strictObject({
  limits: z
    .array(
      z.strictObject({
        key: z.enum(["client.ip", "client.net"]).describe("client.ip, or client.net (/24 for IPv4, /64 for IPv6)"),
        max: z.int().positive().describe("most simultaneous connections per key value"),
      }),
    )
    .min(1)
    .describe("the limits; a connection needs a slot of every one"),
  exempt: z
    .strictObject({ networks: z.array(NetworkEntry).default([]).describe("client networks never limited") })
    .prefault({}),
  lease: Duration.prefault("10m").describe(
    "how long a slot lasts without renewal (each MAIL renews it); bounds what a crashed gateway keeps",
  ),
});

export const ConcurrencyFindings = z
  .object({
    held: z
      .record(z.string(), z.number())
      .readonly()
      .describe("connections per limit key when this one arrived, itself included"),
    exceeded: z.string().nullable().describe("the limit key that was over its maximum, or null"),
  })
  .readonly();

export type ConcurrencyFacts = z.output<typeof ConcurrencyFindings>;

declare module "../../core/index.js" {
  interface Facts {
    concurrency: ConcurrencyFacts;
  }
}

interface Slot {
  readonly slot: string;
  readonly max: number;
}

/** The slots a connection holds; acquisition may still be in flight when the connection closes. */
type Held = Promise<Slot[]>;

export default definePlugin({
  name: "concurrency",
  options: ConcurrencyOptions,
  findings: { concurrency: ConcurrencyFindings },
  verdicts: {
    exceeded: { action: "disconnect", reply: "421 4.7.0 Too many connections from your network, try again later" },
  },
  setup(options) {
    // Holders must be unique across the gateways sharing a store; smtp-server ids are only random.
    const instance = randomUUID();
    const exempt = new NetworkList(options.exempt.networks);
    const held = new Map<string, Held>();
    const keysOf = (connection: ConnectionContext): Slot[] =>
      options.limits.map((limit) => ({
        slot: `${limit.key}:${limit.key === "client.ip" ? connection.client.ip : clientNet(connection.client.ip)}`,
        max: limit.max,
      }));
    const holder = (connection: ConnectionContext) => `${instance}:${connection.id}`;

    return {
      async connect(ctx) {
        const { connection, state } = ctx;
        if (exempt.has(connection.client.ip)) return undefined;
        const keys = keysOf(connection);
        const attempt = Promise.all(
          keys.map(({ slot, max }) => state.acquireSlot(slot, holder(connection), max, options.lease)),
        );
        // Whatever happens next, close gives back exactly the slots this acquired.
        const taken = attempt.then(
          (results) => keys.filter((_, i) => results[i].acquired),
          () => keys,
        );
        held.set(connection.id, taken);
        let results: Awaited<typeof attempt>;
        try {
          results = await attempt;
        } catch (err) {
          return storeFailure(err, state.onStoreError);
        }
        const refused = keys.findIndex((_, i) => !results[i].acquired);
        ctx.facts.concurrency = {
          held: Object.fromEntries(keys.map((k, i) => [k.slot, results[i].held + (results[i].acquired ? 0 : 1)])),
          exceeded: refused < 0 ? null : keys[refused].slot,
        };
        if (refused < 0) return undefined;
        ctx.log.info({ slot: keys[refused].slot, max: keys[refused].max }, "concurrency limit reached");
        return verdict("exceeded");
      },
      async mail(ctx) {
        const taken = held.get(ctx.connection.id);
        if (!taken) return undefined;
        const slots = await taken;
        // Renews the leases of a long-lived connection; a store outage here only shortens them.
        await Promise.all(
          slots.map(({ slot, max }) => ctx.state.acquireSlot(slot, holder(ctx.connection), max, options.lease)),
        ).catch(() => undefined);
        return undefined;
      },
      async close(ctx) {
        const taken = held.get(ctx.connection.id);
        if (!taken) return;
        held.delete(ctx.connection.id);
        const slots = await taken;
        await Promise.all(slots.map(({ slot }) => ctx.state.releaseSlot(slot, holder(ctx.connection))));
      },
    };
  },
});
