/**
 * `portcullis doctor` against an in-process DNS server: a correct record set passes everything;
 * each broken record fails its own check, with its fix line, and nothing else fails. Then the
 * record parsers by table, and the CLI's exit codes and text form.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createPrivateKey, generateKeyPairSync } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type DoctorFinding, type DoctorReport, doctorCommand } from "../../app/doctor/doctor.js";
import { dkimRecordFor, dmarcProblems, matchDkimKey, parseTags, tlsRptProblems } from "../../app/doctor/records.js";
import { startDnsServer, type ZoneData } from "../../core/testing/dns-server.js";
import { generateKey } from "../fixtures/keys.js";

const IP = "203.0.113.25";
const PTR_NAME = "25.113.0.203.in-addr.arpa";
const signing = generateKey("rsa");
const other = generateKey("rsa");

const POLICY = `
version: 1
server: { hostname: mail.example.test }
relay: { domains: [example.test] }
pipeline:
  - plugin: dnsbl
    zones: [{ zone: wl.test, allow: true }, { zone: bl.test }]
  - plugin: dkim-sign
    keys: [{ domain: example.test, selector: sel1, key: dkim.pem }]
`;

/** Everything a small mail server at 203.0.113.25 should publish. */
const CORRECT: ZoneData = {
  [PTR_NAME]: { PTR: ["mail.example.test"] },
  "mail.example.test": { A: [IP] },
  "example.test": {
    MX: [{ priority: 10, exchange: "mail.example.test" }],
    TXT: [`v=spf1 ip4:${IP} -all`],
  },
  "sel1._domainkey.example.test": { TXT: [signing.txt] },
  "_dmarc.example.test": { TXT: ["v=DMARC1; p=reject; rua=mailto:dmarc@example.test"] },
  "_mta-sts.example.test": { TXT: ["v=STSv1; id=20250101T000000"] },
  "_smtp._tls.example.test": { TXT: ["v=TLSRPTv1; rua=mailto:tls-reports@example.test"] },
};

const ELEVEN_INCLUDES: ZoneData = Object.fromEntries(
  Array.from({ length: 11 }, (_, i) => [`spf${i}.example.test`, { TXT: ["v=spf1 -all"] }]),
);

let dir: string;
let policyFile: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-doctor-"));
  policyFile = join(dir, "policy.yaml");
  await writeFile(policyFile, POLICY);
  await writeFile(join(dir, "dkim.pem"), signing.privateKey);
});
after(() => rm(dir, { recursive: true, force: true }));

function collector() {
  let text = "";
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      text += chunk;
      callback();
    },
  });
  return { stream, text: () => text };
}

/** Runs doctor in-process against a DNS server holding `zone`; returns the exit code and the --json report. */
async function doctor(zone: ZoneData, extra: string[] = []): Promise<{ code: number; report: DoctorReport }> {
  const dns = await startDnsServer(zone);
  try {
    const out = collector();
    const err = collector();
    const code = await doctorCommand(
      ["--policy", policyFile, "--ip", IP, "--domain", "example.test", "--dns", dns.address, "--json", ...extra],
      out.stream,
      err.stream,
    );
    assert.equal(err.text(), "");
    return { code, report: JSON.parse(out.text()) as DoctorReport };
  } finally {
    await dns.close();
  }
}

const failing = (report: DoctorReport) => report.findings.filter((f) => f.status === "fail");

