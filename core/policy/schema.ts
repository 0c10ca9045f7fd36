/**
 * The policy file, as a zod schema. Key names are the contract of design/policy-format.md. Every
 * object is strict, so a misspelt key is an error rather than a silently ignored setting; every key
 * has a description, which `portcullis schema` hands to editors.
 *
 * This module knows nothing about the file's location: relative paths are resolved by load.ts.
 */
import { isIP } from "node:net";
import { hostname } from "node:os";
import { z } from "zod";
import { ActionSchema } from "../contract/actions.js";
import { SmarthostAuthSchema, smarthostRouteProblems } from "../delivery/smarthost.js";
import { asciiDomain } from "../toolkit/address.js";
import { formatHostPort, NetworkList, parseCidr, parseHostPort } from "../toolkit/netaddr.js";
import { Duration, Size } from "../toolkit/units.js";
import { ListOption } from "./lists.js";
import { rulesSchema } from "./rules/schema.js";

/** What `proxyProtocol: true` trusts: only a load balancer on this host may claim another client address. */
export const LOOPBACK_NETWORKS: readonly string[] = ["127.0.0.0/8", "::1"];

const HostPort = z.string().refine((text) => parseHostPort(text) !== undefined, {
  error: (issue) => `"${String(issue.input)}" is not host:port, e.g. "127.0.0.1:2525" or "[::1]:2525"`,
});

const Network = z.string().refine((text) => parseCidr(text) !== undefined, {
  error: (issue) =>
    `"${String(issue.input)}" is not an IP address or CIDR network, e.g. "192.0.2.0/24" or "2001:db8::/32"`,
});

/** An exact domain (Unicode or punycode, kept as written) or `*.domain` for its subdomains; lower-cased. */
const DomainPattern = z
  .string()
  .refine((text) => asciiDomain(text.startsWith("*.") ? text.slice(2) : text) !== undefined, {
    error: (issue) =>
      `"${String(issue.input)}" is not a domain: write a host name such as "example.test", or "*.example.test" for its subdomains`,
  })
  .transform((text) => text.toLowerCase());

const oneOrMany = <T extends z.ZodType>(item: T) =>
  z
    .union([item, z.array(item)], { error: "expected one value or a list of values" })
    .transform((value) => (Array.isArray(value) ? value : [value]) as z.output<T>[]);

const DnsServer = z.string().transform((text, ctx) => {
  const bare = text.replace(/^\[(.*)\]$/, "$1");
  if (isIP(bare) !== 0) return formatHostPort({ host: bare, port: 53 });
  const hostPort = parseHostPort(text);
  if (hostPort && isIP(hostPort.host) !== 0) return formatHostPort(hostPort);
  ctx.addIssue({
    code: "custom",
    message: `"${text}" is not a DNS server: write an IP address or IP:port, e.g. "127.0.0.1", "127.0.0.1:5353" or "[::1]:53"`,
  });
  return z.NEVER;
});

const RedisUrl = z.string().refine(
  (text) => {
    try {
      const url = new URL(text);
      return (url.protocol === "redis:" || url.protocol === "rediss:") && url.hostname !== "";
    } catch {
      return false;
    }
  },
  { error: (issue) => `"${String(issue.input)}" is not a Redis URL: use redis://HOST:PORT/DB (rediss:// for TLS)` },
);

const ROUTE_TARGET_HELP =
  'use "mx", "discard", "smtp://HOST:PORT", "lmtp://HOST:PORT" or "maildir:PATH", e.g. "smtp://127.0.0.1:2600"';

/** Why `text` is not a route target; undefined when it is one. */
function routeTargetProblem(text: string): string | undefined {
  if (text === "mx" || text === "discard") return undefined;
  const hop = /^(smtp|lmtp):\/\/(.*)$/.exec(text);
  if (hop) {
    return parseHostPort(hop[2])
      ? undefined
      : `"${text}": ${hop[1]}:// needs HOST:PORT, e.g. "${hop[1]}://127.0.0.1:2600"`;
  }
  if (text.startsWith("maildir:")) {
    return text.length > "maildir:".length
      ? undefined
      : `"${text}": maildir: needs a folder, e.g. "maildir:./var/maildir"`;
  }
  return `"${text}" is not a route target: ${ROUTE_TARGET_HELP}`;
}

