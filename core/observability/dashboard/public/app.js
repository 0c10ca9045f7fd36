// The dashboard's client: one page per hash route (#/overview, #/decisions, #/transactions,
// #/transactions/SEQ, #/queue, #/queue/ID, #/policy), drawn from the JSON API of server.ts.
// Every value reaches the page through text nodes (`h` below): HELO names, addresses and header
// values are whatever an SMTP client sent, and must never become markup.

const main = document.getElementById("main");
const live = document.getElementById("live");

/** An element with attributes and children; strings and numbers become text nodes, never HTML. */
function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "href" && !String(value).startsWith("#")) throw new Error("links stay inside the dashboard");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** A link to the transactions list filtered by `filter`. */
function filtered(filter, text) {
  return h("a", { href: `#/transactions?${new URLSearchParams(filter)}` }, text);
}

function table(headings, rows, testid) {
  return h(
    "table",
    { "data-testid": testid },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        headings.map((title) => h("th", {}, title)),
      ),
    ),
    h("tbody", {}, rows.length === 0 ? h("tr", {}, h("td", { colspan: headings.length }, "nothing yet")) : rows),
  );
}

function card(label, value, testid) {
  return h(
    "div",
    { class: "card" },
    h("div", { class: "value", "data-testid": testid }, value),
    h("div", { class: "label" }, label),
  );
}

const time = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const json = (value) => h("pre", {}, JSON.stringify(value, null, 2));

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json();
  if (!response.ok && response.status !== 404) throw new Error(body.error ?? `HTTP ${response.status}`);
  return body;
}

function checkText(check) {
  if (!check) return h("span", {}, "not used");
  return check.ok ? h("span", { class: "good" }, "ok") : h("span", { class: "bad" }, `failing: ${check.detail ?? ""}`);
}

// ---- pages ---------------------------------------------------------------------------------

let chart = null;

async function overviewPage() {
  const data = await api("/api/overview");
  const { totals, queue, health, policy } = data;
  const dnsErrors = Object.entries(health.dns.errors)
    .map(([code, count]) => `${code} ${count}`)
    .join(", ");
  const chartBox = h("div", { id: "chart", "data-testid": "chart" });
  const page = [
    h("h2", {}, "Last hour"),
    h(
      "div",
      { class: "cards" },
      card("accepted", totals.accepted, "count-accepted"),
      card("rejected", totals.rejected, "count-rejected"),
      card("deferred", totals.deferred, "count-deferred"),
      card("refused at connect", totals.refusedAtConnect, "count-refused"),
      card("in the queue", queue.size, "queue-size"),
      card("oldest queued (s)", queue.oldestSeconds, "queue-oldest"),
    ),
    chartBox,
    h("h2", {}, "Health"),
    table(
      ["check", "state"],
      [
        h("tr", {}, h("td", {}, "DNS servers"), h("td", {}, health.dns.servers.join(", "))),
        h(
          "tr",
          {},
          h("td", {}, "DNS queries"),
          h(
            "td",
            { "data-testid": "dns" },
            `${health.dns.queries} (cache hits ${health.dns.cacheHits}; errors: ${dnsErrors || "none"})`,
          ),
        ),
        h("tr", {}, h("td", {}, "Redis"), h("td", { "data-testid": "redis" }, checkText(health.state))),
        h("tr", {}, h("td", {}, "spool"), h("td", {}, checkText(health.spool))),
      ],
      "health",
    ),
    h("h2", {}, "Running policy"),
    policyTable(policy),
  ];
  return { nodes: page, after: () => drawChart(chartBox, data.series) };
}

function policyTable(policy) {
  const reload = policy.lastReload;
  return table(
    ["", ""],
    [
      h("tr", {}, h("td", {}, "file"), h("td", { "data-testid": "policy-file" }, policy.file)),
      h("tr", {}, h("td", {}, "sha256"), h("td", { "data-testid": "policy-hash" }, policy.hash)),
      h(
        "tr",
        {},
        h("td", {}, "file on disk"),
        h(
          "td",
          {},
          policy.fileHash === policy.hash ? "the running version" : `changed (${policy.fileHash ?? "unreadable"})`,
        ),
      ),
      h("tr", {}, h("td", {}, "loaded at"), h("td", {}, time(policy.loadedAt))),
      h(
        "tr",
        {},
        h("td", {}, "last reload"),
        h(
          "td",
          { "data-testid": "last-reload" },
          reload ? `${reload.ok ? "applied" : "refused"} at ${time(reload.at)}` : "none since start",
        ),
      ),
      h("tr", {}, h("td", {}, "waiting for a restart"), h("td", {}, policy.restartNeeded.join(", ") || "nothing")),
    ],
    "policy",
  );
}

