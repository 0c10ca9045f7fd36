/**
 * The dashboard's HTTP server on `observability.dashboard.listen`: a small client (public/) that
 * builds every page with textContent from JSON answers, live updates by Server-Sent Events, and the
 * queue actions the policy enables. Everything a client sent over SMTP (HELO, addresses, header
 * values) travels as JSON data and never as markup; the Content-Security-Policy allows only our
 * own script and style files, so even a slip in the client could not run injected script.
 */
import { readFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { isLoopbackAddress, type PolicyConfig } from "../../policy/schema.js";
import type { QueueRequest } from "../../queue/admin.js";
import type { Gateway } from "../../smtp/gateway.js";
import { formatHostPort, type HostPort, parseHostPort } from "../../toolkit/netaddr.js";
import { listenOn } from "../listen.js";
import { type Activity, type ActivityFilter, FILTER_KEYS } from "./activity.js";
import { type Credentials, DashboardAuth, loadCredentials } from "./auth.js";
import { overview, policyView } from "./views.js";

export type DashboardConfig = NonNullable<PolicyConfig["observability"]["dashboard"]>;
export type QueueAction = DashboardConfig["queueActions"][number];

const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  // Every answer shows mail traffic or the queue: no cache may keep it.
  "cache-control": "no-store",
} as const;

/**
 * Queue actions change the spool: they must come from the dashboard's own page. A browser sends
 * this header only from a script of the same origin (another site's page would need a CORS
 * preflight, which this server never grants), so a forged form or link cannot act.
 */
export const ACTION_HEADER = "x-portcullis-dashboard";

/** Rows per page of the transactions list unless the client asks for fewer. */
const MAX_PAGE = 200;

/** Live updates are coalesced: at most one per interval however much mail arrives. */
const UPDATE_INTERVAL_MS = 1_000;
/** A comment line keeps idle event streams open through proxies. */
const KEEPALIVE_MS = 15_000;

const root = dirname(createRequire(import.meta.url).resolve("portcullis/package.json"));
const uplot = dirname(createRequire(import.meta.url).resolve("uplot/dist/uPlot.iife.min.js"));

/** The files the page is made of: URL path → file and content type. */
const STATIC: Readonly<Record<string, { file: string; type: string }>> = {
  "/": { file: join(root, "core/observability/dashboard/public/index.html"), type: "text/html; charset=utf-8" },
  "/app.js": {
    file: join(root, "core/observability/dashboard/public/app.js"),
    type: "text/javascript; charset=utf-8",
  },
  "/style.css": { file: join(root, "core/observability/dashboard/public/style.css"), type: "text/css; charset=utf-8" },
  "/uPlot.js": { file: join(uplot, "uPlot.iife.min.js"), type: "text/javascript; charset=utf-8" },
  "/uPlot.css": { file: join(uplot, "uPlot.min.css"), type: "text/css; charset=utf-8" },
};

export interface DashboardServer {
  readonly address: HostPort;
  close(): Promise<void>;
}

interface Settings {
  readonly auth: DashboardAuth;
  readonly actions: ReadonlySet<QueueAction>;
}

/** Starts the dashboard of `gateway` on `config.listen`; the gateway must keep activity (`observability.dashboard`). */
export async function startDashboard(
  gateway: Gateway,
  config: DashboardConfig,
  credentials: Credentials,
): Promise<DashboardServer> {
  const address = parseHostPort(config.listen);
  if (!address) throw new Error(`observability.dashboard.listen: "${config.listen}" is not host:port`);
  // The policy schema says so already; a caller that built its config some other way is held to it too.
  if (credentials.kind === "none" && !isLoopbackAddress(config.listen)) {
    throw new Error(`observability.dashboard: ${config.listen} is reachable from other hosts and has no auth`);
  }
  const settings: Settings = { auth: new DashboardAuth(credentials), actions: new Set(config.queueActions) };
  const streams = new Set<ServerResponse>();
  const server = createServer((request, response) => {
    handle(gateway, settings, streams, request, response).catch((error: Error) => {
      gateway.log.error({ err: error.message, url: request.url }, "dashboard request failed");
      if (!response.headersSent) sendJson(response, 500, { error: "internal error" });
      else response.destroy();
    });
  });
  const actual = await listenOn(server, address);
  gateway.log.info({ dashboard: formatHostPort(actual), queueActions: config.queueActions }, "dashboard listening");
  return {
    address: actual,
    close: () => {
      for (const stream of streams) stream.end();
      return closeServer(server);
    },
  };
}