const RouteTarget = z.string().superRefine((text, ctx) => {
  const problem = routeTargetProblem(text);
  if (problem) ctx.addIssue({ code: "custom", message: problem });
});

const Listener = z.strictObject({
  address: HostPort.describe('where to listen, as host:port ("[::1]:2525" for IPv6)'),
  submission: z
    .boolean()
    .default(false)
    .describe("a submission listener (port 587 role): clients must authenticate over TLS; needs server.tls"),
  implicitTls: z
    .boolean()
    .default(false)
    .describe("TLS from the first byte (port 465 style) instead of STARTTLS; needs server.tls"),
});

const Limits = z.strictObject({
  maxMessageSize: Size.prefault("25MB").describe('largest message accepted, e.g. "25MB" (announced in EHLO SIZE)'),
  maxRecipients: z.int().positive().default(100).describe("most RCPT TO per transaction; more get 452"),
  maxClients: z.int().positive().default(1000).describe("most simultaneous connections in total"),
  maxConnectionsPerIp: z
    .int()
    .positive()
    .default(20)
    .describe(
      "most simultaneous connections from one client: an IPv4 address or an IPv6 /64 (one site's network); more get 421 4.7.0 before the greeting",
    ),
  idleTimeout: Duration.prefault("60s").describe('closes a connection silent for this long, e.g. "60s"'),
  // Slow clients: bytes trickled in reset the idle timeout, so these bound what trickling cannot.
  commandTimeout: Duration.prefault("5m").describe(
    'deadline for each command line, counted from when the gateway is ready for it (silence included) however many bytes trickle in; then 421 4.4.2 and a close, e.g. "5m" (RFC 5321 4.5.3.2)',
  ),
  maxConnectionTime: Duration.prefault("30m").describe(
    'longest life of one connection; then 421 4.4.2 and a close, at once when it waits for a command, else once the command or message in progress is answered, e.g. "30m"',
  ),
  stressThreshold: z
    .number()
    .gt(0)
    .max(1)
    .default(0.8)
    .describe(
      "share of maxClients at which a listener is under stress (postscreen's stress mode): commands then get stressTimeout; it ends when the connections fall 10 % below that number",
    ),
  stressTimeout: Duration.prefault("10s").describe(
    'under stress, the deadline for each command (and so the longest silence) instead of commandTimeout; a connection that met stress before any command of it was accepted keeps it, e.g. "10s"',
  ),
  maxTransactionsPerConnection: z
    .int()
    .positive()
    .default(100)
    .describe("most messages one connection may send before it must reconnect"),
  dataTimeout: Duration.prefault("10m").describe('deadline for receiving a whole message after DATA, e.g. "10m"'),
  maxHeaderSize: Size.prefault("64KiB").describe('largest header section accepted, e.g. "64KiB"'),
  maxHeaderCount: z.int().positive().default(1000).describe("most header fields accepted in one message"),
  // Protocol hardening: bounds on what a client may send outside DATA.
  maxCommandLength: z
    .int()
    .min(512)
    .default(4096)
    .describe("longest command line in bytes (RFC 5321 allows 512 plus extensions); longer gets 500 and a close"),
  maxErrors: z
    .int()
    .positive()
    .default(20)
    .describe("error replies (5xx) a client may collect without sending a message; then 421 and a close"),
});

/** Trusted peers for a protocol that lets the peer name another client address (PROXY, XCLIENT). */
const TrustedPeers = (what: string) =>
  z
    .union([z.boolean(), z.array(Network).min(1)], {
      error: `expected true, false or a list of networks allowed to send ${what}`,
    })
    .default(false)
    .transform((value) => (value === true ? [...LOOPBACK_NETWORKS] : value));

