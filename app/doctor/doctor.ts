/**
 * `portcullis doctor`: a deliverability self-check of this gateway's own identity, as receivers
 * see it. Receivers judge a new small mail server by its reverse DNS, its HELO name, blocklists and
 * the SPF, DKIM and DMARC records of its domains; each is looked up here the way the pipeline
 * looks up its clients — the same shared resolver and the same plugin logic (fcrdns, helo, dnsbl,
 * the core's SPF and mailauth's DMARC, dkim-sign's key files) — and reported as pass, warn or fail with one
 * line on how to fix it.
 *
 * @example
 * portcullis doctor --policy policy.yaml --ip 203.0.113.25 --domain example.org --json
 */
import { createPrivateKey } from "node:crypto";
import { isIP } from "node:net";
import type { Writable } from "node:stream";
import { parseArgs } from "node:util";
import { parseMtaStsRecord } from "../../core/delivery/mta-sts.js";
import { resolveMxHosts } from "../../core/delivery/mx.js";
import { settle } from "../../core/dns/lookup.js";
import { createResolver, type DnsResolver, reverseIpLabels } from "../../core/dns/resolver.js";
import type { LoadedPolicy } from "../../core/policy/load.js";
import { asciiDomain } from "../../core/toolkit/address.js";
import { dmarc, preloadMailauth } from "../../core/toolkit/mailauth.js";
import { checkSpf as evaluateSpfRecord } from "../../core/toolkit/spf.js";
import { loadKey } from "../../plugins/dkim-sign/index.js";
import type { DkimSignOptions } from "../../plugins/dkim-sign/schema.js";
import { classifyAnswer, isAllowlist, probeProblem, txtText } from "../../plugins/dnsbl/answer.js";
import type { DnsblOptions } from "../../plugins/dnsbl/schema.js";
import { candidateNames, judgeFcrdns } from "../../plugins/fcrdns/check.js";
import { dnsFindings, parseHelo, staticFindings } from "../../plugins/helo/check.js";
import { DEFAULT_DYNAMIC_PATTERNS, type HeloOptions } from "../../plugins/helo/schema.js";
import { mailauthResolver } from "../../plugins/shared/sender-auth/message.js";
import { loadPolicy } from "../catalogue.js";
import { dkimRecordFor, dmarcProblems, matchDkimKey, tlsRptProblems, versionedRecords } from "./records.js";

export type DoctorStatus = "pass" | "warn" | "fail";

export type DoctorCheck =
  | "ip"
  | "ptr"
  | "fcrdns"
  | "ptr-generic"
  | "ptr-helo"
  | "helo"
  | "dnsbl"
  | "domains"
  | "mx"
  | "spf"
  | "spf-lookups"
  | "dkim"
  | "dmarc"
  | "mta-sts"
  | "tls-rpt";

export interface DoctorFinding {
  readonly check: DoctorCheck;
  /** What was looked at: the IP, a zone, a domain, a DKIM selector name. */
  readonly subject: string;
  readonly status: DoctorStatus;
  readonly detail: string;
  /** One line on how to fix it; null for a pass. */
  readonly fix: string | null;
}

export interface DoctorReport {
  readonly policy: string;
  /** Null when no address was found: the checks of the address (PTR, HELO, listings, SPF) did not run. */
  readonly ip: string | null;
  readonly hostname: string;
  readonly domains: readonly string[];
  readonly zones: readonly string[];
  readonly findings: readonly DoctorFinding[];
  readonly summary: Readonly<Record<DoctorStatus, number>>;
}

export interface DoctorOptions {
  readonly policy: LoadedPolicy;
  readonly dns: DnsResolver;
  /** The address this gateway sends from; null when unknown (an inbound MX may not say). */
  readonly ip: string | null;
  /** Default: the domains the policy signs for (dkim-sign) and the exact names of relay.domains. */
  readonly domains?: readonly string[];
  /** DNSBL zones; default: the blocking IP zones of the policy's dnsbl entries. */
  readonly zones?: readonly string[];
}