async function handle(
  gateway: Gateway,
  settings: Settings,
  streams: Set<ServerResponse>,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  const url = new URL(request.url ?? "/", "http://dashboard");
  if (settings.auth.credentials.kind === "none" && !isLoopbackHost(request.headers.host)) {
    return sendJson(response, 403, { error: "without auth the dashboard answers only to a loopback host name" });
  }
  const who = await settings.auth.who(request.headers.authorization, gateway.clock.now());
  if (who === null) {
    response.writeHead(401, {
      ...SECURITY_HEADERS,
      "content-type": "text/plain; charset=utf-8",
      "www-authenticate": settings.auth.challenge,
    });
    response.end("authentication required\n");
    return;
  }
  const activity = gateway.activity;
  if (!activity) return sendJson(response, 503, { error: "the dashboard is being switched off" });
  const path = url.pathname;
  if (request.method === "POST") return queueAction(gateway, settings, who, path, request, response);
  if (request.method !== "GET" && request.method !== "HEAD")
    return sendJson(response, 405, { error: "method not allowed" });
  const page = STATIC[path];
  if (page) {
    response.writeHead(200, { ...SECURITY_HEADERS, "content-type": page.type });
    response.end(request.method === "HEAD" ? undefined : await readFile(page.file));
    return;
  }
  if (path === "/api/events") return openStream(activity, streams, response);
  if (path === "/api/overview") {
    return sendJson(response, 200, { ...(await overview(gateway, activity)), actions: [...settings.actions], who });
  }
  if (path === "/api/decisions") return sendJson(response, 200, activity.decisions());
  if (path === "/api/policy") return sendJson(response, 200, await policyView(gateway, activity));
  if (path === "/api/transactions") {
    const filter: Record<string, string> = {};
    for (const key of FILTER_KEYS) {
      const value = url.searchParams.get(key);
      if (value) filter[key] = value;
    }
    const offset = boundedInt(url.searchParams.get("offset"), 0, Number.MAX_SAFE_INTEGER, 0);
    const limit = boundedInt(url.searchParams.get("limit"), 1, MAX_PAGE, 50);
    return sendJson(response, 200, {
      ...activity.query(filter as ActivityFilter, { offset, limit }),
      offset,
      limit,
      kept: activity.size,
      capacity: activity.capacity,
    });
  }
  const transaction = /^\/api\/transactions\/(\d+)$/.exec(path);
  if (transaction) {
    const detail = activity.detail(Number(transaction[1]));
    return detail ? sendJson(response, 200, detail) : sendJson(response, 404, { error: "no longer kept" });
  }
  if (path === "/api/queue") {
    return sendJson(response, 200, {
      ...(await gateway.queue.admin({ command: "list" })),
      actions: [...settings.actions],
    });
  }
  const message = /^\/api\/queue\/([0-9A-Za-z]+)$/.exec(path);
  if (message) {
    const answer = await gateway.queue.admin({ command: "show", id: message[1] });
    return sendJson(response, answer.ok ? 200 : 404, { ...answer, actions: [...settings.actions] });
  }
  return sendJson(response, 404, { error: "not found" });
}

/** `POST /api/queue/ID/ACTION`: only an action the policy enables, only from the dashboard's page; logged with who. */
async function queueAction(
  gateway: Gateway,
  settings: Settings,
  who: string,
  path: string,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  request.resume(); // no body is read
  const match = /^\/api\/queue\/([0-9A-Za-z]+)\/(flush|delete|bounce)$/.exec(path);
  if (!match) return sendJson(response, 404, { error: "not found" });
  const [, id, action] = match as unknown as [string, string, QueueAction];
  if (!settings.actions.has(action)) {
    return sendJson(response, 403, { error: `${action} is not enabled (observability.dashboard.queueActions)` });
  }
  if (request.headers[ACTION_HEADER] !== "1") {
    return sendJson(response, 403, { error: `queue actions come from the dashboard's page (${ACTION_HEADER})` });
  }
  const answer = await gateway.queue.admin({ command: action, id } as QueueRequest);
  gateway.log.info(
    { event: "dashboard-action", action, id, by: who, ok: answer.ok, ...(answer.ok ? {} : { error: answer.error }) },
    "queue action from the dashboard",
  );
  return sendJson(response, answer.ok ? 200 : 404, answer);
}

