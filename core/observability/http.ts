/**
 * The operations endpoint on `observability.metrics` (host:port): Prometheus `/metrics`, `/healthz`
 * (the process answers) and `/readyz` (this gateway should get traffic: listening, spool writable,
 * state store reachable when it is Redis). A load balancer or orchestrator polls /readyz and stops
 * sending mail while it says 503, e.g. during a graceful stop or a spool/Redis outage.
 */
import { open, readFile, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { policyHash } from "../policy/load.js";
import type { Gateway } from "../smtp/gateway.js";
import { type HostPort, parseHostPort } from "../toolkit/netaddr.js";
import { listenOn } from "./listen.js";

export interface Check {
  readonly ok: boolean;
  /** Why it failed; absent when ok. */
  readonly detail?: string;
}

export interface Readiness {
  readonly ready: boolean;
  readonly checks: Readonly<Record<string, Check>>;
  /**
   * Whether the running policy is the file on disk (sha256 of each), and what a reload could not
   * apply: information for the operator, never a reason to take traffic away.
   */
  readonly policy?: {
    readonly running: string;
    readonly file: string | null;
    readonly current: boolean;
    readonly restartNeeded: readonly string[];
  };
}

export interface OpsEndpoints {
  metrics(): Promise<{ contentType: string; body: string }>;
  ready(): Promise<Readiness>;
}

export interface OpsServer {
  readonly address: HostPort;
  close(): Promise<void>;
}

/** A check that has not answered by then failed: a hung disk or Redis must not hang the probe. */
const CHECK_DEADLINE_MS = 2_000;

export async function startOpsServer(listen: string, endpoints: OpsEndpoints): Promise<OpsServer> {
  const address = parseHostPort(listen);
  if (!address) throw new Error(`observability.metrics: "${listen}" is not host:port`);
  const server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    const send = (status: number, contentType: string, body: string) => {
      response.writeHead(status, { "content-type": contentType, "cache-control": "no-store" });
      response.end(request.method === "HEAD" ? undefined : body);
    };
    if (request.method !== "GET" && request.method !== "HEAD") return send(405, "text/plain", "method not allowed\n");
    const answer = async () => {
      switch (path) {
        case "/metrics": {
          const { contentType, body } = await endpoints.metrics();
          return send(200, contentType, body);
        }
        case "/healthz":
          return send(200, "text/plain", "ok\n");
        case "/readyz": {
          const readiness = await endpoints.ready();
          return send(readiness.ready ? 200 : 503, "application/json", `${JSON.stringify(readiness)}\n`);
        }
        default:
          return send(404, "text/plain", "not found\n");
      }
    };
    answer().catch((error: Error) => send(500, "text/plain", `${error.message}\n`));
  });
  const actual = await listenOn(server, address);
  return { address: actual, close: () => closeServer(server) };
}

/**
 * The operations endpoint following `observability.metrics` across reloads: started when the
 * policy gains the key, moved when its address changes, stopped when it goes away.
 */
export class OpsListener {
  readonly #endpoints: OpsEndpoints;
  #server: OpsServer | null = null;
  #listen: string | undefined;

  constructor(endpoints: OpsEndpoints) {
    this.#endpoints = endpoints;
  }

  /** The bound address; null when not listening. */
  get address(): HostPort | null {
    return this.#server?.address ?? null;
  }

  /**
   * Listens on `listen` (host:port), or not at all when undefined; resolves with what changed, for
   * the reload's log line, or undefined when nothing did. The old address is closed first, so the
   * new one may reuse its port; when the new one cannot listen this rejects, and there is no
   * endpoint until a later call succeeds.
   */
  async follow(listen: string | undefined): Promise<string | undefined> {
    if (listen === this.#listen) return undefined;
    const before = this.#listen;
    await this.#server?.close();
    this.#server = null;
    this.#listen = listen;
    if (listen === undefined) return "stopped";
    try {
      this.#server = await startOpsServer(listen, this.#endpoints);
    } catch (error) {
      this.#listen = undefined; // the next call tries again
      throw new Error(`observability.metrics: cannot listen on ${listen}: ${(error as Error).message}`);
    }
    return before === undefined ? `listening on ${listen}` : `moved from ${before} to ${listen}`;
  }

  async close(): Promise<void> {
    await this.#server?.close();
    this.#server = null;
    this.#listen = undefined;
  }
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    // Scrapers keep connections alive; a stopping gateway does not wait for their next request.
    server.closeAllConnections();
  });
}

/** The endpoints of one gateway in this process. */
export function gatewayEndpoints(gateway: Gateway): OpsEndpoints {
  return {
    metrics: async () => {
      // The gateway counts whenever its policy serves the metrics; an endpoint without them is a bug.
      if (!gateway.metrics) throw new Error("this gateway counts no metrics");
      return gateway.metrics.expose();
    },
    ready: () => gatewayReadiness(gateway),
  };
}

/** Whether this gateway should get traffic, check by check. */
export async function gatewayReadiness(gateway: Gateway): Promise<Readiness> {
  const { config, services } = gateway.runtime;
  const checks: Record<string, Check> = {
    listening: gateway.listening ? { ok: true } : { ok: false, detail: "not listening (starting or stopping)" },
    spool: await withDeadline(spoolWritable(gateway)),
  };
  if (config.state.store !== "memory") {
    // Any read through the store interface goes to Redis; an unreachable one throws StoreUnavailableError.
    checks.state = await withDeadline(services.state.get("readyz").then(() => ({ ok: true })));
  }
  const running = gateway.runtime.policy.hash;
  const file = await readFile(gateway.runtime.policy.file).then(policyHash, () => null);
  return {
    ready: Object.values(checks).every((check) => check.ok),
    checks,
    policy: { running, file, current: file === running, restartNeeded: gateway.restartNeeded },
  };
}

/** The spool is open and a file can be created and fsynced in it (where bodies are received). */
async function spoolWritable(gateway: Gateway): Promise<Check> {
  const spool = gateway.queue.spool;
  if (!spool) return { ok: false, detail: "spool not open (see the log)" };
  const probe = join(spool.dir, "tmp", `.readyz-${process.pid}`);
  const handle = await open(probe, "w");
  try {
    await handle.write("readyz\n");
    await handle.sync();
  } finally {
    await handle.close();
    await rm(probe, { force: true });
  }
  return { ok: true };
}

async function withDeadline(check: Promise<Check>): Promise<Check> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<Check>((resolve) => {
    timer = setTimeout(
      () => resolve({ ok: false, detail: `no answer within ${CHECK_DEADLINE_MS} ms` }),
      CHECK_DEADLINE_MS,
    );
  });
  try {
    return await Promise.race([check.catch((error: Error) => ({ ok: false, detail: error.message })), deadline]);
  } finally {
    clearTimeout(timer);
  }
}