/** The RFC 7208 limits; a receiver's SPF check gives permerror past them. */
const SPF_MAX_LOOKUPS = 10;
const SPF_MAX_VOID_LOOKUPS = 2;
/**
 * An address no SPF record authorises (RFC 6666 discard prefix): evaluating a record for it walks
 * every mechanism, so it counts the lookups a sender that matches late would cost.
 */
const SPF_PROBE_IP = "100::1";

const pass = (check: DoctorCheck, subject: string, detail: string): DoctorFinding => ({
  check,
  subject,
  status: "pass",
  detail,
  fix: null,
});
const problem = (
  check: DoctorCheck,
  subject: string,
  status: "warn" | "fail",
  detail: string,
  fix: string,
): DoctorFinding => ({ check, subject, status, detail, fix });
/** A lookup that got no answer proves nothing either way. */
const noAnswer = (check: DoctorCheck, subject: string, what: string, code: string): DoctorFinding =>
  problem(
    check,
    subject,
    "warn",
    `the lookup of ${what} failed (${code})`,
    "check that the DNS servers (dns.servers or --dns) answer, then run doctor again",
  );

/** Entries of one built-in plugin in the pipeline, with their parsed options. */
function entriesOf<T>(policy: LoadedPolicy, plugin: string): T[] {
  return policy.pipeline.filter((entry) => entry.definition.name === plugin).map((entry) => entry.options as T);
}

export function defaultDomains(policy: LoadedPolicy): string[] {
  const signed = entriesOf<DkimSignOptions>(policy, "dkim-sign").flatMap((options) =>
    options.keys.map((k) => k.domain),
  );
  const received = policy.config.relay.domains.filter((domain) => !domain.startsWith("*."));
  return [...new Set([...signed, ...received].map((domain) => asciiDomain(domain) ?? domain))];
}

export function defaultZones(policy: LoadedPolicy): string[] {
  const zones = entriesOf<DnsblOptions>(policy, "dnsbl").flatMap((options) =>
    options.zones.filter((zone) => zone.type === "ip" && !isAllowlist(zone)).map((zone) => zone.zone),
  );
  return [...new Set(zones)];
}

/** Runs every check; findings come in a fixed order (identity first, then each domain). */
export async function diagnose(options: DoctorOptions): Promise<DoctorReport> {
  const { policy, dns, ip } = options;
  const hostname = (asciiDomain(policy.config.server.hostname) ?? policy.config.server.hostname).toLowerCase();
  const domains = options.domains ?? defaultDomains(policy);
  const zones = options.zones ?? defaultZones(policy);
  const heloEntry = entriesOf<HeloOptions>(policy, "helo")[0];
  const dynamicPatterns = heloEntry?.dynamicPatterns ?? DEFAULT_DYNAMIC_PATTERNS.map((p) => new RegExp(p, "i"));
  const noAddress = [
    problem(
      "ip",
      "-",
      "warn",
      `no address to check: no route sets sourceAddress and ${hostname} has no A or AAAA record; PTR, HELO, blocklist listings and SPF were not checked`,
      "give --ip IP, the address this gateway sends mail from",
    ),
  ];
  // Loaded before the lookups below start, so that loading it does not run out their deadlines.
  preloadMailauth();
  const [reverse, helo, listed, zoneHealth, perDomain] = await Promise.all([
    ip ? checkReverseDns(dns, ip, hostname, dynamicPatterns) : noAddress,
    ip ? checkHelo(dns, ip, hostname, dynamicPatterns) : [],
    ip ? checkDnsbl(dns, ip, policy, zones) : [],
    checkZoneHealth(dns, policy, ip ? zones : []),
    Promise.all(domains.map((domain) => checkDomain(dns, ip, hostname, domain, policy))),
  ]);
  const findings = [
    ...reverse,
    ...helo,
    ...listed,
    ...zoneHealth,
    ...(domains.length === 0
      ? [
          problem(
            "domains",
            "-",
            "warn",
            "the policy names no domain to check (no dkim-sign keys, no relay.domains)",
            "name the domains you send mail from with --domain",
          ),
        ]
      : []),
    ...perDomain.flat(),
  ];
  const summary = { pass: 0, warn: 0, fail: 0 };
  for (const finding of findings) summary[finding.status]++;
  return { policy: policy.file, ip, hostname, domains, zones, findings, summary };
}

