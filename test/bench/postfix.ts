/**
 * The Postfix peer of the benchmark: a private Postfix instance (its own config_directory,
 * queue_directory and data_directory in a temporary folder, smtpd on a free port of 127.0.0.1)
 * that relays to the same sink as the gateway, doing what an operator's Postfix edge does in
 * front of the same checks: postscreen with its pregreet test and the bench's two DNSBL zones,
 * FCrDNS of the client (`reject_unknown_client_hostname`), and its queue, which Postfix always
 * fsyncs before it answers 250.
 *
 * Postfix resolves through the C library, which reads its servers from /etc/resolv.conf and knows
 * only port 53. So the instance starts in a mount namespace of its own (`unshare --mount`, root
 * only) where /etc/resolv.conf is a file naming a small UDP relay on 127.0.0.153:53 that passes
 * every query to the bench's DNS server; nothing outside that namespace changes. When that cannot
 * be done, the peer runs postscreen without DNSBL and says so in its description.
 *
 * Postfix starts only as root (it then runs as `mail_owner`); `postfixAvailable` says why not when
 * it cannot run here.
 */
import { execFile, execFileSync } from "node:child_process";
import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { once } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { type ProcessStats, processStats } from "./gateway-process.js";
import { findProgram, freePort, waitForListener } from "./sink-process.js";

const run = promisify(execFile);
/** Where the relay for Postfix's resolver listens (inside 127/8, port 53: all resolv.conf can name). */
const RELAY_ADDRESS = "127.0.0.153";
const STOP_TIMEOUT_MS = 20_000;

export interface PostfixPeerOptions {
  readonly sinkPort: number;
  /** The bench's DNS server, host:port. */
  readonly dns: string;
  readonly dnsblZones: readonly string[];
  /** The domain the load sends to (Postfix relays only there). */
  readonly relayDomain: string;
  /** Run the instance on these CPUs only (`taskset -c`); every daemon inherits them from master. */
  readonly cpus?: string;
}

export interface PostfixPeer {
  readonly port: number;
  /** Version and what this instance checks, with the DNS queries it made so far, for the report. */
  description(): string;
  /**
   * CPU of the whole instance: the master's own and its reaped children's time plus that of the
   * processes alive now. RSS is summed over the live processes (shared pages counted in each).
   */
  stats(): ProcessStats;
  stop(): Promise<void>;
}

/** Null when a private Postfix can run here, else why not. */
export function postfixAvailable(): string | null {
  if (!findProgram("postfix")) return "postfix is not installed";
  if (process.getuid?.() !== 0) return "Postfix starts only as root";
  try {
    execFileSync("id", ["postfix"], { stdio: "ignore" });
  } catch {
    return "there is no postfix user for mail_owner";
  }
  return null;
}