/** Server-Sent Events: `update` when new activity arrived, at most once per UPDATE_INTERVAL_MS. */
function openStream(activity: Activity, streams: Set<ServerResponse>, response: ServerResponse): void {
  response.writeHead(200, { ...SECURITY_HEADERS, "content-type": "text/event-stream; charset=utf-8" });
  response.write("retry: 2000\n\n");
  let changed = false;
  const unsubscribe = activity.subscribe(() => {
    changed = true;
  });
  const tick = setInterval(() => {
    if (!changed) return;
    changed = false;
    response.write(`event: update\ndata: ${JSON.stringify({ kept: activity.size })}\n\n`);
  }, UPDATE_INTERVAL_MS);
  const keepalive = setInterval(() => response.write(": keepalive\n\n"), KEEPALIVE_MS);
  streams.add(response);
  response.on("close", () => {
    clearInterval(tick);
    clearInterval(keepalive);
    unsubscribe();
    streams.delete(response);
  });
}

/**
 * A page of any web site can make the browser send requests to a name it points at 127.0.0.1 (DNS
 * rebinding), and then read the answers as its own. Such requests carry that site's name in Host:
 * without credentials to stop them, only loopback names and addresses are answered.
 */
function isLoopbackHost(host: string | undefined): boolean {
  if (!host) return false;
  const name = host.startsWith("[") ? host.slice(0, host.indexOf("]") + 1) : host.replace(/:\d+$/, "");
  return isLoopbackAddress(`${name}:0`);
}

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { ...SECURITY_HEADERS, "content-type": "application/json; charset=utf-8" });
  response.end(JSON.stringify(body));
}

function boundedInt(text: string | null, min: number, max: number, fallback: number): number {
  const value = Number(text);
  return text === null || !Number.isInteger(value) ? fallback : Math.min(max, Math.max(min, value));
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * The dashboard following `observability.dashboard` across reloads: started when the policy gains
 * it, restarted when its settings change (address, auth, actions), stopped when it goes away. The
 * users or token file is read again at every change and reload.
 */
export class DashboardListener {
  #server: DashboardServer | null = null;
  #settings: string | undefined;

  constructor(private readonly gateway: Gateway) {}

  get address(): HostPort | null {
    return this.#server?.address ?? null;
  }

  /** Follows the gateway's running policy; resolves with what changed (for the reload's log line), or undefined. */
  async follow(): Promise<string | undefined> {
    const { config, policy } = this.gateway.runtime;
    const wanted = config.observability.dashboard;
    // Read before anything changes: a users or token file that cannot be read leaves the running dashboard as it is.
    const credentials = wanted
      ? await loadCredentials(wanted.auth, policy.dir).catch((error: Error) => {
          throw new Error(`observability.dashboard.auth: ${error.message}; the running dashboard stays as it was`);
        })
      : undefined;
    const settings = wanted ? JSON.stringify([wanted, credentialsDigest(credentials!)]) : undefined;
    if (settings === this.#settings) return undefined;
    const before = this.#server?.address;
    await this.#server?.close();
    this.#server = null;
    this.#settings = undefined;
    if (!wanted) return before ? "stopped" : undefined;
    try {
      this.#server = await startDashboard(this.gateway, wanted, credentials!);
    } catch (error) {
      throw new Error(`observability.dashboard: cannot listen on ${wanted.listen}: ${(error as Error).message}`);
    }
    this.#settings = settings;
    return `listening on ${formatHostPort(this.#server.address)}`;
  }

  async close(): Promise<void> {
    await this.#server?.close();
    this.#server = null;
    this.#settings = undefined;
  }
}

/** What identifies credentials, so new contents of the users or token file restart the server. */
function credentialsDigest(credentials: Credentials): string {
  if (credentials.kind === "token") return credentials.digest.toString("base64");
  if (credentials.kind === "users") return JSON.stringify([...credentials.users]);
  return "none";
}