async function checkReverseDns(
  dns: DnsResolver,
  ip: string,
  hostname: string,
  dynamicPatterns: readonly RegExp[],
): Promise<DoctorFinding[]> {
  const ptr = await settle(dns.reverse(ip));
  const askProvider = `ask whoever holds ${ip} (your ISP or hosting provider) to set its PTR record to ${hostname}`;
  if (ptr.kind === "error") return [noAnswer("ptr", ip, `the PTR record of ${ip}`, ptr.code)];
  if (ptr.kind === "none") return [problem("ptr", ip, "fail", `${ip} has no PTR record`, askProvider)];
  const names = candidateNames(ptr.value, 10);
  if (names.length === 0) {
    return [problem("ptr", ip, "fail", `the PTR record of ${ip} holds no valid host name`, askProvider)];
  }
  const findings = [pass("ptr", ip, `PTR ${names.join(", ")}`)];
  const forwardType = isIP(ip) === 4 ? "A" : "AAAA";
  const forward = await Promise.all(
    names.map((name) => settle(forwardType === "A" ? dns.resolve4(name) : dns.resolve6(name))),
  );
  const fcrdns = judgeFcrdns(ip, ptr, names, new Map(names.map((name, i) => [name, forward[i]])), forwardType);
  switch (fcrdns.result) {
    case "pass":
      findings.push(pass("fcrdns", ip, `${fcrdns.confirmed} resolves back to ${ip}`));
      break;
    case "temperror":
      findings.push(
        noAnswer("fcrdns", ip, fcrdns.errors.map((e) => `${e.type} ${e.name}`).join(", "), fcrdns.errors[0].code),
      );
      break;
    default:
      findings.push(
        problem(
          "fcrdns",
          ip,
          "fail",
          `PTR mismatch: ${names.join(", ")} ${names.length > 1 ? "do" : "does"} not resolve to ${ip}`,
          `publish ${forwardType} ${names[0]} → ${ip}, or ${askProvider} (which must resolve to ${ip})`,
        ),
      );
  }
  const name = fcrdns.confirmed ?? names[0];
  // The helo plugin's dynamic-name patterns: what a receiver's generic-rDNS check looks for.
  const generic = staticFindings(parseHelo(name), {
    clientIp: ip,
    ourNames: [],
    ourAddresses: [],
    dynamicPatterns,
  }).includes("dynamic");
  findings.push(
    generic
      ? problem(
          "ptr-generic",
          ip,
          "fail",
          `the PTR name ${name} looks generic or dynamic (receivers take it for an end-user connection)`,
          `${askProvider}; a mail server needs a name of its own, not the provider's pool name`,
        )
      : pass("ptr-generic", ip, `${name} does not look generic`),
  );
  // A generic name is the problem already; renaming the server after it would be no fix.
  if (fcrdns.confirmed && fcrdns.confirmed !== hostname && !generic) {
    findings.push(
      problem(
        "ptr-helo",
        ip,
        "warn",
        `the PTR name ${fcrdns.confirmed} differs from the HELO name ${hostname}`,
        `set server.hostname to ${fcrdns.confirmed}, or ${askProvider}`,
      ),
    );
  }
  return findings;
}