const Auth = z.strictObject({
  users: z
    .string()
    .min(1)
    .describe(
      "users file, relative to the policy file: one `name:scrypt-hash[:sender,...]` per line (portcullis passwd)",
    ),
  senders: z
    .enum(["own", "any"])
    .default("own")
    .describe(
      "own: MAIL FROM must be the user's name or a sender listed for the user (an address or @domain); any: no check",
    ),
  maxFailures: z
    .int()
    .positive()
    .default(5)
    .describe(
      "failed AUTH attempts allowed per client IP (IPv6: per /64) within failureWindow; then AUTH is refused with 454. " +
        "An attempt counts from before its password check, so parallel attempts cannot overrun it; a success is not counted",
    ),
  maxFailuresPerUser: z
    .int()
    .positive()
    .default(20)
    .describe(
      "failed AUTH attempts allowed per user name (known or not) within failureWindow, from all client IPs together; " +
        "then AUTH as that user is refused with 454. Stops a guess spread over many IPs; set it above maxFailures, " +
        "or one client IP alone can lock a user out",
    ),
  failureWindow: Duration.prefault("15m").describe('how long a failed AUTH attempt counts, e.g. "15m"'),
  maxInFlightPerIp: z
    .int()
    .positive()
    .default(2)
    .describe("AUTH attempts one client IP (IPv6: /64) may have under check at once; more get 454 at once"),
  hashConcurrency: z
    .int()
    .positive()
    .default(2)
    .describe(
      "password hashes (scrypt, 32 MiB each) running at once; keep it below the libuv thread pool " +
        "(UV_THREADPOOL_SIZE, default 4), which spool writes share",
    ),
  refusalDelay: Duration.prefault("1s").describe(
    'pause before answering a failed or refused AUTH (535, 454), e.g. "1s": a client that retries at once ' +
      "gets one answer per pause per connection, not thousands a second",
  ),
  hashQueue: z
    .int()
    .nonnegative()
    .default(32)
    .describe("AUTH attempts that may wait for a hash place; when they are all taken AUTH gets 454 at once"),
});

/** Exported so the JSON Schema can leave out its default, which is the host that generates the schema. */
export const ServerHostname = z
  .string()
  .min(1)
  .default(() => hostname())
  .describe("this gateway's name: banner, Received header, HELO to the next hop (default: the OS host name)");

const Server = z
  .strictObject({
    hostname: ServerHostname,
    listen: z
      .array(Listener.describe("one listening socket"))
      .min(1)
      .prefault([{ address: "127.0.0.1:2525" }])
      .describe('listening sockets (default: one on "127.0.0.1:2525")'),
    tls: z
      .strictObject({
        cert: z.string().min(1).describe("PEM certificate chain file, relative to the policy file's folder"),
        key: z.string().min(1).describe("PEM private key file, relative to the policy file's folder"),
      })
      .optional()
      .describe("certificate and key; enables STARTTLS on every listener"),
    proxyProtocol: TrustedPeers("a PROXY header").describe(
      "expect a PROXY v1/v2 header from these peers (a load balancer); the client address it names replaces the peer's. " +
        `true trusts only loopback (${LOOPBACK_NETWORKS.join(", ")}); list the balancer's networks otherwise. ` +
        "Connections from other peers are refused, since a forged header would choose its own client address",
    ),
    greetingDelay: Duration.prefault(0).describe(
      'wait this long before the banner; clients that talk first are dropped (e.g. "2s"; 0 = off)',
    ),
    limits: Limits.prefault({}).describe("resource limits per connection and per message"),
    xclient: TrustedPeers("XCLIENT").describe(
      "accept XCLIENT (Postfix) from these peers (a content filter or proxy in front); the address it names drives every check. " +
        `true trusts only loopback (${LOOPBACK_NETWORKS.join(", ")}); other peers get 550`,
    ),
    bareLineEndings: z
      .enum(["normalize", "reject"])
      .default("normalize")
      .describe(
        "a bare CR or LF in a message: normalize (rewrite to CRLF before forwarding) or reject (550 5.5.2). " +
          "A dot line next to one (an SMTP smuggling attempt) is always rejected",
      ),
    nulBytes: z
      .enum(["reject", "strip"])
      .default("reject")
      .describe(
        "a NUL byte in a message: reject (550 5.6.0) or strip (left out of what is stored and forwarded). " +
          "A dot line padded with NUL (an SMTP smuggling attempt) is always rejected",
      ),
    longLines: z
      .enum(["reject", "allow"])
      .default("reject")
      .describe(
        "a message line longer than 998 octets (RFC 5322 §2.1.1): reject (550 5.6.0) or allow (forwarded as it is; " +
          "a next hop may split or cut it, which breaks DKIM signatures and can turn the rest of a header line into a new field)",
      ),
    auth: Auth.optional().describe("AUTH PLAIN/LOGIN on submission listeners, after TLS only"),
    // Multi-core (app/workers.ts).
    workers: z
      .union([z.literal("auto"), z.number().int().min(1).max(256)])
      .default(1)
      .describe(
        "processes serving the listeners (node:cluster): 1 = this process, N = N workers, auto = one per CPU. " +
          "Each worker has its own spool folder under delivery.spool (workers/N; worker 1 uses delivery.spool itself) " +
          "and a dead worker is replaced and resumes its spool; use a Redis state store so limits are shared",
      ),
  })
  .superRefine((server, ctx) => {
    if (server.tls) {
      server.listen.forEach((listener, index) => {
        if (listener.submission && !server.auth) {
          ctx.addIssue({
            code: "custom",
            path: ["listen", index, "submission"],
            message: "submission: true needs users to authenticate: add server.auth { users }",
          });
        }
      });
      return;
    }
    server.listen.forEach((listener, index) => {
      for (const key of ["submission", "implicitTls"] as const) {
        if (listener[key]) {
          ctx.addIssue({
            code: "custom",
            path: ["listen", index, key],
            message: `${key}: true needs a certificate: add server.tls { cert, key }`,
          });
        }
      }
    });
  });

