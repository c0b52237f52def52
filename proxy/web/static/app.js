// The built-in page: reads the /-/ JSON endpoints and renders them. Plain JS, no framework, no build.
// Every value from the log (session, project, client, model) reaches the DOM through textContent
// or a canvas, never innerHTML, so a hostile X-Spend-Session is shown as text.
"use strict";

(function () {
  const FILTERS = ["since", "project", "session", "model", "key"];
  const DEFAULTS = { since: "7d", step: "day", by: "model" };
  const FAST_MS = 3000;   // recent requests, spend cards, budgets, free use
  const SLOW_MS = 15000;  // chart, top lists, cache, price changes
  const PALETTE = ["#2f6fde", "#e4572e", "#29a36a", "#f0a202", "#8e44ad", "#17a2b8", "#d63384", "#6c757d", "#a0a8b8"];

  let chart = null;
  let seen = new Set();
  let generation = 0;

  // ---- state in the URL: a link reproduces the view ------------------------------------------
  function state() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const out = {};
    for (const name of [...FILTERS, "step", "by"]) {
      const value = params.get(name);
      out[name] = value === null ? (DEFAULTS[name] !== undefined ? DEFAULTS[name] : "") : value;
    }
    return out;
  }

  function setState(next) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(next)) {
      if (value !== "" && value !== DEFAULTS[name]) params.set(name, value);
      else if (value === "" && DEFAULTS[name]) params.set(name, "");
    }
    const hash = params.toString();
    if (hash !== location.hash.replace(/^#/, "")) location.hash = hash;
    else reloadAll();
  }

  function filterQuery(s, extra, withRange) {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      if (name === "since" && withRange === false) continue;
      if (s[name]) params.set(name, s[name]);
    }
    for (const [name, value] of Object.entries(extra || {})) {
      if (Array.isArray(value)) value.forEach((v) => params.append(name, v));
      else if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
    }
    return params.toString();
  }

  // ---- fetching -------------------------------------------------------------------------------
  async function get(path, query) {
    const response = await fetch(path + (query ? "?" + query : ""), { credentials: "same-origin", cache: "no-store" });
    const body = await response.json();
    if (!response.ok) {
      const message = body && body.error && body.error.message ? body.error.message : response.statusText;
      throw new Error(message);
    }
    return body;
  }

  function showError(where, error) {
    const status = document.getElementById("status");
    status.textContent = where + ": " + (error && error.message ? error.message : String(error));
  }

  function clearError() {
    document.getElementById("status").textContent = "";
  }

  // An answer for a view the user has since left (filters changed while it was in flight) must
  // not be drawn over the new one.
  class Stale extends Error {}

  function current(mine) {
    if (mine !== generation) throw new Stale("stale");
  }

  // ---- formatting -----------------------------------------------------------------------------
  function usd(text) {
    if (text === null || text === undefined) return "–";
    let s = String(text);
    if (s.includes(".")) s = s.replace(/0+$/, "").replace(/\.$/, "");
    if (s === "-0") s = "0";
    return "$" + s;
  }

  function usdRounded(value) {
    if (value === null || value === undefined) return "–";
    const n = Number(value);
    return "$" + (Math.abs(n) >= 1 ? n.toFixed(2) : n.toPrecision(3).replace(/0+$/, "").replace(/\.$/, ""));
  }

  function count(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
    return isNaN(d) ? iso : d.toLocaleString("en-GB", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleTimeString("en-GB");
  }

  function ms(value) {
    return value === null || value === undefined ? "–" : (value >= 1000 ? (value / 1000).toFixed(1) + " s" : Math.round(value) + " ms");
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // columns: [{label, value(row) -> string, num, cls, title(row)}]
  function fillTable(table, columns, rows, empty, rowClass) {
    table.replaceChildren();
    const head = el("thead");
    const tr = el("tr");
    for (const c of columns) tr.appendChild(el("th", c.label, c.num ? "num" : ""));
    head.appendChild(tr);
    table.appendChild(head);
    const body = el("tbody");
    if (!rows.length) {
      const row = el("tr");
      const cell = el("td", empty || "nothing in this range", "empty");
      cell.colSpan = columns.length;
      row.appendChild(cell);
      body.appendChild(row);
    }
    for (const r of rows) {
      const row = el("tr");
      if (rowClass) row.className = rowClass(r) || "";
      for (const c of columns) {
        const cell = el("td", c.value(r), c.num ? "num" : (c.text ? "text" : ""));
        if (c.text) cell.title = c.value(r);
        if (c.data) cell.dataset.value = c.data(r);
        row.appendChild(cell);
      }
      body.appendChild(row);
    }
    table.appendChild(body);
  }

  // ---- time windows for the cards (the browser's time zone) -------------------------------------
  function isoLocal(d) {
    const pad = (n) => String(n).padStart(2, "0");
    const offset = -d.getTimezoneOffset();
    const sign = offset >= 0 ? "+" : "-";
    const abs = Math.abs(offset);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T00:00:00" +
      sign + pad(Math.floor(abs / 60)) + ":" + pad(abs % 60);
  }

  function windows() {
    const now = new Date();
    const today = new Date(now.getFullYear(), now.getMonth(), now.getDate());
    const week = new Date(today);
    week.setDate(today.getDate() - ((today.getDay() + 6) % 7));  // Monday
    const month = new Date(now.getFullYear(), now.getMonth(), 1);
    return { today: isoLocal(today), week: isoLocal(week), month: isoLocal(month) };
  }

  // ---- views ----------------------------------------------------------------------------------
  async function loadCards(s, mine) {
    const w = windows();
    const ranges = [["today", w.today], ["week", w.week], ["month", w.month], ["range", s.since]];
    await Promise.all(ranges.map(async ([name, since]) => {
      const query = filterQuery(s, { by: "model", since: since }, false);
      const report = await get("/-/report", query);
      current(mine);
      const spend = document.getElementById("spend-" + name);
      spend.textContent = usd(report.total.cost_usd);
      spend.dataset.value = report.total.cost_usd;
      const unknown = report.total.cost_unknown_requests ? ", " + count(report.total.cost_unknown_requests) + " without a known cost" : "";
      document.getElementById("requests-" + name).textContent =
        count(report.total.requests) + " requests, " + count(report.total.errors) + " errors" + unknown;
    }));
  }

  async function loadBudgets(mine) {
    const box = document.getElementById("budgets");
    const body = await get("/-/budgets");
    current(mine);
    box.replaceChildren();
    if (!body.configured) {
      box.appendChild(el("p", "No budgets configured (see budgets: in the config, or `openrouter-spend budgets set`).", "note"));
      return;
    }
    if (!body.budgets.length) box.appendChild(el("p", "No budget has spend in its window yet.", "note"));
    for (const b of body.budgets) {
      const item = el("div", null, "budget");
      item.dataset.budget = b.budget;
      const head = el("div", null, "budget-head");
      const scope = b.scope_value ? " · " + b.scope + " " + b.scope_value : "";
      head.appendChild(el("span", b.budget + scope + " (" + b.period + ", " + b.action + ")", "name"));
      const share = Number(b.share);
      const spent = el("span", usd(b.spent_usd) + " of " + usd(b.limit_usd) + " · " + (share * 100).toFixed(1) + "%");
      spent.className = "spent";
      spent.dataset.value = b.spent_usd;
      head.appendChild(spent);
      item.appendChild(head);
      const bar = el("div", null, "bar" + (share >= 1 ? " over" : share >= 0.8 ? " warn" : ""));
      const limit = Number(b.limit_usd);
      if (b.projected_usd !== null && limit > 0) {
        const projected = el("div", null, "projected");
        projected.style.width = Math.min(100, (Number(b.projected_usd) / limit) * 100) + "%";
        bar.appendChild(projected);
      }
      const fill = el("div", null, "fill");
      fill.style.width = Math.min(100, share * 100) + "%";
      bar.appendChild(fill);
      item.appendChild(bar);
      const notes = [];
      if (b.resets_at) notes.push("resets " + when(b.resets_at));
      if (b.projected_usd !== null) notes.push("at this rate " + usdRounded(b.projected_usd) + " by the window's end");
      if (Number(b.reserved_usd) > 0) notes.push(usdRounded(b.reserved_usd) + " held for requests in flight");
      item.appendChild(el("p", notes.join(" · "), "note"));
      box.appendChild(item);
    }
  }

  async function loadChart(s, mine) {
    const series = await get("/-/timeseries", filterQuery(s, { step: s.step, by: s.by }));
    current(mine);
    const datasets = series.series.map((line, i) => ({
      label: line.name,
      data: line.values,
      backgroundColor: PALETTE[i % PALETTE.length],
      stack: "spend",
    }));
    const labels = series.buckets;
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets = datasets;
      chart.update("none");
      return;
    }
    if (!window.Chart) throw new Error("chart library did not load");
    chart = new window.Chart(document.getElementById("chart-spend"), {
      type: "bar",
      data: { labels: labels, datasets: datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        responsive: true,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true } },
          y: { stacked: true, beginAtZero: true, ticks: { callback: (v) => usdRounded(v) } },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (ctx) => ctx.dataset.label + ": " + usdRounded(ctx.parsed.y) } },
        },
      },
    });
  }

  const reportColumns = (label) => [
    { label: label, value: (r) => r.group, text: true },
    { label: "cost", value: (r) => usd(r.cost_usd) + (r.cost_unknown_requests ? "*" : ""), num: true, data: (r) => r.cost_usd },
    { label: "requests", value: (r) => count(r.requests), num: true },
    { label: "errors", value: (r) => count(r.errors), num: true },
    { label: "input", value: (r) => count(r.input_tokens), num: true },
    { label: "cached", value: (r) => count(r.cached_tokens), num: true },
    { label: "output", value: (r) => count(r.output_tokens), num: true },
    { label: "reasoning", value: (r) => count(r.reasoning_tokens), num: true },
  ];

  async function loadTop(s, mine) {
    const [models, projects, sessions] = await Promise.all([
      get("/-/report", filterQuery(s, { by: "model" })),
      get("/-/report", filterQuery(s, { by: "project" })),
      get("/-/sessions", filterQuery(s, { by: "session", limit: 20 })),
    ]);
    current(mine);
    fillTable(document.getElementById("table-models"), reportColumns("model"), models.rows.slice(0, 15));
    fillTable(document.getElementById("table-projects"), reportColumns("project"), projects.rows.slice(0, 15));
    fillTable(document.getElementById("table-sessions"), [
      { label: "session", value: (r) => r.group, text: true },
      { label: "cost", value: (r) => usd(r.cost_usd), num: true, data: (r) => r.cost_usd },
      { label: "first seen", value: (r) => when(r.first_seen) },
      { label: "last seen", value: (r) => when(r.last_seen) },
      { label: "requests", value: (r) => count(r.requests), num: true },
      { label: "models", value: (r) => r.models.join(", "), text: true },
    ], sessions.rows);
  }

  async function loadRecent(s, mine) {
    const body = await get("/-/recent", filterQuery(s, { limit: 30 }));
    current(mine);
    const fresh = new Set();
    for (const r of body.requests) if (seen.size && !seen.has(r.id)) fresh.add(r.id);
    body.requests.forEach((r) => seen.add(r.id));
    fillTable(document.getElementById("table-recent"), [
      { label: "time", value: (r) => clock(r.started_at) },
      { label: "model", value: (r) => r.model || r.endpoint, text: true },
      { label: "billed", value: (r) => usd(r.cost_reported_usd), num: true },
      { label: "catalog", value: (r) => usd(r.cost_catalog_usd), num: true },
      { label: "project", value: (r) => r.project || "–", text: true },
      { label: "session", value: (r) => r.session || "–", text: true },
      { label: "client", value: (r) => r.client || "–", text: true },
      { label: "input", value: (r) => count(r.input_tokens), num: true },
      { label: "cache read", value: (r) => count(r.cached_tokens), num: true },
      { label: "cache write", value: (r) => count(r.cache_write_tokens), num: true },
      { label: "output", value: (r) => count(r.output_tokens), num: true },
      { label: "reasoning", value: (r) => count(r.reasoning_tokens), num: true },
      { label: "latency", value: (r) => ms(r.duration_ms), num: true },
      { label: "outcome", value: (r) => r.outcome + (r.status && r.status !== 200 ? " " + r.status : "") },
    ], body.requests, "no requests in this range yet",
    (r) => (r.outcome !== "ok" ? "error" : "") + (fresh.has(r.id) ? " fresh" : ""));
  }

  async function loadFree(mine) {
    const free = await get("/-/free-usage");
    current(mine);
    const box = document.getElementById("free-usage");
    box.replaceChildren();
    const share = free.daily_limit ? free.requests_today / free.daily_limit : 0;
    box.appendChild(el("p", count(free.requests_today) + " of " + count(free.daily_limit) + " requests today", "big"));
    const bar = el("div", null, "bar" + (share >= 1 ? " over" : share >= 0.8 ? " warn" : ""));
    const fill = el("div", null, "fill");
    fill.style.width = Math.min(100, share * 100) + "%";
    bar.appendChild(fill);
    box.appendChild(bar);
    box.appendChild(el("p", "busiest minute " + free.busiest_minute + " of " + free.per_minute_limit + " per minute", "note"));
  }

  async function loadCache(s, mine) {
    const body = await get("/-/cache", filterQuery(s));
    current(mine);
    document.getElementById("cache-summary").textContent =
      "Cache reads saved " + usdRounded(body.saved_usd) + " at today's prices. Billed " + usdRounded(body.billed_usd) +
      " vs catalog " + usdRounded(body.catalog_usd) + " (drift " + usdRounded(body.drift_usd) + ").";
    fillTable(document.getElementById("table-cache"), [
      { label: "model", value: (r) => r.model, text: true },
      { label: "cached share", value: (r) => (r.cache_share === null ? "–" : (r.cache_share * 100).toFixed(1) + "%"), num: true },
      { label: "saved", value: (r) => usdRounded(r.saved_usd), num: true },
      { label: "billed", value: (r) => usdRounded(r.billed_usd), num: true },
      { label: "catalog", value: (r) => usdRounded(r.catalog_usd), num: true },
      { label: "drift", value: (r) => usdRounded(r.drift_usd), num: true },
    ], body.models.slice(0, 12));
  }

  function dynamicColumns(rows) {
    if (!rows.length) return [{ label: "", value: () => "" }];
    return Object.keys(rows[0]).map((name) => ({
      label: name.replace(/_/g, " "),
      value: (r) => (r[name] === null || r[name] === undefined ? "–" : String(r[name])),
      num: typeof rows[0][name] === "number",
      text: name === "model" || name === "name" || name === "scenario",
    }));
  }

  async function loadChanges(mine) {
    const body = await get("/-/price-changes");
    current(mine);
    fillTable(document.getElementById("table-changes"), dynamicColumns(body.changes), body.changes.slice(0, 20),
      "no price changes recorded yet");
  }

  function targets(text) {
    return String(text || "").split(/[\s,]+/).filter(Boolean);
  }

  async function estimate(event) {
    if (event) event.preventDefault();
    const form = new FormData(document.getElementById("estimate-form"));
    const extra = {};
    for (const name of ["input", "output", "cached_input", "reasoning", "calls", "cheapest"]) extra[name] = form.get(name);
    extra.target = targets(form.get("target"));
    try {
      const body = await get("/-/models", new URLSearchParams(flatten(extra)).toString());
      fillTable(document.getElementById("table-estimate"), dynamicColumns(body.estimate), body.estimate);
      clearError();
    } catch (error) {
      showError("calculator", error);
    }
  }

  async function whatif(event) {
    if (event) event.preventDefault();
    const form = new FormData(document.getElementById("whatif-form"));
    const list = targets(form.get("target"));
    if (!list.length) return;
    try {
      const body = await get("/-/whatif", filterQuery(state(), { target: list }));
      fillTable(document.getElementById("table-whatif"), dynamicColumns(body.rows), body.rows);
      clearError();
    } catch (error) {
      showError("what if", error);
    }
  }

  function flatten(obj) {
    const pairs = [];
    for (const [name, value] of Object.entries(obj)) {
      if (Array.isArray(value)) value.forEach((v) => pairs.push([name, v]));
      else if (value !== null && value !== undefined && value !== "") pairs.push([name, String(value)]);
    }
    return pairs;
  }

  // ---- refresh loops --------------------------------------------------------------------------
  async function run(tasks, mine) {
    const results = await Promise.allSettled(tasks);
    if (mine !== generation) return;
    const failed = results.find((r) => r.status === "rejected" && !(r.reason instanceof Stale));
    const live = document.getElementById("live");
    if (failed) {
      showError("refresh", failed.reason);
      live.className = "live stale";
      live.textContent = "stale";
    } else {
      clearError();
      live.className = "live";
      live.textContent = "live";
    }
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  }

  function fast() {
    const s = state();
    const mine = generation;
    return run([loadCards(s, mine), loadBudgets(mine), loadRecent(s, mine), loadFree(mine)], mine);
  }

  function slow() {
    const s = state();
    const mine = generation;
    return run([loadChart(s, mine), loadTop(s, mine), loadCache(s, mine), loadChanges(mine)], mine);
  }

  function syncForms() {
    const s = state();
    const filters = document.getElementById("filters");
    for (const name of FILTERS) filters.elements[name].value = s[name];
    const options = document.getElementById("chart-options");
    options.elements.step.value = s.step;
    options.elements.by.value = s.by;
  }

  function reloadAll() {
    generation += 1;
    const mine = generation;
    document.body.dataset.ready = "0";
    seen = new Set();
    syncForms();
    Promise.all([fast(), slow()]).then(() => {
      if (mine === generation) document.body.dataset.ready = "1";
    });
  }

  function readForms() {
    const next = {};
    const filters = document.getElementById("filters");
    for (const name of FILTERS) next[name] = filters.elements[name].value.trim();
    const options = document.getElementById("chart-options");
    next.step = options.elements.step.value;
    next.by = options.elements.by.value;
    return next;
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      setState(readForms());
    });
    document.getElementById("clear").addEventListener("click", () => {
      setState({ since: DEFAULTS.since, project: "", session: "", model: "", key: "", step: DEFAULTS.step, by: DEFAULTS.by });
    });
    document.getElementById("chart-options").addEventListener("change", () => setState(readForms()));
    document.getElementById("estimate-form").addEventListener("submit", estimate);
    document.getElementById("whatif-form").addEventListener("submit", whatif);
    window.addEventListener("hashchange", reloadAll);
    reloadAll();
    estimate();
    setInterval(() => { if (!document.hidden) fast(); }, FAST_MS);
    setInterval(() => { if (!document.hidden) slow(); }, SLOW_MS);
  });
})();