describe("doctor", () => {
  it("passes every check of a correct record set, and exits 0", async () => {
    const { code, report } = await doctor(CORRECT);
    assert.equal(code, 0);
    assert.deepEqual(
      report.findings.map((f) => [f.check, f.subject, f.status]),
      [
        ["ptr", IP, "pass"],
        ["fcrdns", IP, "pass"],
        ["ptr-generic", IP, "pass"],
        ["helo", "mail.example.test", "pass"],
        ["dnsbl", "bl.test", "pass"],
        ["dnsbl", "wl.test", "pass"],
        ["mx", "example.test", "pass"],
        ["spf", "example.test", "pass"],
        ["spf-lookups", "example.test", "pass"],
        ["dkim", "sel1._domainkey.example.test", "pass"],
        ["dmarc", "example.test", "pass"],
        ["mta-sts", "example.test", "pass"],
        ["tls-rpt", "example.test", "pass"],
      ],
    );
    assert.ok(report.findings.every((f) => f.fix === null));
    assert.deepEqual(report.summary, { pass: 13, warn: 0, fail: 0 });
    assert.equal(report.ip, IP);
    assert.equal(report.hostname, "mail.example.test");
    assert.deepEqual(report.zones, ["bl.test"]);
  });

  const broken: Array<{ name: string; zone: ZoneData; check: DoctorFinding["check"]; detail: RegExp; fix: RegExp }> = [
    {
      name: "no PTR",
      zone: { [PTR_NAME]: "nxdomain" },
      check: "ptr",
      detail: /has no PTR record/,
      fix: /ask whoever holds 203\.0\.113\.25 .* PTR record to mail\.example\.test/,
    },
    {
      name: "PTR mismatch",
      zone: { [PTR_NAME]: { PTR: ["other.example.test"] }, "other.example.test": { A: ["198.51.100.7"] } },
      check: "fcrdns",
      detail: /PTR mismatch: other\.example\.test does not resolve to 203\.0\.113\.25/,
      fix: /publish A other\.example\.test → 203\.0\.113\.25/,
    },
    {
      name: "generic PTR",
      zone: { [PTR_NAME]: { PTR: ["203-0-113-25.dyn.isp.test"] }, "203-0-113-25.dyn.isp.test": { A: [IP] } },
      check: "ptr-generic",
      detail: /203-0-113-25\.dyn\.isp\.test looks generic or dynamic/,
      fix: /a name of its own/,
    },
    {
      name: "listed IP",
      zone: { "25.113.0.203.bl.test": { A: ["127.0.0.2"], TXT: ["listed: spam trap hits"] } },
      check: "dnsbl",
      detail: /203\.0\.113\.25 is listed by bl\.test \(127\.0\.0\.2\): listed: spam trap hits/,
      fix: /request removal from bl\.test's operator/,
    },
    {
      name: "SPF missing the IP",
      zone: {
        "example.test": {
          MX: [{ priority: 10, exchange: "mail.example.test" }],
          TXT: ["v=spf1 ip4:198.51.100.0/24 -all"],
        },
      },
      check: "spf",
      detail: /SPF of example\.test gives fail for 203\.0\.113\.25/,
      fix: /add ip4:203\.0\.113\.25 to the SPF record of example\.test/,
    },
    {
      name: "SPF over 10 lookups",
      zone: {
        ...ELEVEN_INCLUDES,
        "example.test": {
          MX: [{ priority: 10, exchange: "mail.example.test" }],
          TXT: [
            `v=spf1 ip4:${IP} ${Object.keys(ELEVEN_INCLUDES)
              .map((name) => `include:${name}`)
              .join(" ")} -all`,
          ],
        },
      },
      check: "spf-lookups",
      detail: /needs more than 10 DNS lookups/,
      fix: /flatten the record/,
    },
    {
      name: "DKIM key mismatch",
      zone: { "sel1._domainkey.example.test": { TXT: [other.txt] } },
      check: "dkim",
      detail: /DKIM key mismatch: the record at sel1\._domainkey\.example\.test is not the public half of dkim\.pem/,
      fix: new RegExp(`publish TXT sel1\\._domainkey\\.example\\.test "${signing.txt.replace(/[+/]/g, "\\$&")}"`),
    },
    {
      name: "no DMARC",
      zone: { "_dmarc.example.test": "nxdomain" },
      check: "dmarc",
      detail: /example\.test publishes no DMARC record/,
      fix: /publish TXT _dmarc\.example\.test "v=DMARC1; p=none; rua=mailto:/,
    },
  ];

  it("warns about every configured zone that refuses the gateway's resolver, through that resolver", async () => {
    // How Spamhaus answers a public resolver: 127.255.255.254 for every name, the test point included.
    const refusing = { A: ["127.255.255.254"] };
    const { code, report } = await doctor({ ...CORRECT, "*.bl.test": refusing, "*.wl.test": refusing });
    assert.equal(code, 0);
    assert.deepEqual(
      report.findings.filter((f) => f.check === "dnsbl").map((f) => [f.subject, f.status, f.detail, f.fix]),
      ["bl.test", "wl.test"].map((zone) => [
        zone,
        "warn",
        `your resolver is refused by ${zone}: its test point 127.0.0.1 answers in 127.255.255.0/24, so the gateway ignores the zone`,
        "use your own recursive resolver in dns.servers (not a public one such as 8.8.8.8), or drop the zone",
      ]),
    );
  });

  it("checks an inbound MX without --ip or signing keys: the address checks are skipped with a warning, exit 0", async () => {
    const mxPolicy = join(dir, "mx.yaml");
    await writeFile(
      mxPolicy,
      ["version: 1", "server: { hostname: mx.example.test }", "relay: { domains: [example.test] }"].join("\n"),
    );
    const dns = await startDnsServer(CORRECT);
    try {
      const out = collector();
      const err = collector();
      const args = ["--policy", mxPolicy, "--dns", dns.address, "--json"];
      const code = await doctorCommand(args, out.stream, err.stream);
      assert.equal(err.text(), "");
      assert.equal(code, 0);
      const report = JSON.parse(out.text()) as DoctorReport;
      assert.equal(report.ip, null);
      const byCheck = new Map(report.findings.map((f) => [f.check, f]));
      assert.equal(byCheck.get("ip")?.status, "warn");
      assert.match(byCheck.get("ip")?.fix ?? "", /give --ip IP/);
      assert.equal(byCheck.get("dkim")?.status, "pass");
      assert.equal(byCheck.get("dkim")?.detail, "the policy signs nothing (an inbound MX need not sign)");
      assert.equal(byCheck.has("spf"), false);
    } finally {
      await dns.close();
    }
  });

  for (const { name, zone, check, detail, fix } of broken) {
    it(`fails ${check} alone, with its fix, on ${name}`, async () => {
      const { code, report } = await doctor({ ...CORRECT, ...zone });
      assert.equal(code, 1);
      const fails = failing(report);
      assert.deepEqual(
        fails.map((f) => f.check),
        [check],
        JSON.stringify(fails),
      );
      assert.match(fails[0].detail, detail);
      assert.match(fails[0].fix ?? "", fix);
    });
  }

  it("checks the zones given with --zone instead of the policy's", async () => {
    const { report } = await doctor({ ...CORRECT, "25.113.0.203.other-bl.test": { A: ["127.0.0.4"] } }, [
      "--zone",
      "other-bl.test",
    ]);
    assert.deepEqual(report.zones, ["other-bl.test"]);
    assert.deepEqual(
      failing(report).map((f) => [f.check, f.subject]),
      [["dnsbl", "other-bl.test"]],
    );
  });

  it("warns, without failing, when the DNS does not answer", async () => {
    const { code, report } = await doctor({ ...CORRECT, "_dmarc.example.test": "servfail" });
    assert.equal(code, 0);
    const dmarc = report.findings.find((f) => f.check === "dmarc")!;
    assert.equal(dmarc.status, "warn");
    assert.match(dmarc.fix ?? "", /DNS servers/);
  });

  it("fails malformed DMARC, MTA-STS and TLS-RPT records", async () => {
    const { report } = await doctor({
      ...CORRECT,
      "_dmarc.example.test": { TXT: ["v=DMARC1; p=block; pct=150"] },
      "_mta-sts.example.test": { TXT: ["v=STSv1; id=not valid!"] },
      "_smtp._tls.example.test": { TXT: ["v=TLSRPTv1; rua=ftp://x.test"] },
    });
    assert.deepEqual(
      failing(report).map((f) => [f.check, f.detail]),
      [
        ["dmarc", "the DMARC record is malformed: p=block is not none, quarantine or reject; pct=150 is not 0-100"],
        ["mta-sts", "the MTA-STS record at _mta-sts.example.test is malformed: v=STSv1; id=not valid!"],
        [
          "tls-rpt",
          "the TLS-RPT record at _smtp._tls.example.test is malformed: rua= must list mailto: or https: URIs",
        ],
      ],
    );
  });

  it("prints text with a fix line under each problem and exits 1 through the CLI", () => {
    const root = fileURLToPath(new URL("../..", import.meta.url));
    // Nothing listens on this port, so every lookup fails at once: warnings only, exit 0.
    const quiet = spawnSync(
      process.execPath,
      [join(root, "bin/portcullis.js"), "doctor", "--policy", policyFile, "--ip", IP, "--dns", "127.0.0.1:9"],
      { cwd: root, encoding: "utf8" },
    );
    assert.equal(quiet.status, 0, quiet.stderr);
    assert.match(
      quiet.stdout,
      /^WARN {2}ptr +203\.0\.113\.25: the lookup of the PTR record of 203\.0\.113\.25 failed/m,
    );
    assert.match(quiet.stdout, /^ +fix: check that the DNS servers/m);
    assert.match(quiet.stdout, /\n0 pass, \d+ warn, 0 fail\n$/);
    const usage = spawnSync(process.execPath, [join(root, "bin/portcullis.js"), "doctor"], {
      cwd: root,
      encoding: "utf8",
    });
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /doctor needs --policy FILE/);
  });
});