async function checkHelo(
  dns: DnsResolver,
  ip: string,
  hostname: string,
  dynamicPatterns: readonly RegExp[],
): Promise<DoctorFinding[]> {
  const parsed = parseHelo(hostname);
  const fixName = `set server.hostname to this server's fully-qualified name (the PTR name of ${ip})`;
  if (parsed.kind !== "name") {
    return [problem("helo", hostname, "fail", `server.hostname "${hostname}" is not a host name`, fixName)];
  }
  const found = staticFindings(parsed, { clientIp: ip, ourNames: [], ourAddresses: [], dynamicPatterns });
  if (found.includes("unqualified")) {
    return [problem("helo", hostname, "fail", `${hostname} is not fully qualified`, fixName)];
  }
  const [a, aaaa] = await Promise.all([settle(dns.resolve4(hostname)), settle(dns.resolve6(hostname))]);
  const addresses = dnsFindings(a, aaaa, ip);
  if (addresses.finding === "temperror") return [noAnswer("helo", hostname, `A/AAAA ${hostname}`, addresses.errors[0])];
  const publish = `publish ${isIP(ip) === 4 ? "A" : "AAAA"} ${hostname} → ${ip}`;
  if (addresses.finding === "no-address") {
    return [problem("helo", hostname, "fail", `the HELO name ${hostname} has no address`, publish)];
  }
  if (!addresses.matchesClient) {
    return [
      problem(
        "helo",
        hostname,
        "fail",
        `the HELO name ${hostname} resolves to ${addresses.addresses.join(", ")}, not ${ip}`,
        `${publish}, or set server.hostname to a name that does`,
      ),
    ];
  }
  return [pass("helo", hostname, `${hostname} resolves to ${ip}`)];
}

/** A zone whose test point answers wrongly: the gateway ignores it when checking its clients. */
function zoneProblem(zone: string, testPoint: string, found: "test-point" | "refused"): DoctorFinding {
  return found === "refused"
    ? problem(
        "dnsbl",
        zone,
        "warn",
        `your resolver is refused by ${zone}: its test point ${testPoint} answers in 127.255.255.0/24, so the gateway ignores the zone`,
        "use your own recursive resolver in dns.servers (not a public one such as 8.8.8.8), or drop the zone",
      )
    : problem(
        "dnsbl",
        zone,
        "warn",
        `${zone} lists its test point ${testPoint}: it answers every query (broken), so the gateway ignores the zone`,
        "check the zone name with its operator, or drop the zone",
      );
}

/**
 * The test point of every other configured zone (allowlists, domain zones), looked up through the
 * gateway's resolver: a zone that refuses the resolver or lists everything is ignored by the
 * gateway, and nothing else would show it.
 */
async function checkZoneHealth(
  dns: DnsResolver,
  policy: LoadedPolicy,
  checked: readonly string[],
): Promise<DoctorFinding[]> {
  const testPoints = new Map(
    entriesOf<DnsblOptions>(policy, "dnsbl")
      .flatMap((options) => options.zones)
      .filter((zone) => !checked.includes(zone.zone))
      .map((zone) => [zone.zone, zone.type === "ip" ? "127.0.0.1" : "invalid"]),
  );
  return Promise.all(
    [...testPoints].map(async ([zone, testPoint]): Promise<DoctorFinding> => {
      const name = `${testPoint === "invalid" ? testPoint : reverseIpLabels(testPoint)}.${zone}`;
      const probe = await settle(dns.resolve4(name));
      if (probe.kind === "error") return noAnswer("dnsbl", zone, `the test point ${name}`, probe.code);
      const found = probeProblem(probe);
      return found
        ? zoneProblem(zone, testPoint, found)
        : pass("dnsbl", zone, `the test point ${testPoint} is not listed`);
    }),
  );
}

async function checkDnsbl(
  dns: DnsResolver,
  ip: string,
  policy: LoadedPolicy,
  zones: readonly string[],
): Promise<DoctorFinding[]> {
  const labels = reverseIpLabels(ip);
  // A zone's return-code filter, when the policy sets one, decides what counts as a listing there.
  const codes = new Map(
    entriesOf<DnsblOptions>(policy, "dnsbl").flatMap((options) => options.zones.map((zone) => [zone.zone, zone.codes])),
  );
  return Promise.all(
    zones.map(async (zone): Promise<DoctorFinding> => {
      const [answer, probe] = await Promise.all([
        settle(dns.resolve4(`${labels}.${zone}`)),
        settle(dns.resolve4(`1.0.0.127.${zone}`)),
      ]);
      const found = probeProblem(probe);
      if (found) return zoneProblem(zone, "127.0.0.1", found);
      const status = classifyAnswer(answer, codes.get(zone));
      switch (status.status) {
        case "clean":
          return pass("dnsbl", zone, `${ip} is not listed`);
        case "error":
          return noAnswer("dnsbl", zone, `${labels}.${zone}`, status.detail);
        case "listed": {
          const txt = txtText(await settle(dns.resolveTxt(`${labels}.${zone}`)));
          return problem(
            "dnsbl",
            zone,
            "fail",
            `${ip} is listed by ${zone} (${status.codes.join(" ")})${txt ? `: ${txt}` : ""}`,
            `find the cause (open relay, compromised account, a previous user of ${ip}), then request removal from ${zone}'s operator`,
          );
        }
      }
    }),
  );
}