const Dns = z.strictObject({
  servers: z
    .array(DnsServer)
    .min(1)
    .optional()
    .describe('DNS servers as IP or IP:port (port 53 if omitted), e.g. ["127.0.0.1:53"]; default: the system resolver'),
  timeout: Duration.prefault("3s").describe('deadline for one DNS query, e.g. "3s"'),
  cacheSize: z.int().nonnegative().default(50_000).describe("answers kept in the shared DNS cache (0 = no cache)"),
});

const RedisCluster = z
  .strictObject({
    nodes: z
      .array(RedisUrl)
      .min(1)
      .describe(
        'some nodes of the Redis Cluster as redis:// (rediss:// for TLS) URLs; the others are discovered, e.g. ["redis://10.0.2.5:6379"]',
      ),
  })
  .superRefine(({ nodes }, ctx) => {
    // One set of credentials and one scheme reach every node, discovered ones included.
    const urls = nodes.map((text) => URL.parse(text));
    const access = (url: URL) => `${url.protocol}//${url.username}:${url.password}`;
    urls.forEach((url, index) => {
      if (!url || !urls[0]) return;
      if (access(url) !== access(urls[0])) {
        ctx.addIssue({
          code: "custom",
          path: ["nodes", index],
          message: "every node needs the scheme and credentials of the first: the client uses one set for all",
        });
      }
      if (!/^\/?0?$/.test(url.pathname)) {
        ctx.addIssue({
          code: "custom",
          path: ["nodes", index],
          message: `a Redis Cluster has only database 0: write "${url.protocol}//${url.host}"`,
        });
      }
    });
  });

const RedisSentinel = z.strictObject({
  sentinels: z
    .array(HostPort)
    .min(1)
    .describe('the Sentinels as host:port, e.g. ["10.0.2.5:26379", "10.0.2.6:26379", "10.0.2.7:26379"]'),
  name: z.string().min(1).describe('the name the Sentinels monitor the primary under, e.g. "mymaster"'),
  db: z.int().nonnegative().default(0).describe("the database number on the primary"),
});

const SHARED_STORES = ["redis", "cluster", "sentinel"] as const;

/**
 * The shared store: exactly one of its keys. One object with optional keys rather than a union of
 * three objects, so a mistake inside one (a typo, a bad address) is reported where it is, not as
 * "matches none of the shapes".
 */
const SharedStore = z
  .strictObject({
    redis: RedisUrl.optional().describe("one Redis server: a redis:// or rediss:// URL"),
    cluster: RedisCluster.optional().describe("a Redis Cluster"),
    sentinel: RedisSentinel.optional().describe("a primary watched by Redis Sentinel, followed across failovers"),
  })
  .superRefine((store, ctx) => {
    const given = SHARED_STORES.filter((key) => store[key] !== undefined);
    if (given.length !== 1) {
      ctx.addIssue({
        code: "custom",
        message: `give exactly one of redis, cluster or sentinel${given.length > 1 ? `, not ${given.join(" and ")}` : ""}`,
      });
    }
  })
  .transform(
    (store) =>
      store as
        | { redis: string }
        | { cluster: z.output<typeof RedisCluster> }
        | { sentinel: z.output<typeof RedisSentinel> },
  );