function drawChart(box, series) {
  chart?.destroy();
  chart = null;
  if (typeof uPlot !== "function") return;
  const line = (label, stroke) => ({ label, stroke, width: 2 });
  chart = new uPlot(
    {
      width: Math.max(400, main.clientWidth - 20),
      height: 220,
      series: [
        {},
        line("accepted", "#17803d"),
        line("rejected", "#b42318"),
        line("deferred", "#b54708"),
        line("refused at connect", "#6941c6"),
      ],
      axes: [{}, { label: "per minute" }],
    },
    [series.minutes, series.accepted, series.rejected, series.deferred, series.refusedAtConnect],
    box,
  );
}

async function decisionsPage() {
  const data = await api("/api/decisions");
  const counted = (rows, key, testid, heading) =>
    table(
      [heading, "count"],
      rows.map((row) => h("tr", {}, h("td", {}, filtered({ [key]: row.key }, row.key)), h("td", {}, row.count))),
      testid,
    );
  const results = (counts) =>
    Object.entries(counts)
      .map(([result, count]) => `${result} ${count}`)
      .join(", ");
  return {
    nodes: [
      h(
        "div",
        { class: "columns" },
        h(
          "section",
          {},
          h("h2", {}, "Refusals by plugin and rule"),
          counted(data.deciders, "decider", "deciders", "decided by"),
        ),
        h(
          "section",
          {},
          h("h2", {}, "Top refused client networks"),
          counted(data.networks, "client", "networks", "network"),
        ),
        h("section", {}, h("h2", {}, "Top DNSBL zones hit"), counted(data.zones, "zone", "zones", "zone")),
      ),
      h("h2", {}, "Top sender domains"),
      table(
        ["domain", "transactions", "SPF", "DKIM", "DMARC"],
        data.senderDomains.map((row) =>
          h(
            "tr",
            {},
            h("td", {}, filtered({ sender: `@${row.key}` }, row.key)),
            h("td", {}, row.count),
            h("td", {}, results(row.results.spf)),
            h("td", {}, results(row.results.dkim)),
            h("td", {}, results(row.results.dmarc)),
          ),
        ),
        "sender-domains",
      ),
    ],
  };
}

const FILTERS = ["client", "sender", "recipient", "outcome", "decider", "zone"];
const OUTCOMES = ["", "accepted", "rejected", "deferred", "refused", "aborted"];
const PAGE = 50;

async function transactionsPage(params) {
  const form = h(
    "form",
    { class: "filters", "data-testid": "filters" },
    FILTERS.map((name) =>
      h(
        "label",
        {},
        name,
        name === "outcome"
          ? h(
              "select",
              { name },
              OUTCOMES.map((value) => {
                const option = h("option", { value }, value || "any");
                option.selected = value === (params.get(name) ?? "");
                return option;
              }),
            )
          : h("input", { name, value: params.get(name) ?? "", size: 18 }),
      ),
    ),
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (String(value).trim()) next.set(name, String(value).trim());
    location.hash = `#/transactions?${next}`;
  });
  const results = h("div", { "data-testid": "results" });
  const refresh = async () => results.replaceChildren(...(await transactionRows(params)));
  await refresh();
  // New entries arrive at the top: only the first page follows them, a later one stays where the reader is.
  const following = Number(params.get("offset") ?? 0) === 0;
  return { nodes: [form, results], refresh: following ? refresh : null };
}