describe("doctor record checks", () => {
  it("parses tag lists", () => {
    assert.deepEqual(parseTags("v=DMARC1; p=reject;"), [
      ["v", "DMARC1"],
      ["p", "reject"],
    ]);
    assert.equal(parseTags("v=DMARC1; garbage"), undefined);
  });

  it("finds what is wrong with a DMARC record", () => {
    const table: Array<[string, string[]]> = [
      ["v=DMARC1; p=none", []],
      ["v=DMARC1; p=quarantine; sp=reject; pct=50; adkim=s; aspf=r; rua=mailto:a@x.test,mailto:b@y.test; fo=1:d", []],
      ["p=reject; v=DMARC1", ['it must start with "v=DMARC1"']],
      ["v=DMARC1; rua=mailto:a@x.test", ["p= (none, quarantine or reject) is missing"]],
      [
        "v=DMARC1; p=reject; adkim=x; rua=a@x.test",
        ["adkim=x is not r or s", "rua= must be a comma-separated list of URIs such as mailto:dmarc@example.org"],
      ],
      ["v=DMARC1 p=reject", ['it must start with "v=DMARC1"', "p= (none, quarantine or reject) is missing"]],
      ["v=DMARC1; p reject", ["it is not a list of tag=value pairs separated by semicolons"]],
    ];
    for (const [record, problems] of table) assert.deepEqual(dmarcProblems(record), problems, record);
  });

  it("finds what is wrong with a TLS-RPT record", () => {
    assert.deepEqual(tlsRptProblems("v=TLSRPTv1; rua=mailto:t@x.test,https://r.x.test/report"), []);
    assert.deepEqual(tlsRptProblems("v=TLSRPTv1"), ["rua= is missing"]);
  });

  it("matches DKIM key records against key files", () => {
    const rsa = createPrivateKey(signing.privateKey);
    assert.equal(dkimRecordFor(rsa), signing.txt);
    assert.deepEqual(matchDkimKey(signing.txt, rsa), { kind: "match" });
    assert.deepEqual(matchDkimKey(other.txt, rsa), { kind: "mismatch" });
    // Some tools publish the bare RSAPublicKey instead of SubjectPublicKeyInfo.
    const publicPkcs1 = generateKeyPairSync("rsa", { modulusLength: 1024 });
    assert.deepEqual(
      matchDkimKey(
        `v=DKIM1; k=rsa; p=${publicPkcs1.publicKey.export({ type: "pkcs1", format: "der" }).toString("base64")}`,
        publicPkcs1.privateKey,
      ),
      { kind: "match" },
    );
    assert.deepEqual(matchDkimKey("v=DKIM1; k=rsa; p=", rsa), {
      kind: "invalid",
      reason: "p= is empty: the key is revoked",
    });
    const ed = generateKey("ed25519");
    const edKey = createPrivateKey(ed.privateKey);
    assert.equal(dkimRecordFor(edKey), ed.txt);
    assert.deepEqual(matchDkimKey(ed.txt, edKey), { kind: "match" });
    assert.deepEqual(matchDkimKey(signing.txt, edKey), {
      kind: "invalid",
      reason: "k=rsa, but the key file holds an ed25519 key",
    });
  });
});
