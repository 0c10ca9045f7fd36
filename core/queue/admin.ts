/**
 * What `portcullis queue` does to the spool: list, show, flush, delete, bounce. The same code runs
 * inside the gateway (the CLI talks to it over `<spool>/control.sock`) and in the CLI itself when no
 * gateway runs (it then owns the spool's lock).
 */

import type { Reply } from "../contract/decision.js";
import { parseHeaderSection } from "../smtp/message.js";
import { oneLine } from "../toolkit/client-text.js";
import type { QueueEntry, Spool } from "./spool.js";
import type { DeliveryWorker } from "./worker.js";

export interface QueueSummary {
  readonly id: string;
  readonly origin: string;
  readonly from: string;
  readonly messageId: string | null;
  readonly size: number;
  readonly arrivedAt: string;
  readonly attempts: number;
  readonly nextAt: string;
  readonly recipients: ReadonlyArray<{
    readonly to: string;
    readonly route: string;
    readonly status: string;
    readonly reply: string | null;
  }>;
}

export type QueueRequest =
  | { readonly command: "list" }
  | { readonly command: "show"; readonly id: string }
  | { readonly command: "flush"; readonly id?: string }
  | { readonly command: "delete"; readonly id: string }
  | { readonly command: "bounce"; readonly id: string };

export type QueueResponse =
  | { readonly ok: true; readonly messages: QueueSummary[] }
  | { readonly ok: true; readonly message: QueueSummary; readonly headers: string }
  | { readonly ok: true; readonly count: number }
  | { readonly ok: false; readonly error: string };

/** What an operator's bounce says to the sender. */
const BOUNCED: Reply = { code: 550, enhanced: "5.0.0", text: "Returned to sender by the postmaster" };

function summary(entry: QueueEntry): QueueSummary {
  const { envelope } = entry;
  return {
    id: envelope.id,
    origin: envelope.origin,
    from: envelope.from,
    messageId: envelope.messageId ?? null,
    size: envelope.size,
    arrivedAt: new Date(envelope.arrivedAt).toISOString(),
    attempts: entry.attempts,
    nextAt: new Date(entry.nextAt).toISOString(),
    recipients: envelope.recipients.map((r, i) => ({
      to: r.address,
      route: r.route.to.join(", "),
      status: entry.state[i].status,
      reply: entry.state[i].reply
        ? `${entry.state[i].reply!.code} ${entry.state[i].reply!.enhanced} ${entry.state[i].reply!.text}`
        : null,
    })),
  };
}

export class QueueAdmin {
  constructor(
    private readonly spool: Spool,
    private readonly worker: DeliveryWorker,
  ) {}

  async handle(request: QueueRequest): Promise<QueueResponse> {
    switch (request.command) {
      case "list":
        return {
          ok: true,
          messages: this.spool
            .entries()
            .sort((a, b) => a.envelope.arrivedAt - b.envelope.arrivedAt)
            .map(summary),
        };
      case "show": {
        const entry = this.#find(request.id);
        if (!entry) return notFound(request.id);
        const head = await this.spool.readAll(entry, 64 * 1024);
        const end = head.indexOf("\r\n\r\n");
        const headers = parseHeaderSection(head.subarray(0, end < 0 ? head.length : end + 2).toString("latin1"));
        // Read as UTF-8 and one line a field: a header must not move the operator's terminal.
        const lines = headers.map((h) => oneLine(head.subarray(h.start, h.end).toString("utf8"), Infinity));
        return { ok: true, message: summary(entry), headers: lines.join("\n") };
      }
      case "flush": {
        const entries = request.id === undefined ? this.spool.entries() : [this.#find(request.id)];
        if (entries[0] === undefined && request.id !== undefined) return notFound(request.id);
        const now = Date.now();
        for (const entry of entries as QueueEntry[]) {
          entry.nextAt = Math.min(entry.nextAt, now);
          // Written down, so a flush given to a stopped gateway's spool holds at its next start.
          await this.spool.update(entry);
        }
        this.worker.wake();
        return { ok: true, count: entries.length };
      }
      case "delete":
      case "bounce": {
        const entry = this.#find(request.id);
        if (!entry) return notFound(request.id);
        await this.worker.hold(entry.envelope.id, async () => {
          if (!this.spool.get(entry.envelope.id)) return;
          if (request.command === "delete") {
            await this.spool.complete(entry);
          } else {
            entry.state = entry.state.map((s) =>
              s.status === "pending" ? { ...s, status: "failed", reply: BOUNCED, at: Date.now() } : s,
            );
            await this.worker.finish(entry);
          }
        });
        return { ok: true, count: 1 };
      }
    }
  }

  /** By full id, or by a unique prefix of it (ids are long). */
  #find(id: string): QueueEntry | undefined {
    const exact = this.spool.get(id.toUpperCase());
    if (exact) return exact;
    const matches = this.spool.entries().filter((e) => e.envelope.id.startsWith(id.toUpperCase()));
    return matches.length === 1 ? matches[0] : undefined;
  }
}

function notFound(id: string): QueueResponse {
  return { ok: false, error: `no queued message ${id}` };
}