async function checkDomain(
  dns: DnsResolver,
  ip: string | null,
  hostname: string,
  domain: string,
  policy: LoadedPolicy,
): Promise<DoctorFinding[]> {
  const groups = await Promise.all([
    checkMx(dns, domain),
    ip ? checkSpf(dns, ip, hostname, domain) : [],
    checkDkim(dns, domain, policy),
    checkDmarc(dns, domain),
    checkMtaSts(dns, domain),
    checkTlsRpt(dns, domain),
  ]);
  return groups.flat();
}

async function checkMx(dns: DnsResolver, domain: string): Promise<DoctorFinding[]> {
  const records = await settle(dns.resolveMx(domain));
  const publish = `publish MX ${domain} → this server's name (or your provider's inbound host), so replies and bounces reach you`;
  if (records.kind === "error") return [noAnswer("mx", domain, `MX ${domain}`, records.code)];
  if (records.kind === "none") return [problem("mx", domain, "fail", `${domain} has no MX record`, publish)];
  const plan = await resolveMxHosts(domain, dns);
  switch (plan.kind) {
    case "temperror":
      return [noAnswer("mx", domain, `the MX hosts of ${domain}`, plan.code)];
    case "nodomain":
      return [problem("mx", domain, "fail", `no MX host of ${domain} has an address`, publish)];
    case "nullMx":
      return [
        problem(
          "mx",
          domain,
          "warn",
          `${domain} publishes a null MX: it receives no mail, so replies and bounces to it are lost`,
          publish,
        ),
      ];
    case "hosts": {
      const resolved = new Set(plan.hosts.map((host) => host.exchange));
      const missing = records.value
        .map((mx) => mx.exchange.toLowerCase().replace(/\.$/, ""))
        .filter((name) => !resolved.has(name));
      if (plan.hosts.length === 0 || missing.length > 0) {
        return [
          problem(
            "mx",
            domain,
            "fail",
            `MX host${missing.length > 1 ? "s" : ""} ${missing.join(", ")} of ${domain} ${missing.length > 1 ? "have" : "has"} no address`,
            `publish an A record for ${missing[0]}, or remove it from the MX records`,
          ),
        ];
      }
      return [pass("mx", domain, plan.hosts.map((h) => `${h.priority} ${h.exchange}`).join(", "))];
    }
  }
}

/** SPF as a receiver evaluates it (the same check as the spf plugin), for the sender postmaster@domain. */
function evaluateSpf(dns: DnsResolver, ip: string, hostname: string, domain: string) {
  return evaluateSpfRecord({
    ip,
    helo: hostname,
    sender: `postmaster@${domain}`,
    mta: hostname,
    resolver: mailauthResolver(dns),
    maxLookups: SPF_MAX_LOOKUPS,
    maxVoidLookups: SPF_MAX_VOID_LOOKUPS,
  });
}