async function transactionRows(params) {
  const query = new URLSearchParams();
  for (const name of FILTERS) if (params.get(name)) query.set(name, params.get(name));
  const offset = Number(params.get("offset") ?? 0);
  query.set("offset", String(offset));
  query.set("limit", String(PAGE));
  const data = await api(`/api/transactions?${query}`);
  const page = (at) => {
    const next = new URLSearchParams(params);
    next.set("offset", String(at));
    return `#/transactions?${next}`;
  };
  return [
    h(
      "div",
      { class: "pager" },
      h("span", { "data-testid": "matching" }, `${data.total} matching of ${data.kept} kept`),
      offset > 0 ? h("a", { href: page(Math.max(0, offset - PAGE)) }, "newer") : null,
      offset + PAGE < data.total ? h("a", { href: page(offset + PAGE), "data-testid": "older" }, "older") : null,
    ),
    table(
      ["time", "client", "HELO", "sender", "recipients", "outcome", "decided by", "reply"],
      data.rows.map((row) =>
        h(
          "tr",
          { "data-testid": "transaction-row" },
          h("td", {}, h("a", { href: `#/transactions/${row.seq}` }, time(row.at))),
          h("td", {}, row.client, row.clientName ? ` (${row.clientName})` : ""),
          h("td", { "data-testid": "helo" }, row.helo ?? "–"),
          h("td", {}, row.from ?? "–"),
          h("td", {}, row.to.join(", ")),
          h(
            "td",
            { class: `outcome-${row.outcome}` },
            row.kind === "connection" ? `${row.outcome} (connection)` : row.outcome,
          ),
          h("td", {}, row.decidedBy ?? ""),
          h("td", {}, row.reply ?? ""),
        ),
      ),
      "transactions",
    ),
  ];
}

async function transactionPage(seq) {
  const data = await api(`/api/transactions/${encodeURIComponent(seq)}`);
  // A detail stays as it was opened: no refresh.
  if (data.error) return { nodes: [h("p", {}, data.error)], refresh: null };
  return {
    refresh: null,
    nodes: [
      h("h2", {}, data.kind === "connection" ? "Refused connection" : "Transaction"),
      table(
        ["", ""],
        [
          ["time", time(data.at)],
          ["client", `${data.client}${data.clientName ? ` (${data.clientName})` : ""}`],
          ["HELO", data.helo ?? "–"],
          ["sender", data.from ?? "–"],
          ["recipients", data.to.join(", ")],
          ["outcome", data.outcome],
          ["decided by", data.decidedBy ?? "–"],
          ["reply", data.reply ?? "–"],
          ["score", data.score],
        ].map(([name, value]) => h("tr", {}, h("td", {}, name), h("td", { "data-testid": `detail-${name}` }, value))),
        "detail",
      ),
      h("h2", {}, "Hook trace"),
      table(
        ["phase", "step", "verdict", "decision", "ms", "findings"],
        data.steps.map((step) =>
          h(
            "tr",
            { "data-testid": "step" },
            h("td", {}, step.phase),
            h("td", {}, step.kind === "rule" ? `rule ${step.name}` : step.name),
            h("td", {}, step.verdict ?? ""),
            h("td", {}, step.decision),
            h("td", {}, step.ms.toFixed(2)),
            h(
              "td",
              {},
              step.error ? h("div", { class: "bad" }, step.error) : null,
              step.findings ? json(step.findings) : null,
            ),
          ),
        ),
        "trace",
      ),
      Object.keys(data.otherFindings).length > 0 ? [h("h2", {}, "Other findings"), json(data.otherFindings)] : null,
      h("h2", {}, "Summary line"),
      json(data.summary),
    ],
  };
}

async function queuePage() {
  const data = await api("/api/queue");
  return {
    nodes: [
      h("h2", {}, `Queue (${data.messages.length})`),
      table(
        ["id", "arrived", "sender", "recipients", "attempts", "next attempt", "last reply"],
        data.messages.map((message) =>
          h(
            "tr",
            { "data-testid": "queue-row" },
            h("td", {}, h("a", { href: `#/queue/${message.id}` }, message.id)),
            h("td", {}, time(message.arrivedAt)),
            h("td", {}, message.from || "<>"),
            h("td", {}, message.recipients.map((r) => `${r.to} (${r.status})`).join(", ")),
            h("td", {}, message.attempts),
            h("td", {}, time(message.nextAt)),
            h(
              "td",
              {},
              message.recipients
                .map((r) => r.reply)
                .filter(Boolean)
                .join("; "),
            ),
          ),
        ),
        "queue",
      ),
    ],
  };
}

