/**
 * `portcullis init`: writes a commented starter policy for an inbound MX gateway, one that passes
 * `portcullis check --strict` as written, so a new user starts from a file that works and reads
 * what each block is for before changing it.
 */
import { writeFile } from "node:fs/promises";
import { dirname, isAbsolute, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { parseRouteTarget } from "../core/delivery/target.js";
import { asciiDomain } from "../core/toolkit/address.js";

export const INIT_USAGE =
  "portcullis init [--domain DOMAIN] [--next-hop smtp://HOST:PORT | --maildir PATH] [--force] [--out FILE]";

/** What the starter policy is made of; every field already checked. */
export interface StarterOptions {
  /** The domain we receive mail for (ASCII form). */
  readonly domain: string;
  /** Where accepted mail goes: `smtp://HOST:PORT` or `maildir:PATH` (PATH relative to the policy file). */
  readonly route: string;
  /** The route is a stand-in that no option chose: the file says so where the route is written. */
  readonly placeholder?: boolean;
}

/** A mistake in the command line; the CLI shows it with the usage and exits 2. */
export class InitUsageError extends Error {}

/** The starter policy's text: an edge MX for `domain` that hands accepted mail to `route`. */
export function starterPolicy({ domain, route, placeholder }: StarterOptions): string {
  const destination = route.startsWith("maildir:")
    ? "a local Maildir (one file per message; relative paths are relative to this file)"
    : "the internal mail server";
  return `# A starter policy written by \`portcullis init\`: an inbound MX gateway for ${domain}.
# Mail from the internet for our domain is checked at the door, stored, and passed on to
# ${destination}. The connection checks each record findings and add points; the
# rules at the end turn a high score into a rejection. Only clear violations are refused at once.
#
# \`portcullis check --strict THIS-FILE\` validates it; \`portcullis try --policy THIS-FILE …\` shows
# what one transaction would meet; \`portcullis schema > policy.schema.json\` gives your editor the
# JSON Schema for completion. Relative paths below are relative to this file.

# The format of this file. There is only version 1 so far.
version: 1

server:
  # In the banner, our Received header and our HELO to the next hop. Clients must not claim it: the
  # helo check refuses them. Give it an A/AAAA record and a matching PTR (receivers check both).
  hostname: mx.${domain}
  listen:
    - { address: "0.0.0.0:25" } # port 25 needs privileges (or CAP_NET_BIND_SERVICE)
  limits:
    maxConnectionsPerIp: 10
    idleTimeout: 5m # RFC 5321 §4.5.3.2 asks for minutes between commands

# A local recursive resolver (unbound, for one). Public resolvers are refused by the big block lists,
# which then answer 127.255.255.x for everything: the dnsbl check counts that as an error (and the
# policy below defers on errors), never as a listing.
dns:
  servers: ["127.0.0.1:53"]
  timeout: 2s

# Counters for the rate limit. "memory" suits one gateway; several gateways share a Redis instead:
# store: { redis: "redis://127.0.0.1:6379/0" }.
state:
  store: memory

# Who may send to whom, so the gateway never becomes an open relay: anyone may send to our domain,
# nobody may send anywhere else (a submission gateway for our own users is another policy).
relay:
  domains: [${domain}]
  networks: []
  # Plain <postmaster> is ours (RFC 5321 §4.5.1): mail to it goes to this mailbox.
  postmaster: postmaster@${domain}

# The checks, in the order they run.
pipeline:
  # Reverse DNS first: dnsbl then looks up the confirmed name, the Received header names it and
  # Authentication-Results reports it as iprev. Missing or mismatched names add points, no more.
  - plugin: fcrdns
    on:
      none: { score: 3 }
      fail: { score: 2 }
      temperror: ignore # a broken reverse zone is common and says little about the sender

  # Block lists. Listings only add points (listed: ignore); the "dnsbl" rule below refuses.
  - plugin: dnsbl
    zones:
      # REAL zones. Their operators set terms: Spamhaus is free below a usage volume and needs a
      # data query service key above it; check the terms of every list you keep.
      - { zone: zen.spamhaus.org, score: 10, codes: ["127.0.0.2-127.0.0.11"] }
      - { zone: bl.spamcop.net, score: 5 }
      # PLACEHOLDER: an allowlist of your partners' networks; put a zone you run or trust, or delete it.
      - { zone: list.allowlist.example, allow: true }
    guard:
      maxListedShare: 0.98 # a zone listing nearly everyone it is asked about is broken, not right
      minQueries: 500
    on:
      listed: ignore # the zones' scores go to the rules below
      error: defer # fail safe: an unanswered list defers (451) rather than letting mail in unchecked

  # Sender authentication. SPF at MAIL FROM, so a forged envelope sender is refused before DATA.
  - plugin: spf
    scores: { softfail: 3, permerror: 1 }
    on:
      fail: reject # 550 5.7.23: the sender's domain says "-all"
      temperror: defer # 451: the sender's DNS is down, a retry will tell
  # After DATA, over one read of the message: DKIM signatures, then DMARC, which decides.
  - plugin: dkim # its results only inform DMARC; DKIM alone refuses nothing
  - plugin: dmarc
    onPolicyReject: reject # the From domain asks for p=reject: 550 5.7.26

  # Volume limits, late so that only mail that passed the checks counts.
  - plugin: rate-limit
    limits:
      - { name: connections, key: client.ip, count: connections, rate: 60/1m, burst: 30 }
      - { name: per-client, key: client.ip, count: messages, rate: 600/1h, burst: 100 }

  # Last: one Authentication-Results field (iprev, spf, dkim, dmarc) for the next hop, replacing any
  # forged one that claims our name.
  - plugin: auth-results

# Evaluated after each phase; the first that matches acts.
rules:
  - name: dnsbl
    when: { dnsbl.listed: true, score: { gte: 10 } }
    action: { reject: "554 5.7.1 Service unavailable; {dnsbl.name} blocked using {dnsbl.zone}; {dnsbl.reason}" }
  - name: suspicious
    # Not for listed clients: the rule above already refused them.
    when: { score: { gte: 10 }, dnsbl.listed: { ne: true } }
    action: { reject: "550 5.7.1 Client host [{client.ip}] rejected: too many signs of abuse" }

# Where accepted mail goes; the first matching route wins.
routes:
  - to: "${route}"${placeholder ? " # PLACEHOLDER: your internal mail server (portcullis init --next-hop)" : ""}

# queue: the message is stored and fsynced in the spool before we answer 250, then delivered with
# retries; after maxAge the sender gets a bounce (DSN).
delivery:
  mode: queue
  spool: ./spool
  retry: { schedule: [1m, 5m, 15m, 1h, 4h], maxAge: 5d }
`;
}

/** The route as the policy at `out` must write it; a usage error when the option is malformed. */
function routeOf(values: { "next-hop"?: string; maildir?: string }, out: string): Omit<StarterOptions, "domain"> {
  if (values["next-hop"] !== undefined && values.maildir !== undefined) {
    throw new InitUsageError("init takes --next-hop or --maildir, not both");
  }
  if (values.maildir !== undefined) {
    // Given relative to where the command runs; the policy resolves it from its own folder.
    const path = resolve(values.maildir);
    const fromPolicy = relative(dirname(out), path) || ".";
    return {
      route: `maildir:${isAbsolute(fromPolicy) || fromPolicy.startsWith(".") ? fromPolicy : `./${fromPolicy}`}`,
    };
  }
  const hop = values["next-hop"];
  if (hop === undefined) return { route: "smtp://127.0.0.1:2526", placeholder: true };
  if (parseRouteTarget(hop)?.kind !== "smtp") {
    throw new InitUsageError(`--next-hop "${hop}" is not an SMTP next hop; write smtp://HOST:PORT`);
  }
  return { route: hop };
}

/**
 * `portcullis init …`: writes the starter policy. Exit 1 (with the reason on `stderr`) when the file
 * exists and `--force` was not given: a policy someone wrote is never replaced by accident.
 */
export async function initCommand(
  args: string[],
  stdout: NodeJS.WritableStream,
  stderr: NodeJS.WritableStream,
): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      domain: { type: "string", default: "example.com" },
      "next-hop": { type: "string" },
      maildir: { type: "string" },
      force: { type: "boolean", default: false },
      out: { type: "string", default: "policy.yaml" },
    },
  });
  const domain = asciiDomain(values.domain);
  if (!domain?.includes(".")) throw new InitUsageError(`--domain "${values.domain}" is not a domain, e.g. example.com`);
  const out = resolve(values.out);
  const text = starterPolicy({ domain, ...routeOf(values, out) });
  try {
    await writeFile(out, text, { flag: values.force ? "w" : "wx" });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    stderr.write(`portcullis: ${values.out} already exists; pass --force to replace it\n`);
    return 1;
  }
  stdout.write(`wrote ${values.out}; check it with: portcullis check --strict ${values.out}\n`);
  return 0;
}