async function checkSpf(dns: DnsResolver, ip: string, hostname: string, domain: string): Promise<DoctorFinding[]> {
  const [checked, probe] = await Promise.all([
    evaluateSpf(dns, ip, hostname, domain),
    evaluateSpf(dns, SPF_PROBE_IP, hostname, domain),
  ]);
  const mechanism = `${isIP(ip) === 4 ? "ip4" : "ip6"}:${ip}`;
  const result = String(checked.status.result);
  const comment = checked.status.comment ?? result;
  const findings: DoctorFinding[] = [];
  switch (result) {
    case "pass":
      findings.push(pass("spf", domain, `${checked.rr} authorises ${ip}`));
      break;
    case "none":
      findings.push(
        problem(
          "spf",
          domain,
          "fail",
          `${domain} publishes no SPF record`,
          `publish TXT ${domain} "v=spf1 ${mechanism} -all"`,
        ),
      );
      break;
    case "temperror":
      findings.push(noAnswer("spf", domain, `the SPF record of ${domain}`, comment));
      break;
    case "permerror":
      findings.push(
        problem(
          "spf",
          domain,
          "fail",
          `the SPF record of ${domain} cannot be evaluated: ${comment}`,
          `fix the SPF record of ${domain} (one "v=spf1 … ${mechanism} -all" record, at most ${SPF_MAX_LOOKUPS} lookups)`,
        ),
      );
      break;
    default:
      findings.push(
        problem(
          "spf",
          domain,
          "fail",
          `SPF of ${domain} gives ${result} for ${ip}: ${checked.rr ?? ""}`.trimEnd(),
          `add ${mechanism} to the SPF record of ${domain} (before its "all")`,
        ),
      );
  }
  // A pass may stop early; the probe walks the whole record, as a sender matching late would.
  const lookups = probe.lookups ?? { count: 0, void: 0 };
  if (result === "none") return findings;
  if (
    String(probe.status.result) === "permerror" &&
    (lookups.count > SPF_MAX_LOOKUPS || lookups.void > SPF_MAX_VOID_LOOKUPS)
  ) {
    findings.push(
      problem(
        "spf-lookups",
        domain,
        "fail",
        `the SPF record of ${domain} needs more than ${SPF_MAX_LOOKUPS} DNS lookups (or ${SPF_MAX_VOID_LOOKUPS} void ones): receivers give permerror`,
        "flatten the record: replace include:, a, mx and ptr terms by the ip4:/ip6: ranges they stand for",
      ),
    );
  } else if (String(probe.status.result) !== "temperror") {
    findings.push(pass("spf-lookups", domain, `${lookups.count} of ${SPF_MAX_LOOKUPS} lookups`));
  }
  return findings;
}

async function checkDkim(dns: DnsResolver, domain: string, policy: LoadedPolicy): Promise<DoctorFinding[]> {
  const entries = entriesOf<DkimSignOptions>(policy, "dkim-sign")
    .flatMap((options) => options.keys)
    .filter((key) => key.domain === domain);
  // An inbound MX receives and need not sign; a gateway that signs for other domains should here too.
  if (entriesOf<DkimSignOptions>(policy, "dkim-sign").length === 0) {
    return [pass("dkim", domain, "the policy signs nothing (an inbound MX need not sign)")];
  }
  if (entries.length === 0) {
    return [
      problem(
        "dkim",
        domain,
        "warn",
        `the policy signs nothing for ${domain}`,
        `add a dkim-sign entry with a key for ${domain} (receivers expect DKIM, and DMARC needs it to survive forwarding)`,
      ),
    ];
  }
  return Promise.all(
    entries.map(async (entry): Promise<DoctorFinding> => {
      const name = `${entry.selector}._domainkey.${domain}`;
      let key: ReturnType<typeof createPrivateKey>;
      try {
        key = createPrivateKey((await loadKey(entry, policy.dir, ["rsa", "ed25519"])).pem);
      } catch (error) {
        return problem(
          "dkim",
          name,
          "fail",
          `cannot use the key file ${entry.key}: ${(error as Error).message}`,
          "point dkim-sign at a readable PEM private key (RSA or Ed25519)",
        );
      }
      const publish = `publish TXT ${name} "${dkimRecordFor(key)}"`;
      const txt = await settle(dns.resolveTxt(name));
      if (txt.kind === "error") return noAnswer("dkim", name, `TXT ${name}`, txt.code);
      // Receivers use the first record (mailauth does too), so that is the one that must match.
      const record = txt.kind === "answer" ? txt.value[0]?.join("") : undefined;
      if (record === undefined) return problem("dkim", name, "fail", `no DKIM key record at ${name}`, publish);
      const match = matchDkimKey(record, key);
      switch (match.kind) {
        case "match":
          return pass("dkim", name, `the record matches ${entry.key}`);
        case "mismatch":
          return problem(
            "dkim",
            name,
            "fail",
            `DKIM key mismatch: the record at ${name} is not the public half of ${entry.key}`,
            publish,
          );
        case "invalid":
          return problem("dkim", name, "fail", `the DKIM record at ${name} is unusable: ${match.reason}`, publish);
      }
    }),
  );
}