const State = z.strictObject({
  store: z
    .union([z.literal("memory"), SharedStore], {
      error:
        'expected "memory", { redis: "redis://127.0.0.1:6379/0" }, { cluster: { nodes: [URL, …] } } or { sentinel: { sentinels: [HOST:PORT, …], name: NAME } }',
    })
    .default("memory")
    .describe(
      "where counters (rate limits, greylisting) live: memory (one gateway), or Redis shared by several gateways: one server, a Redis Cluster, or a Sentinel-watched primary",
    ),
  timeout: Duration.prefault("250ms").describe(
    'how long a check waits for Redis before applying onStoreError, e.g. "250ms" (a failover takes longer: checks apply onStoreError meanwhile)',
  ),
  onStoreError: z
    .enum(["defer", "allow"])
    .default("defer")
    .describe("when the store is unreachable: defer (4xx, the client retries) or allow (skip the check)"),
});

/** Where <postmaster> goes: an address with a domain, or a maildir folder. */
const PostmasterTarget = z.string().superRefine((text, ctx) => {
  if (text.startsWith("maildir:")) {
    const problem = routeTargetProblem(text);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
    return;
  }
  const at = text.lastIndexOf("@");
  if (at <= 0 || asciiDomain(text.slice(at + 1)) === undefined || /[\s<>]/.test(text)) {
    ctx.addIssue({
      code: "custom",
      message: `"${text}" is neither an address nor a maildir: write e.g. "hostmaster@example.test" or "maildir:./var/postmaster"`,
    });
  }
});

const Relay = z.strictObject({
  domains: z
    .array(DomainPattern)
    .default([])
    .describe(
      'domains we receive mail for (MX role); case-insensitive, IDN or punycode; "*.example.test" adds its subdomains',
    ),
  networks: z.array(Network).default([]).describe("client networks that may relay to any domain (outbound relay role)"),
  authenticatedUsersMayRelay: z
    .boolean()
    .default(true)
    .describe("whether a client that authenticated may relay to any domain"),
  recipients: ListOption("address")
    .optional()
    .describe(
      'the recipients that exist in relay.domains: addresses, "*" matching any text ("*@example.test" accepts every user of that domain), ' +
        "an item may be { file: PATH }. When set, a recipient of a relay domain that matches no entry gets 550 5.1.1 User unknown at RCPT; " +
        "postmaster@ a relay domain is always accepted",
    ),
  postmaster: PostmasterTarget.optional().describe(
    'where mail to <postmaster> (no domain, RFC 5321 §4.5.1) goes: an address, e.g. "hostmaster@example.test", or "maildir:PATH". ' +
      "Without it, <postmaster> goes only to a route whose match names it; a catch-all route never takes it (it is refused)",
  ),
  verify: z
    .strictObject({
      positiveTtl: Duration.prefault("7d").describe(
        'how long a recipient the next hop accepted stays known, e.g. "7d"',
      ),
      negativeTtl: Duration.prefault("3h").describe(
        'how long a recipient the next hop refused stays refused, e.g. "3h"',
      ),
      timeout: Duration.prefault("10s").describe(
        'deadline for asking the next hop; past it the client hears 450 4.1.1 and retries, e.g. "10s"',
      ),
      cacheSize: z.int().positive().default(100_000).describe("most answers kept in memory (the oldest go first)"),
    })
    .prefault({})
    .describe(
      "the answers of routes with `verify: rcpt` (asked at RCPT time, like Postfix's reject_unverified_recipient)",
    ),
});

const Hooks = z.strictObject({
  timeout: Duration.prefault("10s").describe('deadline for each hook unless its entry sets one, e.g. "10s"'),
  onError: ActionSchema.prefault({ defer: "451 4.3.0 Temporary policy failure, try again later" }).describe(
    "what a hook that throws or times out leads to, unless its entry sets one (default: defer 451 4.3.0)",
  ),
});

/** Keys of a pipeline entry that the core reads; every other key is an option of the plugin. */
export const CORE_ENTRY_KEYS = ["plugin", "on", "timeout", "onError"] as const;

const PipelineEntry = z
  .looseObject({
    plugin: z
      .string()
      .min(1)
      .describe('a built-in plugin name, or a path such as "./local-plugins/check.ts" (relative to the policy file)'),
    on: z
      .record(z.string(), ActionSchema)
      .optional()
      .describe("an action per verdict of the plugin; a verdict with no action here gets the plugin's default"),
    timeout: Duration.optional().describe("deadline for this plugin's hooks (default: hooks.timeout)"),
    onError: ActionSchema.optional().describe(
      "what a throw or timeout of this plugin leads to (default: hooks.onError)",
    ),
  })
  .describe("one plugin run; its own options sit beside `plugin`");

