/**
 * The RFC 7208 test suite (openspf.org, release 2014.04, as pyspf ships it: data/rfc7208-tests.yml,
 * license in data/rfc7208-tests.LICENSE) run through the spf plugin's evaluation
 * (plugins/spf/evaluate.ts: the question the plugin asks, through its replay memo) against the
 * in-process DNS server over real UDP. Each scenario's zone is served as the suite's drivers serve
 * it: type SPF records are published as TXT unless the name has TXT records of its own (`TXT: NONE`
 * means none), and TIMEOUT makes every type the name does not list go unanswered.
 * Explanations (`exp=`) are optional in the suite and not fetched by us, so they are not compared.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { parseAllDocuments } from "yaml";
import { createResolver, type DnsResolver, type RRType } from "../../core/dns/resolver.js";
import { type RecordData, startDnsServer, type TestDnsServer, type ZoneData } from "../../core/testing/dns-server.js";
import { spfEvaluator } from "../../plugins/spf/evaluate.js";

interface SuiteTest {
  readonly spec: string | number;
  readonly helo: string;
  readonly host: string;
  readonly mailfrom: string;
  readonly result: string | string[];
}

interface Scenario {
  readonly description: string;
  readonly tests: Record<string, SuiteTest>;
  readonly zonedata: Record<string, Array<string | Record<string, unknown>>>;
}

const suite = parseAllDocuments(readFileSync(new URL("data/rfc7208-tests.yml", import.meta.url), "utf8")).map(
  (document) => document.toJS() as Scenario,
);

/** Types a TIMEOUT name leaves unanswered when it does not list them. */
const ANSWERED_TYPES: readonly RRType[] = ["A", "AAAA", "MX", "TXT", "PTR", "CNAME"];

function zoneOf(scenario: Scenario): ZoneData {
  const zone: ZoneData = {};
  for (const [name, entries] of Object.entries(scenario.zonedata)) {
    const records: Partial<Record<RRType, RecordData[]>> = {};
    const add = (type: RRType, data: RecordData) => {
      records[type] = [...(records[type] ?? []), data];
    };
    const spf: RecordData[] = [];
    let txtNone = false;
    let timeout = false;
    for (const entry of entries) {
      if (entry === "TIMEOUT") {
        timeout = true;
        continue;
      }
      const [[type, value]] = Object.entries(entry as Record<string, unknown>);
      if (type === "SPF") spf.push(value as RecordData);
      else if (type === "TXT" && value === "NONE") txtNone = true;
      else if (type === "MX") {
        const [priority, exchange] = value as [number, string];
        add("MX", { priority, exchange });
      } else add(type as RRType, value as RecordData);
    }
    if (!records.TXT && !txtNone && spf.length > 0) records.TXT = spf;
    const entry: Partial<Record<RRType, RecordData[] | "timeout">> = { ...records };
    if (timeout) for (const type of ANSWERED_TYPES) if (!records[type]) entry[type] = "timeout";
    zone[name] = entry;
  }
  return zone;
}

for (const scenario of suite) {
  describe(`RFC 7208 test suite: ${scenario.description}`, () => {
    let server: TestDnsServer;
    let dns: DnsResolver;

    before(async () => {
      server = await startDnsServer(zoneOf(scenario));
      // Short: a TIMEOUT in the suite is meant to time out, and every lookup would wait this long.
      dns = createResolver({ servers: [server.address], timeoutMs: 300 });
    });
    after(() => server.close());

    for (const [name, input] of Object.entries(scenario.tests)) {
      const accepted = Array.isArray(input.result) ? input.result : [input.result];
      test(`RFC 7208 §${input.spec}: ${name} → ${accepted.join(" or ")}`, async () => {
        const checked = await spfEvaluator().check(
          {
            ip: input.host,
            helo: input.helo,
            sender: input.mailfrom === "" ? undefined : input.mailfrom,
            mta: "gateway.test",
            maxLookups: 10,
            maxVoidLookups: 2,
          },
          dns,
        );
        const result = String(checked.status.result);
        assert.ok(accepted.includes(result), `${name}: ${result} (${checked.status.comment ?? ""})`);
      });
    }
  });
}