async function checkDmarc(dns: DnsResolver, domain: string): Promise<DoctorFinding[]> {
  const publish = `publish TXT _dmarc.${domain} "v=DMARC1; p=none; rua=mailto:dmarc-reports@${domain}" (then move to p=quarantine or p=reject)`;
  // mailauth finds the record that applies, falling back to the organizational domain's.
  const found = await dmarc({
    headerFrom: `postmaster@${domain}`,
    spfDomains: [],
    dkimDomains: [],
    resolver: mailauthResolver(dns),
  });
  const result = found ? String(found.status.result) : "none";
  if (!found || result === "none")
    return [problem("dmarc", domain, "fail", `${domain} publishes no DMARC record`, publish)];
  if (result === "temperror") return [noAnswer("dmarc", domain, `_dmarc.${domain}`, found.status.comment ?? result)];
  const at = found.domain && found.domain !== domain ? ` (inherited from ${found.domain})` : "";
  // More than one record at the name means none applies (RFC 7489 §6.6.3).
  const direct = await settle(dns.resolveTxt(`_dmarc.${found.domain ?? domain}`));
  const records = direct.kind === "answer" ? versionedRecords(direct.value, "DMARC1") : [];
  if (records.length > 1) {
    return [
      problem(
        "dmarc",
        domain,
        "fail",
        `_dmarc.${found.domain} holds ${records.length} DMARC records, so none applies`,
        "keep exactly one v=DMARC1 record",
      ),
    ];
  }
  const issues = dmarcProblems(found.rr ?? "");
  if (issues.length > 0) {
    return [problem("dmarc", domain, "fail", `the DMARC record${at} is malformed: ${issues.join("; ")}`, publish)];
  }
  return [pass("dmarc", domain, `${found.rr}${at}`)];
}

async function checkMtaSts(dns: DnsResolver, domain: string): Promise<DoctorFinding[]> {
  const name = `_mta-sts.${domain}`;
  const txt = await settle(dns.resolveTxt(name));
  if (txt.kind === "error") return [noAnswer("mta-sts", domain, `TXT ${name}`, txt.code)];
  const records = txt.kind === "answer" ? versionedRecords(txt.value, "STSv1") : [];
  if (records.length === 0) return [pass("mta-sts", domain, "not published (optional)")];
  if (parseMtaStsRecord(txt.kind === "answer" ? txt.value : []) === undefined) {
    return [
      problem(
        "mta-sts",
        domain,
        "fail",
        `the MTA-STS record at ${name} is malformed: ${records.join(" | ")}`,
        `publish exactly one TXT ${name} "v=STSv1; id=<1-32 letters or digits, changed with each policy>"`,
      ),
    ];
  }
  return [pass("mta-sts", domain, records[0])];
}

async function checkTlsRpt(dns: DnsResolver, domain: string): Promise<DoctorFinding[]> {
  const name = `_smtp._tls.${domain}`;
  const txt = await settle(dns.resolveTxt(name));
  if (txt.kind === "error") return [noAnswer("tls-rpt", domain, `TXT ${name}`, txt.code)];
  const records = txt.kind === "answer" ? versionedRecords(txt.value, "TLSRPTv1") : [];
  if (records.length === 0) return [pass("tls-rpt", domain, "not published (optional)")];
  const issues = records.length > 1 ? [`${records.length} records, so none applies`] : tlsRptProblems(records[0]);
  if (issues.length > 0) {
    return [
      problem(
        "tls-rpt",
        domain,
        "fail",
        `the TLS-RPT record at ${name} is malformed: ${issues.join("; ")}`,
        `publish exactly one TXT ${name} "v=TLSRPTv1; rua=mailto:tls-reports@${domain}"`,
      ),
    ];
  }
  return [pass("tls-rpt", domain, records[0])];
}