const RouteMatch = z.strictObject({
  recipientDomain: oneOrMany(DomainPattern)
    .optional()
    .describe('recipient domain(s), exact and case-insensitive; "*.example.test" for subdomains'),
  senderDomain: oneOrMany(DomainPattern)
    .optional()
    .describe('sender domain(s), exact and case-insensitive; "*.example.test" for subdomains'),
  clientNetwork: oneOrMany(Network).optional().describe("client address(es) or CIDR network(s)"),
  // More route conditions (core/delivery/routes.ts compiles them).
  recipient: oneOrMany(z.string().min(1))
    .optional()
    .describe('recipient address(es); "*" matches any characters, e.g. "postmaster@*" or "*+bulk@example.test"'),
  listener: oneOrMany(z.union([z.int().min(1).max(65535), HostPort]))
    .optional()
    .describe('the listener the mail came in on: a port (587) or "host:port"'),
  tag: oneOrMany(z.string().min(1))
    .optional()
    .describe("tag(s) a hook or rule set on the transaction; any one matches"),
});

// Per-route outbound TLS, connection limit and source address; `to` may list hosts.
// "implicit" is TLS from the first byte (port 465 smarthosts).
const RouteTls = z.enum(["none", "opportunistic", "required", "implicit"]);

const Route = z
  .strictObject({
    match: RouteMatch.optional().describe("all given conditions must hold; none given matches everything"),
    to: z
      .union([RouteTarget, z.array(RouteTarget).min(1)])
      .describe(
        `the next hop: ${ROUTE_TARGET_HELP}, or a list of smtp:// / lmtp:// hosts tried in order; maildir paths are relative to the policy file`,
      ),
    tls: z
      .union([
        RouteTls,
        z.strictObject({
          mode: RouteTls.describe(
            "none, opportunistic (STARTTLS when offered), required (defer without it) or implicit (TLS from the first byte, port 465)",
          ),
          verify: z
            .boolean()
            .optional()
            .describe("verify the next hop's certificate (default: only when mode is required)"),
          sni: z.string().min(1).optional().describe("TLS server name to send and to expect in the certificate"),
        }),
      ])
      .optional()
      .describe("outbound TLS to this route's next hops (default: opportunistic, unverified)"),
    connections: z
      .int()
      .positive()
      .optional()
      .describe("most simultaneous connections to each next hop of this route (default 4), reused between messages"),
    sourceAddress: z
      .string()
      .refine((text) => isIP(text) !== 0, { error: "expected an IP address of this host" })
      .optional()
      .describe("local IP address outgoing connections of this route are made from"),
    // Smarthost AUTH; the policy names where the password is, never the password (core/delivery/smarthost.ts).
    auth: SmarthostAuthSchema.optional().describe(
      "log in to the next hop (a smarthost) with AUTH PLAIN/LOGIN; needs smtp:// targets and tls required or implicit",
    ),
    verify: z
      .literal("rcpt")
      .optional()
      .describe(
        "rcpt: before accepting a recipient of relay.domains, ask this route's next hop (MAIL FROM:<>, RCPT TO, RSET); " +
          "refused there = 550 5.1.1 here, no answer = 450 4.1.1. Answers are cached (relay.verify). Needs smtp:// or lmtp:// targets",
      ),
  })
  .superRefine((route, ctx) => {
    for (const problem of smarthostRouteProblems(route)) ctx.addIssue({ code: "custom", ...problem });
    if (route.verify) {
      const targets = typeof route.to === "string" ? [route.to] : route.to;
      targets.forEach((target, index) => {
        if (/^(smtp|lmtp):\/\//.test(target)) return;
        ctx.addIssue({
          code: "custom",
          path: typeof route.to === "string" ? ["to"] : ["to", index],
          message: `verify: rcpt asks an SMTP or LMTP next hop; "${target}" is neither (use smtp://HOST:PORT or lmtp://HOST:PORT)`,
        });
      });
    }
  })
  .describe("a next-hop override");

const Delivery = z.strictObject({
  mode: z
    .enum(["proxy", "queue"])
    .default("proxy")
    .describe("proxy: 250 only after the next hop accepted; queue: store durably, 250, then deliver with retries"),
  spool: z.string().min(1).default("./var/spool").describe("spool folder (queue mode), relative to the policy file"),
  retry: z
    .strictObject({
      schedule: z
        .array(Duration)
        .min(1)
        .prefault(["1m", "5m", "15m", "1h", "4h"])
        .describe("waits between attempts; the last one repeats until maxAge"),
      maxAge: Duration.prefault("5d").describe('give up and bounce after this long, e.g. "5d"'),
    })
    .prefault({})
    .describe("retry schedule for deferred deliveries (queue mode)"),
  timeout: Duration.prefault("5m").describe('deadline for one attempt at the next hop, e.g. "5m"'),
  // MX port for labs and tests, loop limit, spool limit, MTA-STS.
  mxPort: z
    .int()
    .min(1)
    .max(65535)
    .default(25)
    .describe("port MX hosts are contacted on; always 25 in real life, another port only for labs and tests"),
  maxReceived: z
    .int()
    .positive()
    .default(100)
    .describe("a message with more Received headers than this is refused with 554 5.4.6 (a mail loop)"),
  spoolLimit: Size.prefault("10GB").describe(
    'most bytes the spool may hold; past it new mail gets 452 4.3.1, e.g. "10GB"',
  ),
  bounces: z
    .strictObject({
      suppressSuspect: z
        .boolean()
        .default(true)
        .describe(
          "send no DSN for a message whose client was DNSBL-listed or whose sender failed SPF or DMARC when it was accepted: " +
            "such senders are usually forged, and the bounce would be backscatter; each suppressed DSN is logged and counted",
        ),
      unauthenticated: z
        .enum(["headers", "full"])
        .default("headers")
        .describe(
          "what a DSN to a sender we could not authenticate (no SPF pass, no DKIM pass of the sender's domain, not a trusted client) returns: " +
            "headers (RET=HDRS, whatever the client asked) or full (the client's RET, else the whole message up to 256KB)",
        ),
    })
    .prefault({})
    .describe("who gets a DSN (bounce) for mail that could not be delivered (queue mode)"),
  mtaSts: z
    .strictObject({
      enabled: z.boolean().default(true).describe("look up and enforce recipient domains' MTA-STS policies (RFC 8461)"),
      policyUrl: z
        .string()
        .default("https://mta-sts.{domain}/.well-known/mta-sts.txt")
        .describe("where a policy is fetched from, {domain} filled in; change it only for labs and tests"),
    })
    .prefault({})
    .describe("MTA-STS for MX delivery"),
});

/** Queue actions the dashboard may offer (core/queue/admin.ts does them, as `portcullis queue` does). */
export const DASHBOARD_QUEUE_ACTIONS = ["flush", "delete", "bounce"] as const;

const LOOPBACK = new NetworkList(LOOPBACK_NETWORKS);

/** Only this host can reach the address: `localhost` or a loopback IP. */
export function isLoopbackAddress(listen: string): boolean {
  const host = parseHostPort(listen)?.host;
  return host === "localhost" || (host !== undefined && LOOPBACK.has(host));
}

// The read-only web dashboard (core/observability/dashboard/).
const Dashboard = z
  .strictObject({
    listen: HostPort.default("127.0.0.1:9465").describe(
      'host:port of the dashboard, e.g. "127.0.0.1:9465"; any other than loopback needs auth',
    ),
    auth: z
      .strictObject({
        users: z
          .string()
          .min(1)
          .optional()
          .describe(
            "users file, relative to the policy file: `name:scrypt-hash` lines as `portcullis passwd` prints (HTTP Basic)",
          ),
        tokenFile: z
          .string()
          .min(1)
          .optional()
          .describe("a file holding one token (at least 32 characters), relative to the policy file: HTTP Bearer"),
      })
      .superRefine((auth, ctx) => {
        if ((auth.users === undefined) === (auth.tokenFile === undefined)) {
          ctx.addIssue({ code: "custom", message: "name exactly one of users or tokenFile" });
        }
      })
      .optional()
      .describe("who may look: required unless the dashboard listens on loopback only"),
    queueActions: z
      .array(z.enum(DASHBOARD_QUEUE_ACTIONS))
      .default([])
      .describe("queue actions offered (flush, delete, bounce); none by default: the dashboard only shows"),
    recent: z
      .int()
      .min(100)
      .max(1_000_000)
      .default(10_000)
      .describe("transactions and refused connections kept in memory for the dashboard"),
  })
  .superRefine((dashboard, ctx) => {
    if (!dashboard.auth && !isLoopbackAddress(dashboard.listen)) {
      ctx.addIssue({
        code: "custom",
        path: ["listen"],
        message: `${dashboard.listen} is reachable from other hosts: add auth { users } or { tokenFile }, or listen on loopback`,
      });
    }
  });

const Observability = z.strictObject({
  log: z
    .strictObject({
      level: z
        .enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"])
        .default("info")
        .describe("least severe level written (JSON lines on stdout)"),
      // Per-module levels (core/observability/log.ts moduleLogger).
      levels: z
        .record(
          z.string().regex(/^(smtp|queue|state|plugin:.+)$/),
          z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
          {
            error: (issue) =>
              issue.code === "invalid_key"
                ? "a log module is smtp, queue, state or plugin:NAME (a pipeline entry's name)"
                : undefined,
          },
        )
        .optional()
        .describe(
          'levels per module, overriding `level` for it (lower or higher): smtp (session lines: connect, auth, transaction summary, close), queue (spool and delivery worker), state (state store), plugin:NAME (a pipeline entry by name), e.g. { queue: debug, "plugin:dnsbl": warn }',
        ),
    })
    .prefault({})
    .describe("structured log"),
  metrics: HostPort.optional().describe(
    'host:port serving Prometheus /metrics, /healthz and /readyz, e.g. "127.0.0.1:9464"',
  ),
  dashboard: Dashboard.optional().describe(
    "a web dashboard of recent decisions, the queue and the running policy; off unless present",
  ),
  transactionLog: z
    .strictObject({
      path: z.string().min(1).describe("JSON-lines file, relative to the policy file"),
      // Rotation and privacy (core/observability/transaction-log.ts).
      maxSize: Size.prefault("100MB").describe(
        'a line that would grow the file past this starts a new file, e.g. "100MB"',
      ),
      maxAge: Duration.prefault("1d").describe('a file whose first record is older than this is rotated, e.g. "1d"'),
      keep: z
        .int()
        .min(1)
        .default(7)
        .describe("rotated files kept (named with their rotation time); older ones are deleted"),
      hashLocalParts: z
        .boolean()
        .default(false)
        .describe(
          "record envelope local parts as hashes (domains stay readable; rules testing local parts cannot match)",
        ),
    })
    .optional()
    .describe("one line per transaction: findings and decision, enough to replay rules (`portcullis replay`)"),
});

export const PolicySchema = z
  .strictObject({
    version: z
      .literal(1, { error: "version must be 1, the only policy format so far" })
      .describe("policy format version: 1"),
    server: Server.prefault({}).describe("the SMTP listener"),
    dns: Dns.prefault({}).describe("the one resolver every plugin uses"),
    state: State.prefault({}).describe("shared state for rate limits and greylisting"),
    relay: Relay.prefault({}).describe("who may send to which recipients (keeps the gateway from being an open relay)"),
    hooks: Hooks.prefault({}).describe("defaults for every pipeline entry"),
    pipeline: z.array(PipelineEntry).default([]).describe("the plugins to run, in this order"),
    // Rules: conditions over findings and their actions; the grammar lives in core/rules.
    rules: rulesSchema({ routeTarget: RouteTarget }),
    routes: z
      .array(Route)
      .prefault([{ to: "mx" }])
      .describe('next-hop overrides, first match wins (default: [{ to: "mx" }])'),
    delivery: Delivery.prefault({}).describe("how accepted mail reaches the next hop"),
    observability: Observability.prefault({}).describe("logs, metrics and the transaction log"),
    // A candidate policy evaluated beside this one (core/observability/shadow.ts).
    shadow: z
      .string()
      .min(1)
      .optional()
      .describe(
        "a candidate policy file (relative to this one) whose rules are evaluated on every transaction's findings beside this policy's, never acting; differences are logged and counted",
      ),
  })
  .describe("A Portcullis policy file");

export type PolicyConfig = z.output<typeof PolicySchema>;
/** The policy file as written: what editors complete against. */
export type PolicyInput = z.input<typeof PolicySchema>;
