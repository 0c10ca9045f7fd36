/**
 * The dashboard in a real browser (Debian's chromium through playwright-core) over a real gateway:
 * known traffic over SMTP (3 accepted, 2 connections refused for a DNSBL listing answered by the
 * in-process DNS server, 1 relay denial, 1 message queued for a next hop that is down) shows up on
 * the overview without a reload (Server-Sent Events), in the decider rows, in a transaction's trace
 * (the shape `portcullis try --json` prints) and as the queue entry. Client-controlled text renders
 * as text; queue actions exist only when the policy enables them; credentials are asked for when
 * configured; 10,000 entries in the ring keep the pages usable. Screenshots go to
 * test-output/dashboard/ (the path is printed).
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { Page } from "playwright-core";
import { loadPolicy } from "../../app/catalogue.js";
import { checkPolicy } from "../../app/check.js";
import { policyRuntime, simulate } from "../../app/testkit.js";
import { tryReport } from "../../app/try.js";
import { DashboardListener } from "../../core/observability/dashboard/server.js";
import type { TransactionSummary } from "../../core/observability/observe.js";
import { hashPassword } from "../../core/smtp/auth/users.js";
import { startDnsServer, type TestDnsServer } from "../../core/testing/dns-server.js";
import { startBrowser, type TestBrowser } from "../fixtures/browser.js";
import { eventually } from "../fixtures/eventually.js";
import { startGateway, type TestGateway } from "../fixtures/gateway.js";
import { closedPort, type NextHop, startNextHop } from "../fixtures/next-hop.js";
import { sendAs } from "../fixtures/sender-auth.js";
import { closedConnections, tryMail } from "../plugins/connection-checks.js";

const CLEAN = "192.0.2.10";
/** Two clients of one network, both listed in bl.test. */
const LISTED = ["203.0.113.5", "203.0.113.6"];
/**
 * A HELO that runs script if it ever becomes markup (an empty `src` fires `onerror`). It has no
 * spaces because EHLO takes exactly one word: `<img src=x onerror=alert(1)>` gets 501 before the
 * gateway sees it.
 */
const HOSTILE_HELO = "<img/src/onerror=alert(1)>";
const HOSTILE_SUBJECT = "<script>alert(2)</script><img src=x onerror=alert(3)>";

const policy = (livePort: number, deadPort: number, dashboard: string) => `
version: 1
server: { hostname: mx.gateway.test, proxyProtocol: true }
dns: { timeout: 300ms }
relay: { domains: [example.test, dead.test] }
pipeline:
  - plugin: dnsbl
    zones: [{ zone: bl.test }]
rules:
  - { name: watch-helo, when: { helo: three.sender.test }, action: reject, mode: observe }
routes:
  - { match: { recipientDomain: dead.test }, to: "smtp://127.0.0.1:${deadPort}" }
  - { to: "smtp://127.0.0.1:${livePort}" }
delivery: { mode: queue, spool: ./spool, retry: { schedule: [1h], maxAge: 5d } }
observability:
  dashboard: ${dashboard}
shadow: ./candidate.yaml
`;

/** The shadow candidate: would refuse the message for the dead next hop. */
const candidate = `
version: 1
server: { hostname: mx.gateway.test }
relay: { domains: [example.test, dead.test] }
pipeline:
  - plugin: dnsbl
    zones: [{ zone: bl.test }]
rules:
  - { name: no-dead-hop, when: { recipient: user@dead.test }, action: reject }
routes: [{ to: discard }]
`;

const message = (subject: string) =>
  `From: a@sender.test\r\nTo: user@example.test\r\nSubject: ${subject}\r\nMessage-ID: <${Math.random()}@sender.test>\r\n\r\nHello\r\n`;