/** The text form: one line per finding, its fix indented below, then the counts. */
export function formatDoctorReport(report: DoctorReport): string {
  const lines = [
    `policy    ${report.policy}`,
    `identity  ${report.ip ?? "(no address)"} as ${report.hostname}`,
    `domains   ${report.domains.join(", ") || "-"}`,
    `zones     ${report.zones.join(", ") || "-"}`,
    "",
  ];
  const width = Math.max(...report.findings.map((f) => f.check.length));
  for (const finding of report.findings) {
    lines.push(
      `${finding.status.toUpperCase().padEnd(4)}  ${finding.check.padEnd(width)}  ${finding.subject}: ${finding.detail}`,
    );
    if (finding.fix) lines.push(`${"".padEnd(6 + width)}  fix: ${finding.fix}`);
  }
  const { summary } = report;
  lines.push("", `${summary.pass} pass, ${summary.warn} warn, ${summary.fail} fail`);
  return `${lines.join("\n")}\n`;
}

export const DOCTOR_USAGE =
  "portcullis doctor --policy FILE [--domain D…] [--ip IP] [--zone ZONE…] [--dns HOST:PORT] [--json]";

/** The address to check: --ip, else a route's sourceAddress, else what server.hostname resolves to. */
async function sendingIp(policy: LoadedPolicy, dns: DnsResolver): Promise<string | undefined> {
  const source = policy.config.routes.find((route) => route.sourceAddress)?.sourceAddress;
  if (source) return source;
  const { hostname } = policy.config.server;
  const v4 = await settle(dns.resolve4(hostname));
  if (v4.kind === "answer") return v4.value[0];
  const v6 = await settle(dns.resolve6(hostname));
  return v6.kind === "answer" ? v6.value[0] : undefined;
}

const DOCTOR_OPTIONS = {
  policy: { type: "string" },
  domain: { type: "string", multiple: true },
  ip: { type: "string" },
  zone: { type: "string", multiple: true },
  dns: { type: "string", multiple: true },
  json: { type: "boolean" },
} as const;

/** `portcullis doctor`: exit 0 when nothing fails, 1 when something does, 2 on bad usage. */
export async function doctorCommand(args: string[], stdout: Writable, stderr: Writable): Promise<number> {
  const usage = (message: string) => {
    stderr.write(`portcullis doctor: ${message}\nusage: ${DOCTOR_USAGE}\n`);
    return 2;
  };
  let values: ReturnType<typeof parseArgs<{ args: string[]; options: typeof DOCTOR_OPTIONS }>>["values"];
  try {
    values = parseArgs({ args, options: DOCTOR_OPTIONS }).values;
  } catch (error) {
    return usage((error as Error).message);
  }
  if (!values.policy) return usage("doctor needs --policy FILE");
  if (values.ip !== undefined && isIP(values.ip) === 0) return usage(`--ip ${values.ip} is not an IP address`);
  const domains = values.domain?.map((domain) => asciiDomain(domain));
  if (domains?.some((domain) => domain === undefined)) return usage("--domain needs domain names");
  const zones = values.zone?.map((zone) => asciiDomain(zone));
  if (zones?.some((zone) => zone === undefined)) return usage("--zone needs DNS zone names");
  const policy = await loadPolicy(values.policy);
  const { dns: settings } = policy.config;
  const dns = createResolver({
    servers: values.dns ?? settings.servers,
    timeoutMs: settings.timeout,
    cacheSize: settings.cacheSize,
  });
  const ip = values.ip ?? (await sendingIp(policy, dns)) ?? null;
  const report = await diagnose({
    policy,
    dns,
    ip,
    domains: domains as string[] | undefined,
    zones: zones as string[] | undefined,
  });
  stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatDoctorReport(report));
  return report.summary.fail > 0 ? 1 : 0;
}