async function messagePage(id) {
  const data = await api(`/api/queue/${encodeURIComponent(id)}`);
  if (!data.ok) return { nodes: [h("p", { "data-testid": "queue-gone" }, data.error)], refresh: null };
  const { message } = data;
  const outcome = h("p", { "data-testid": "action-result" });
  const act = async (action) => {
    const response = await fetch(`/api/queue/${encodeURIComponent(message.id)}/${action}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "x-portcullis-dashboard": "1" },
    });
    const body = await response.json();
    outcome.textContent = response.ok ? `${action}: done` : `${action}: ${body.error}`;
  };
  return {
    refresh: null,
    nodes: [
      h("h2", {}, `Queued message ${message.id}`),
      h(
        "div",
        { "data-testid": "actions" },
        data.actions.map((action) =>
          h("button", { type: "button", "data-action": action, onclick: () => act(action) }, action),
        ),
      ),
      outcome,
      table(
        ["", ""],
        [
          ["sender", message.from || "<>"],
          ["Message-ID", message.messageId ?? "–"],
          ["size", message.size],
          ["arrived", time(message.arrivedAt)],
          ["attempts", message.attempts],
          ["next attempt", time(message.nextAt)],
        ].map(([name, value]) => h("tr", {}, h("td", {}, name), h("td", { "data-testid": `message-${name}` }, value))),
        "message",
      ),
      h("h2", {}, "Recipients"),
      table(
        ["recipient", "route", "status", "last reply"],
        message.recipients.map((r) =>
          h(
            "tr",
            { "data-testid": "recipient" },
            h("td", {}, r.to),
            h("td", {}, r.route),
            h("td", {}, r.status),
            h("td", {}, r.reply ?? "–"),
          ),
        ),
        "recipients",
      ),
      h("h2", {}, "Header"),
      h("pre", { "data-testid": "headers" }, data.headers),
    ],
  };
}

async function policyPage() {
  const data = await api("/api/policy");
  return {
    nodes: [
      h("h2", {}, "Running policy"),
      policyTable(data),
      h("h2", {}, "Pipeline"),
      table(
        ["entry", "on error"],
        data.pipeline.map((entry) => h("tr", {}, h("td", {}, entry.name), h("td", {}, entry.onError))),
        "pipeline",
      ),
      h("h2", {}, "Rules"),
      table(
        ["rule", "mode"],
        data.rules.map((rule) => h("tr", {}, h("td", {}, rule.name), h("td", {}, rule.mode))),
        "rules",
      ),
      h("h2", {}, `Shadow policy differences${data.shadow ? ` (${data.shadow})` : " (no shadow policy)"}`),
      table(
        ["rule", "live", "shadow", "count"],
        data.shadowDifferences.map((d) =>
          h("tr", {}, h("td", {}, d.rule), h("td", {}, d.live), h("td", {}, d.candidate), h("td", {}, d.count)),
        ),
        "shadow",
      ),
      h("h2", {}, "Observe-mode rule hits"),
      table(
        ["rule", "phase", "count"],
        data.observed.map((o) => h("tr", {}, h("td", {}, o.rule), h("td", {}, o.phase), h("td", {}, o.count))),
        "observed",
      ),
    ],
  };
}

// ---- routing and live updates -------------------------------------------------------------

/** The page now shown: its name, and how to bring it up to date without losing what the user typed. */
let current = { name: "", refresh: null };

function route() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query);
  const name = parts[0] ?? "overview";
  if (name === "decisions") return { name, load: decisionsPage };
  if (name === "transactions" && parts[1]) return { name: "transaction", load: () => transactionPage(parts[1]) };
  if (name === "transactions") return { name, load: () => transactionsPage(params) };
  if (name === "queue" && parts[1]) return { name: "message", load: () => messagePage(parts[1]) };
  if (name === "queue") return { name, load: queuePage };
  if (name === "policy") return { name, load: policyPage };
  return { name: "overview", load: overviewPage };
}

/** Counts page loads: a load that a later one overtook (a click during a live update) is dropped. */
let shown = 0;

async function show() {
  const attempt = ++shown;
  const { name, load } = route();
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle(
      "current",
      name.startsWith(link.dataset.page) || (name === "message" && link.dataset.page === "queue"),
    );
  }
  try {
    const page = await load();
    if (attempt !== shown) return;
    main.replaceChildren(...[page.nodes].flat(Infinity).filter(Boolean));
    main.dataset.page = name;
    page.after?.();
    // Lists follow the traffic; a page that says how (or says null) knows better.
    current = { name, refresh: "refresh" in page ? page.refresh : show };
  } catch (error) {
    if (attempt !== shown) return;
    main.replaceChildren(h("p", { class: "bad" }, `Could not load: ${error.message}`));
  }
}

function listen() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => {
    live.textContent = "live";
    live.classList.add("on");
  });
  events.addEventListener("error", () => {
    live.textContent = "reconnecting";
    live.classList.remove("on");
  });
  events.addEventListener("update", () => {
    current.refresh?.();
  });
}

window.addEventListener("hashchange", show);
show();
listen();