describe("the dashboard in a browser", () => {
  let dns: TestDnsServer;
  let hop: NextHop;
  let deadPort: number;
  let gw: TestGateway;
  let dashboard: DashboardListener;
  let browser: TestBrowser;
  let page: Page;
  const dialogs: string[] = [];
  let base: string;

  before(async () => {
    dns = await startDnsServer({
      ...Object.fromEntries(LISTED.map((ip) => [`${ip.split(".").reverse().join(".")}.bl.test`, { A: ["127.0.0.2"] }])),
    });
    hop = await startNextHop();
    deadPort = await closedPort();
    gw = await startGateway(policy(hop.port, deadPort, '{ listen: "127.0.0.1:0" }'), {
      dnsServers: [dns.address],
      files: { "candidate.yaml": candidate },
      countMetrics: false, // the dashboard alone must start the counts it shows
    });
    dashboard = new DashboardListener(gw.gateway);
    await dashboard.follow();
    base = `http://127.0.0.1:${dashboard.address!.port}`;
    browser = await startBrowser("dashboard");
    console.log(`dashboard screenshots: ${browser.screenshots}`);
    page = await browser.context.newPage();
    page.on("dialog", (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
  });
  after(async () => {
    await browser?.close();
    await dashboard?.close();
    await gw?.stop();
    await hop?.close();
    await dns?.close();
  });

  const shot = (name: string) => page.screenshot({ path: join(browser.screenshots, `${name}.png`), fullPage: true });
  const text = async (testid: string) => (await page.getByTestId(testid).first().textContent())?.trim();
  const open = async (hash: string, ready: string) => {
    await page.goto(`${base}/${hash}`);
    await page.getByTestId(ready).first().waitFor();
  };
  const queued = async () => {
    const list = (await (await fetch(`${base}/api/queue`)).json()) as {
      messages: Array<{ id: string; attempts: number }>;
    };
    return list.messages;
  };

  test("the overview counts the traffic live, the decider rows, a transaction's trace and the queue entry show it", async () => {
    await open("#/overview", "count-accepted");
    await eventually(async () => (await text("live")) === "live", "the event stream is open");
    assert.equal(await text("count-accepted"), "0");
    // Set before the traffic: still there afterwards means the page was never reloaded.
    await page.evaluate(() => {
      (globalThis as unknown as { unchanged: boolean }).unchanged = true;
    });

    for (const helo of ["one.sender.test", HOSTILE_HELO, "three.sender.test"]) {
      const replies = await sendAs(gw.port, CLEAN, {
        helo,
        from: "a@sender.test",
        to: ["user@example.test"],
        data: message("hello"),
      });
      assert.equal(replies.data?.code, 250);
    }
    for (const ip of LISTED) {
      const refused = await tryMail(gw.port, ip, { helo: "listed.sender.test", from: "l@listed.test" });
      assert.equal(refused.mail.code, 554);
    }
    const denied = await sendAs(gw.port, CLEAN, {
      from: "b@sender.test",
      to: ["x@elsewhere.test"],
      data: message("relay"),
    });
    assert.equal(denied.rcpts[0].code, 550);
    const toDeadHop = await sendAs(gw.port, CLEAN, {
      from: "a@sender.test",
      to: ["user@dead.test"],
      data: message(HOSTILE_SUBJECT),
    });
    assert.equal(toDeadHop.data?.code, 250);
    await closedConnections(gw, 7);
    await hop.waitForMessages(3);
    await eventually(async () => (await queued()).some((m) => m.attempts >= 1), "the dead next hop was tried");

    // Four accepted: the three delivered and the one queued for the dead next hop (250 is an acceptance).
    const counts = { "count-accepted": "4", "count-rejected": "1", "count-deferred": "0", "count-refused": "2" };
    await eventually(
      async () => (await text("count-refused")) === "2" && (await text("count-accepted")) === "4",
      "live counts",
    );
    for (const [testid, expected] of Object.entries(counts)) assert.equal(await text(testid), expected, testid);
    assert.equal(await page.evaluate(() => (globalThis as unknown as { unchanged?: boolean }).unchanged), true);
    // The queue size is read with the counts; the next update may come before the delivery attempt.
    await page.reload();
    await page.getByTestId("queue-size").waitFor();
    assert.equal(await text("queue-size"), "1");
    assert.equal(await text("redis"), "not used");
    assert.match((await text("policy-file")) ?? "", /policy\.yaml$/);
    assert.equal(await text("policy-hash"), gw.gateway.runtime.policy.hash);
    assert.equal((await page.locator("#chart canvas").count()) > 0, true, "uPlot drew the chart");
    await shot("overview");

    await open("#/decisions", "deciders");
    const rows = async (testid: string) =>
      page
        .getByTestId(testid)
        .locator("tbody tr")
        .evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
    assert.deepEqual(await rows("deciders"), [
      ["plugin:dnsbl", "2"],
      ["core:relay-access", "1"],
    ]);
    assert.deepEqual(await rows("networks"), [
      ["203.0.113.0/24", "2"],
      ["192.0.2.0/24", "1"],
    ]);
    assert.deepEqual(await rows("zones"), [["bl.test", "2"]]);
    assert.deepEqual(
      (await rows("sender-domains")).map((row) => row.slice(0, 2)),
      [["sender.test", "5"]],
    );
    await shot("decisions");

    // A decider row links to the transactions it decided.
    await page.getByTestId("deciders").getByRole("link", { name: "plugin:dnsbl" }).click();
    await page.getByTestId("matching").waitFor();
    assert.equal(await text("matching"), "2 matching of 7 kept");
    await shot("transactions-dnsbl");

    // The refused connection's trace: the DNSBL hook with its finding, as try --json shows it.
    await page.getByTestId("transaction-row").first().getByRole("link").click();
    await page.getByTestId("trace").waitFor();
    assert.equal(await text("detail-decided by"), "plugin:dnsbl");
    const steps = await page
      .getByTestId("step")
      .evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
    const dnsbl = steps.find((cells) => cells[1] === "dnsbl");
    assert.ok(dnsbl, `a dnsbl step in ${JSON.stringify(steps)}`);
    assert.equal(dnsbl[0], "connect");
    assert.match(dnsbl[5] ?? "", /"zone": "bl\.test"/);
    await shot("transaction-refused");

    // The relay denial's steps are the ones `try` reports for the same input (durations aside).
    const list = (await (await fetch(`${base}/api/transactions?decider=core:relay-access`)).json()) as {
      rows: Array<{ seq: number }>;
    };
    const detail = (await (await fetch(`${base}/api/transactions/${list.rows[0].seq}`)).json()) as {
      steps: Array<{ ms: number }>;
      otherFindings: unknown;
    };
    const runtime = await policyRuntime(gw.gateway.runtime.policy, { dnsServers: [dns.address] });
    const input = {
      ip: CLEAN,
      helo: "client.test",
      from: "b@sender.test",
      to: ["x@elsewhere.test"],
      role: "mx" as const,
    };
    const simulated = tryReport(runtime, input, await simulate(runtime, input));
    await runtime.services.state.close();
    const withoutTimes = (steps: ReadonlyArray<{ ms: number }>) => steps.map(({ ms: _ms, ...step }) => step);
    assert.deepEqual(withoutTimes(detail.steps), withoutTimes(simulated.steps));
    assert.deepEqual(detail.otherFindings, simulated.otherFindings);

    const [entry] = await queued();
    await open("#/queue", "queue-row");
    assert.equal(await page.getByTestId("queue-row").count(), 1);
    await shot("queue");
    await page.getByTestId("queue-row").getByRole("link", { name: entry.id }).click();
    await page.getByTestId("recipients").waitFor();
    const recipient = await page
      .getByTestId("recipient")
      .evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
    assert.equal(recipient.length, 1);
    assert.equal(recipient[0][0], "user@dead.test");
    assert.equal(recipient[0][1], `smtp://127.0.0.1:${deadPort}`);
    assert.equal(recipient[0][2], "pending");
    assert.match(recipient[0][3] ?? "", /^4\d\d /, "the dead next hop's failure is the last reply");
    assert.equal(await text("message-attempts"), "1");
    await shot("queue-entry");

    // The observe-mode rule matched once (one HELO), the shadow would have refused the dead hop's message.
    await open("#/policy", "pipeline");
    assert.equal(await text("last-reload"), "none since start");
    const observed = await rows("observed");
    assert.deepEqual(
      observed.map((cells) => [cells[0], cells[2]]),
      [["watch-helo", "1"]],
    );
    // One transaction, two differences: its outcome, and its recipient by the rule that refuses it.
    assert.deepEqual((await rows("shadow")).sort(), [
      ["(none)", "accepted", "rejected", "1"],
      ["no-dead-hop", "recipient-accepted", "recipient-rejected", "1"],
    ]);
    await shot("policy");
  });

  test("a crafted HELO and Subject render as text: no dialog, no injected element", async () => {
    await open(`#/transactions?${new URLSearchParams({ client: CLEAN })}`, "transaction-row");
    const helos = await page.getByTestId("helo").allTextContents();
    assert.ok(helos.includes(HOSTILE_HELO), `the HELO shown as sent: ${JSON.stringify(helos)}`);
    const [entry] = await queued();
    await open(`#/queue/${entry.id}`, "headers");
    assert.ok((await text("headers"))?.includes(`Subject: ${HOSTILE_SUBJECT}`));
    await shot("hostile-text");
    // Markup a client sent would be an element inside main: there is none of these kinds at all.
    assert.equal(await page.locator("main img, main script, main iframe").count(), 0);
    assert.deepEqual(dialogs, []);

    const response = await fetch(`${base}/`);
    const csp = response.headers.get("content-security-policy") ?? "";
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(response.headers.get("x-content-type-options"), "nosniff");
    assert.equal((await fetch(`${base}/api/overview`)).headers.get("cache-control"), "no-store");
  });

  test("queue actions the policy does not enable: no buttons, and the endpoints answer 403", async () => {
    const [entry] = await queued();
    await open(`#/queue/${entry.id}`, "recipients");
    assert.equal(await page.getByTestId("actions").locator("button").count(), 0);
    for (const action of ["flush", "delete", "bounce"]) {
      const response = await fetch(`${base}/api/queue/${entry.id}/${action}`, {
        method: "POST",
        headers: { "x-portcullis-dashboard": "1" },
      });
      assert.equal(response.status, 403, action);
    }
    assert.equal((await queued()).length, 1, "nothing was done");
  });

  test("with a users file: no credentials get 401; an enabled action works and is logged with who did it", async () => {
    const users = `operator:${await hashPassword("open sesame", { N: 1024, r: 8, p: 1 })}\n`;
    await writeFile(join(gw.dir, "dashboard-users"), users);
    await writeFile(
      join(gw.dir, "policy.yaml"),
      policy(
        hop.port,
        deadPort,
        '{ listen: "127.0.0.1:0", auth: { users: ./dashboard-users }, queueActions: [flush, delete] }',
      ),
    );
    await gw.gateway.reload(await loadPolicy(join(gw.dir, "policy.yaml")));
    assert.match((await dashboard.follow()) ?? "", /^listening on /);
    base = `http://127.0.0.1:${dashboard.address!.port}`;

    for (const path of ["/", "/api/overview", "/api/queue"]) {
      const anonymous = await fetch(`${base}${path}`);
      assert.equal(anonymous.status, 401, path);
      assert.match(anonymous.headers.get("www-authenticate") ?? "", /^Basic /);
    }
    const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
    assert.equal(
      (await fetch(`${base}/api/overview`, { headers: { authorization: basic("operator", "wrong") } })).status,
      401,
    );

    await page.setExtraHTTPHeaders({ authorization: basic("operator", "open sesame") });
    const [entry] = await queued().catch(() => [] as Array<{ id: string }>);
    assert.equal(entry, undefined, "the list itself needs credentials");
    const list = (await (
      await fetch(`${base}/api/queue`, { headers: { authorization: basic("operator", "open sesame") } })
    ).json()) as { messages: Array<{ id: string }> };
    const id = list.messages[0].id;
    await open(`#/queue/${id}`, "recipients");
    const buttons = await page.getByTestId("actions").locator("button").allTextContents();
    assert.deepEqual(buttons, ["flush", "delete"]);
    const bounce = await fetch(`${base}/api/queue/${id}/bounce`, {
      method: "POST",
      headers: { authorization: basic("operator", "open sesame"), "x-portcullis-dashboard": "1" },
    });
    assert.equal(bounce.status, 403, "bounce is not enabled");
    const forged = await fetch(`${base}/api/queue/${id}/delete`, {
      method: "POST",
      headers: { authorization: basic("operator", "open sesame") },
    });
    assert.equal(forged.status, 403, "an action without the dashboard's header (a cross-site form) is refused");

    await page.getByRole("button", { name: "delete" }).click();
    await eventually(async () => (await text("action-result")) === "delete: done", "the delete answered");
    await shot("queue-action");
    assert.equal(gw.gateway.queue.spool?.entries().length, 0);
    const logged = gw.logs.filter((line) => line.event === "dashboard-action");
    assert.deepEqual(
      logged.map(({ action, id: what, by, ok }) => ({ action, id: what, by, ok })),
      [{ action: "delete", id, by: "operator", ok: true }],
    );

    await open("#/policy", "pipeline");
    assert.match((await text("last-reload")) ?? "", /^applied at /);
  });

  test("with 10,000 entries in the ring the list pages and filters", async () => {
    const activity = gw.gateway.activity!;
    assert.equal(activity.capacity, 10_000);
    for (let i = 0; i < 10_000; i++) activity.transaction(bulkSummary(i), {});
    await open("#/transactions", "matching");
    assert.equal(await text("matching"), "10000 matching of 10000 kept");
    assert.equal(await page.getByTestId("transaction-row").count(), 50);

    await page.locator("form.filters input[name=sender]").fill("@bulk7.test");
    await page.locator("form.filters select[name=outcome]").selectOption("rejected");
    await page.getByRole("button", { name: "Filter" }).click();
    await eventually(async () => (await text("matching")) === "50 matching of 10000 kept", "the filtered list");
    const senders = await page
      .getByTestId("transaction-row")
      .evaluateAll((trs) => trs.map((tr) => tr.querySelectorAll("td")[3].textContent));
    assert.equal(senders.length, 50);
    assert.ok(senders.every((sender) => sender?.endsWith("@bulk7.test")));
    await shot("bulk-filtered");

    await page.locator("form.filters select[name=outcome]").selectOption("");
    await page.getByRole("button", { name: "Filter" }).click();
    await eventually(async () => (await text("matching")) === "100 matching of 10000 kept", "the wider filter");
    await page.getByTestId("older").click();
    await eventually(async () => (await page.getByTestId("older").count()) === 0, "the second page");
    assert.equal(await page.getByTestId("transaction-row").count(), 50);
    await open("#/decisions", "sender-domains");
    assert.equal(await page.getByTestId("sender-domains").locator("tbody tr").count(), 10);
  });
});

/** A transaction summary as the session writes it, for the 10,000-entry ring. */
function bulkSummary(i: number): TransactionSummary {
  const rejected = i % 2 === 1;
  return {
    event: "transaction",
    client: { ip: `198.51.100.${i % 250}`, name: null },
    helo: `bulk${i}.test`,
    tls: null,
    from: `s${i}@bulk${Math.floor(i / 100)}.test`,
    to: rejected ? [] : ["user@example.test"],
    rejectedRecipients: rejected ? [{ to: "x@elsewhere.test", reply: "550 5.7.1 Relay access denied" }] : [],
    size: rejected ? null : 100,
    outcome: rejected ? "rejected" : "accepted",
    reply: rejected ? "550 5.7.1 Relay access denied" : "250 2.0.0 Ok: queued",
    decidedBy: rejected ? "core:relay-access" : null,
    route: null,
    nextHops: rejected ? [] : ["queue"],
    delivery: [],
    score: 0,
    trace: [],
    ms: 1,
  };
}

test("portcullis check: a dashboard on a non-loopback address without auth fails, located; with auth it passes", async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-dashboard-check-"));
  const file = join(dir, "policy.yaml");
  const text = (dashboard: string) =>
    `version: 1\nserver: { hostname: mx.gateway.test }\nrelay: { domains: [example.test] }\nobservability:\n  dashboard: ${dashboard}\n`;
  await writeFile(file, text('{ listen: "0.0.0.0:9465" }'));
  const refused = await checkPolicy(file).catch((error: Error) => ({ code: 1, lines: error.message.split("\n") }));
  assert.equal(refused.code, 1);
  assert.ok(
    refused.lines.some((line) =>
      line.startsWith(`${file}:5:24 observability.dashboard.listen: 0.0.0.0:9465 is reachable from other hosts`),
    ),
    refused.lines.join("\n"),
  );
  await writeFile(file, text('{ listen: "0.0.0.0:9465", auth: { users: ./dashboard-users } }'));
  const passed = await checkPolicy(file);
  assert.equal(passed.code, 0, passed.lines.join("\n"));
  await rm(dir, { recursive: true, force: true });
});