export async function startPostfixPeer(options: PostfixPeerOptions): Promise<PostfixPeer> {
  const why = postfixAvailable();
  if (why) throw new Error(`bench: no Postfix peer: ${why}`);
  const postfix = findProgram("postfix")!;
  const postconf = (name: string) => execFileSync(findProgram("postconf")!, ["-dh", name], { encoding: "utf8" }).trim();
  const version = postconf("mail_version");
  // Its own folder under the system's temp dir: Postfix's daemons run as mail_owner and must be
  // able to reach it, which a folder inside the bench's private one would not allow.
  const dir = await mkdtemp(join(tmpdir(), "portcullis-bench-postfix-"));
  const config = join(dir, "config");
  const queue = join(dir, "queue");
  const data = join(dir, "data");
  for (const sub of [config, queue, data]) await mkdir(sub, { recursive: true });
  await chmod(dir, 0o755);
  const owner = execFileSync("id", ["-u", "postfix"], { encoding: "utf8" }).trim();
  await chown(data, Number(owner), -1);
  const port = await freePort();
  const relay = await startResolverRelay(options.dns).catch(() => null);
  const dnsbl = relay !== null && findProgram("unshare") !== null;
  const mainCf = {
    compatibility_level: "3.6",
    config_directory: config,
    queue_directory: queue,
    data_directory: data,
    meta_directory: postconf("meta_directory"),
    command_directory: postconf("command_directory"),
    daemon_directory: postconf("daemon_directory"),
    shlib_directory: postconf("shlib_directory"),
    mail_owner: "postfix",
    setgid_group: "postdrop",
    myhostname: "postfix.bench.test",
    mydomain: "bench.test",
    mydestination: "",
    inet_interfaces: "127.0.0.1",
    inet_protocols: "ipv4",
    // Not the load's address: postscreen would wave mynetworks through without a test.
    mynetworks: "192.0.2.1/32",
    relay_domains: options.relayDomain,
    relayhost: `[127.0.0.1]:${options.sinkPort}`,
    smtpd_relay_restrictions: "reject_unauth_destination",
    smtpd_client_restrictions: "reject_unknown_client_hostname",
    postscreen_greet_action: "enforce",
    ...(dnsbl
      ? {
          postscreen_dnsbl_sites: options.dnsblZones.map((zone) => `${zone}*1`).join(", "),
          postscreen_dnsbl_threshold: "1",
          postscreen_dnsbl_action: "enforce",
        }
      : {}),
    local_transport: "error:local delivery is off",
    alias_maps: "",
    alias_database: "",
    biff: "no",
    default_process_limit: "200",
    maillog_file: join(dir, "maillog"),
    maillog_file_prefixes: dir,
  };
  await writeFile(
    join(config, "main.cf"),
    Object.entries(mainCf)
      .map(([key, value]) => `${key} = ${value}\n`)
      .join(""),
  );
  await writeFile(join(config, "master.cf"), masterCf(port));
  let resolvConf: string | null = null;
  if (dnsbl) {
    resolvConf = join(dir, "resolv.conf");
    await writeFile(resolvConf, `nameserver ${RELAY_ADDRESS}\noptions attempts:2 timeout:1\n`);
  }
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= stopInstance();
    return stopping;
  };
  const stopInstance = async () => {
    await run(postfix, ["-c", config, "stop"]).catch(() => undefined);
    // `stop` returns once master was told; its pid file goes when it has exited.
    const pidFile = join(queue, "pid", "master.pid");
    const until = Date.now() + STOP_TIMEOUT_MS;
    while (existsSync(pidFile) && masterAlive(pidFile) && Date.now() < until) {
      await new Promise((done) => setTimeout(done, 100));
    }
    await run(postfix, ["-c", config, "abort"]).catch(() => undefined);
    relay?.close();
    await rm(dir, { recursive: true, force: true });
  };
  const pinned = (command: string[]): [string, string[]] =>
    options.cpus ? ["taskset", ["-c", options.cpus, ...command]] : [command[0], command.slice(1)];
  try {
    if (resolvConf) {
      await run(
        ...pinned([
          "unshare",
          "--mount",
          "--propagation",
          "private",
          "sh",
          "-c",
          'mount --bind "$1" /etc/resolv.conf && exec "$2" -c "$3" start',
          "sh",
          resolvConf,
          postfix,
          config,
        ]),
      );
    } else {
      await run(...pinned([postfix, "-c", config, "start"]));
    }
    await waitForListener(
      port,
      () => false,
      () => "no listener",
    );
  } catch (error) {
    const log = await readFile(join(dir, "maillog"), "utf8").catch(() => "");
    await stop();
    throw new Error(`bench: the Postfix peer did not start: ${(error as Error).message}\n${log.slice(-2000)}`);
  }
  const master = Number(readFileSync(join(queue, "pid", "master.pid"), "utf8").trim());
  const checks = () => [
    "postscreen (pregreet test)",
    dnsbl
      ? `DNSBL ${options.dnsblZones.join(", ")} (${relay!.queries()} DNS queries relayed)`
      : "no DNSBL (its resolver cannot be pointed at the bench's DNS here)",
    "FCrDNS",
    "fsynced queue",
  ];
  return {
    port,
    description: () => `Postfix ${version}: ${checks().join(", ")}`,
    stats: () => instanceStats(master),
    stop,
  };
}

/** One postscreen listener on `port`; every daemon out of chroot (the folders are the temp dir's). */
function masterCf(port: number): string {
  const services = [
    `127.0.0.1:${port} inet n - n - 1 postscreen`,
    "smtpd pass - - n - - smtpd",
    "dnsblog unix - - n - 0 dnsblog",
    "pickup unix n - n 60 1 pickup",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "showq unix n - n - - showq",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
  ];
  return `${services.join("\n")}\n`;
}

function masterAlive(pidFile: string): boolean {
  try {
    process.kill(Number(readFileSync(pidFile, "utf8").trim()), 0);
    return true;
  } catch {
    return false;
  }
}

/** Postfix's daemons come and go: the master's reaped children are in its cutime and cstime. */
function instanceStats(master: number): ProcessStats {
  const live = processStats(master);
  try {
    const stat = readFileSync(`/proc/${master}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 16 and 17 of /proc/PID/stat: CPU of children waited for, in clock ticks of 10 ms.
    // The reaped daemons' write calls are nowhere to be read, so none are reported.
    return { ...live, cpuMs: live.cpuMs + (Number(fields[13]) + Number(fields[14])) * 10, writes: Number.NaN };
  } catch {
    return live;
  }
}

/**
 * A UDP relay from RELAY_ADDRESS:53 to the bench's DNS server: one upstream socket per query,
 * closed at the answer or after two seconds.
 */
async function startResolverRelay(upstream: string): Promise<{ queries(): number; close(): void }> {
  const colon = upstream.lastIndexOf(":");
  const host = upstream.slice(0, colon);
  const upstreamPort = Number(upstream.slice(colon + 1));
  const server = createSocket("udp4");
  const open = new Set<UdpSocket>();
  let queries = 0;
  server.on("message", (query, client) => {
    queries++;
    const socket = createSocket("udp4");
    open.add(socket);
    const done = () => {
      clearTimeout(timer);
      if (open.delete(socket)) socket.close();
    };
    const timer = setTimeout(done, 2000);
    socket.on("error", done);
    socket.on("message", (answer) => {
      server.send(answer, client.port, client.address);
      done();
    });
    socket.send(query, upstreamPort, host);
  });
  server.bind(53, RELAY_ADDRESS);
  await Promise.race([
    once(server, "listening"),
    once(server, "error").then(([error]) => {
      throw error;
    }),
  ]);
  return {
    queries: () => queries,
    close: () => {
      for (const socket of open) socket.close();
      open.clear();
      server.close();
    },
  };
}
