// tidal dashboard: polls api/summary and redraws. No framework, no network beyond this server.
"use strict";

const REFRESH_MS = 1500;
const CHART_HEIGHT = 180;
const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                "#4f46e5", "#65a30d"];
const charts = {};
const ALL = "*";  // the explicit "all pipelines" view: every pipeline's scoring workers, summed
const REASON_CHARS = 120;
// ?pipeline=NAME (or the older #pipeline=NAME) selects one; none: the server's default, the first pipeline seen
let selected = new URLSearchParams(location.search).get("pipeline") ||
               new URLSearchParams(location.hash.slice(1)).get("pipeline") || null;
let timer = null;

// -- formatting ------------------------------------------------------------------------------
const dash = "–";
function fmtInt(n) { return n == null ? dash : Math.round(n).toLocaleString("en-US"); }
function fmtNum(v) {
  if (v == null || !isFinite(v)) return dash;
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 10 || v === 0) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}
function fmtRate(r) { return r == null ? dash : fmtNum(r) + "/s"; }
function fmtMs(ms) {
  if (ms == null || !isFinite(ms)) return dash;
  if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
  if (ms >= 10) return ms.toFixed(0) + " ms";
  return ms.toFixed(1) + " ms";
}
function fmtPct(x) { return x == null || !isFinite(x) ? dash : (100 * x).toFixed(x < 0.01 && x > 0 ? 2 : 1) + " %"; }
function fmtAgo(t, now) {
  if (!t) return dash;
  const s = Math.max(0, (now || Date.now() / 1000) - t);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
  return new Date(t * 1000).toLocaleDateString("en-US");
}
// a long text (a scikit-learn error as a deployment reason) cut to `n` characters; the whole of it on hover
function short(text, n = REASON_CHARS) {
  const full = String(text ?? "");
  if (full.length <= n) return full;
  return el("span", {class: "cut", title: full}, full.slice(0, n - 1).trimEnd() + "…");
}
function ms(values) { return values.map(v => (v == null ? null : v * 1000)); }

// -- DOM helpers -----------------------------------------------------------------------------
function $(id) { return document.getElementById(id); }
function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "data") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? dash));
  return node;
}
// rows: arrays of cells; a cell is text, a Node, or {text, cls}
function setRows(tableId, rows, emptyText, rowData) {
  const body = $(tableId).tBodies[0];
  const cols = $(tableId).tHead.rows[0].cells.length;
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", {}, el("td", {class: "none", colspan: cols}, emptyText)));
    return;
  }
  rows.forEach((cells, i) => {
    const tr = el("tr", rowData ? {data: rowData[i]} : {});
    for (const c of cells) {
      if (c && typeof c === "object" && !(c instanceof Node)) tr.append(el("td", {class: c.cls || ""}, c.text));
      else tr.append(el("td", {}, c));
    }
    body.append(tr);
  });
}

// -- charts ----------------------------------------------------------------------------------
function drawChart(id, t, series, opts) {
  const box = $(id);
  const has = series.length && series.some(s => s.values.some(v => v != null));
  if (!has) {
    if (charts[id]) { charts[id].u.destroy(); delete charts[id]; }
    let empty = box.querySelector(".empty");
    if (!empty) { box.replaceChildren(); empty = el("div", {class: "empty"}); box.append(empty); }
    if (empty.textContent !== opts.empty) empty.textContent = opts.empty;
    return;
  }
  const key = series.map(s => s.label).join("\u0001");
  const c = charts[id];
  if (c && c.key === key) { c.u.setData([t, ...(opts.stacked ? stack(series.map(s => s.values)) : series.map(s => s.values))]); return; }
  if (c) c.u.destroy();
  box.replaceChildren();
  const fmt = opts.fmt || fmtNum;
  const axisFmt = opts.axisFmt || ((u, vals) => vals.map(fmt));
  const axis = {stroke: "#64748b", grid: {stroke: "#eef2f6", width: 1}, ticks: {stroke: "#e2e8f0", width: 1},
                font: "11px system-ui, sans-serif"};
  const color = i => series[i].color || COLORS[i % COLORS.length];
  // stacked: series i is drawn at the sum of series 0..i, and the band below it is filled
  const shown = opts.stacked ? stack(series.map(s => s.values)) : series.map(s => s.values);
  const u = new uPlot({
    width: Math.max(200, box.clientWidth), height: CHART_HEIGHT,
    legend: {live: false},
    cursor: {drag: {x: false, y: false}, points: {size: 6}},
    scales: {x: {time: true}, y: opts.range ? {range: opts.range} : {range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1]}},
    axes: [axis, {...axis, size: 52, values: axisFmt}],
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: color(i), width: 1.6, spanGaps: false, dash: s.dash,
      fill: opts.stacked ? (i === 0 ? color(i) + "55" : undefined) : opts.fill ? color(i) + "14" : undefined,
      points: {show: false}, value: (u, v) => (v == null ? dash : fmt(v)),
    }))],
    bands: opts.stacked ? series.slice(1).map((s, i) => ({series: [i + 2, i + 1], fill: color(i + 1) + "55"})) : [],
  }, [t, ...shown], box);
  charts[id] = {u, key};
}

function stack(columns) {
  const out = [];
  let below = null;
  for (const col of columns) {
    const cur = col.map((v, j) => (v == null && (below == null || below[j] == null) ? null
                                   : (v || 0) + (below ? below[j] || 0 : 0)));
    out.push(cur);
    below = cur;
  }
  return out;
}

// latency axis: one unit for every tick (ms below a second, s above)
function msAxis(u, vals) {
  const max = Math.max(...vals.map(Math.abs));
  return vals.map(v => (max >= 1000 ? fmtNum(v / 1000) + " s" : fmtNum(v) + " ms"));
}

function fmtPair(a, b) {
  if (a == null || b == null) return dash;
  if (a >= 1000 && b >= 1000) return `${(a / 1000).toFixed(2)} / ${(b / 1000).toFixed(2)} s`;
  if (a < 1000 && b < 1000) return `${fmtMs(a).replace(" ms", "")} / ${fmtMs(b)}`;
  return `${fmtMs(a)} / ${fmtMs(b)}`;
}

function resizeCharts() {
  for (const [id, c] of Object.entries(charts)) c.u.setSize({width: Math.max(200, $(id).clientWidth), height: CHART_HEIGHT});
}
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(resizeCharts, 100); });

function labelled(obj, color) {
  return Object.entries(obj || {}).map(([label, values], i) => ({label, values, color: color && color(label, i)}));
}

// -- rendering -------------------------------------------------------------------------------
function renderHeader(d) {
  const nav = $("pipelines");
  const names = d.pipelines;
  const key = JSON.stringify([names, d.selected]);
  if (nav.dataset.key !== key) {
    nav.dataset.key = key;
    nav.replaceChildren();
    if (!names.length) nav.append(el("span", {class: "muted"}, "no pipeline seen yet"));
    const choices = names.length > 1 ? [...names, ALL] : names;
    for (const p of choices) {
      const active = p === ALL ? d.selected == null && names.length > 1 : p === d.selected;
      const b = el("button", {class: "chip" + (active ? " active" : "") + (p === ALL ? " chip-all" : ""),
                              type: "button", data: {pipeline: p},
                              title: p === ALL ? "every pipeline's scoring workers, summed" : ""},
                   p === ALL ? "all pipelines (sum)" : p);
      b.addEventListener("click", () => select(p));
      nav.append(b);
    }
  }
  const k = d.kafka, pill = $("kafka-status");
  let text, cls, title = k.error || "";
  if (!k.configured) { text = "Kafka: not configured"; cls = "pill-unknown"; }
  else if (k.reachable === null) { text = "Kafka " + k.bootstrap + ": checking…"; cls = "pill-unknown"; }
  else if (k.reachable) {
    text = `Kafka ${k.bootstrap} · ${k.brokers} broker${k.brokers === 1 ? "" : "s"} · ${k.metadata_ms} ms`;
    cls = "pill-ok";
  } else {
    text = `Kafka ${k.bootstrap} unreachable` + (k.last_ok_at ? ` (last seen ${fmtAgo(k.last_ok_at, d.now)})` : "");
    cls = "pill-bad";
  }
  pill.textContent = text; pill.className = "pill " + cls; pill.title = title;
  pill.dataset.reachable = String(k.reachable);
  document.body.dataset.selected = d.selected == null ? ALL : d.selected;
  const up = d.targets.filter(t => t.up).length;
  const tp = $("targets-status");
  tp.textContent = `workers ${up}/${d.targets.length} up`;
  tp.className = "pill " + (up === d.targets.length ? "pill-ok" : up ? "pill-unknown" : "pill-bad");
  setText("updated", "updated " + new Date(d.now * 1000).toLocaleTimeString("en-GB"));
  setText("history-s", String(d.history_s));
}

function renderKpis(d) {
  const t = d.totals, seen = d.pipelines.length > 0;
  const count = n => (seen ? fmtInt(n) : dash);
  const rate = r => (r == null ? "rate: waiting for scrapes" : fmtRate(r) + " now");
  setText("kpi-events-in", count(t.in));
  setText("kpi-rate-in", rate(d.rates.in));
  setText("kpi-events-out", count(t.out));
  setText("kpi-rate-out", rate(d.rates.out));
  setText("kpi-dlq", count(t.dlq));
  setText("kpi-dlq-share", t.in ? fmtPct(t.dlq / t.in) + " of events" : "of events");
  const recent = d.latency.recent, total = d.latency.total;
  const lat = recent.p50 != null ? recent : total;
  setText("kpi-latency", lat.p50 == null ? dash : fmtPair(lat.p50 * 1000, lat.p99 * 1000));
  setText("kpi-latency-sub", lat.p50 == null ? "no events yet" :
          (lat === recent ? `last ${d.latency.window_s} s` : "since workers started") + ` · ${fmtInt(d.latency.count)} events`);
  // the broker's committed-vs-end lag when Kafka answers (authoritative); else what the workers report
  const k = d.kafka, groups = k.reachable && k.groups_filtered ? k.groups.filter(g => g.kind !== "monitor") : [];
  const brokerParts = groups.reduce((n, g) => n + g.partitions.length, 0);
  const parts = brokerParts || Object.keys(d.lag.partitions).length;
  const plural = `${parts} partition${parts === 1 ? "" : "s"}`;
  if (brokerParts) {
    setText("kpi-lag", fmtInt(groups.reduce((n, g) => n + (g.lag || 0), 0)));
    setText("kpi-lag-sub", `${plural} · broker offsets`);
  } else {
    setText("kpi-lag", parts ? fmtInt(d.lag.total) : dash);
    setText("kpi-lag-sub", parts ? `${plural} · worker metrics` : "no partitions assigned");
  }
  const dec = d.decisions;
  setText("kpi-decisions", dec.decided ? fmtPct(dec.rate) : dash);
  setText("kpi-decisions-sub", dec.decided ? `${fmtInt(dec.positive)} of ${fmtInt(dec.decided)} positive` +
          (dec.recent != null ? ` · ${fmtPct(dec.recent)} last ${d.latency.window_s} s` : "") : "no decisions yet");
  setText("kpi-batches", count(t.batches));
  setText("kpi-batches-sub", t.mean_batch == null ? dash : `mean ${fmtNum(t.mean_batch)} events · ${fmtInt(t.commits)} commits`);
}

function renderCharts(d) {
  const s = d.series;
  drawChart("chart-throughput", s.t, [
    {label: "in", values: s.in, color: "#2563eb"}, {label: "out", values: s.out, color: "#16a34a", dash: [6, 4]},
  ], {fmt: fmtNum, fill: true, empty: "waiting for two scrapes…"});
  drawChart("chart-latency", s.t, [
    {label: "p50", values: ms(s.p50), color: "#16a34a"}, {label: "p95", values: ms(s.p95), color: "#ca8a04"},
    {label: "p99", values: ms(s.p99), color: "#dc2626"},
  ], {fmt: fmtMs, axisFmt: msAxis, empty: "no events in the last seconds"});
  drawChart("chart-lag", s.t, labelled(s.lag), {fmt: fmtNum, empty: "no partitions assigned to the scraped workers"});
  const reasons = {invalid_json: "#dc2626", missing_field: "#ea580c", wrong_type: "#9333ea", step_error: "#0891b2",
                   model_error: "#db2777"};
  drawChart("chart-dlq", s.t, labelled(s.dlq, (label, i) => reasons[label] || COLORS[(i + 4) % COLORS.length]),
            {fmt: fmtNum, stacked: true, empty: "no dead-letter records"});
  drawChart("chart-predictions", s.t, labelled(s.predictions), {fmt: fmtNum, empty: "no model scored yet"});
  const all = d.selected == null && d.pipelines.length > 1;
  const perPipeline = "select one pipeline: quality and scores are per pipeline";
  drawChart("chart-quality", s.t, labelled(s.quality),
            {fmt: fmtNum, range: [0, 1],
             empty: all ? perPipeline :
               "no labels yet: model quality appears once labels join the predictions (tidal monitor PIPELINE)"});
  drawChart("chart-loss", s.t, labelled(s.loss),
            {fmt: fmtNum, empty: all ? perPipeline : "no log-loss yet (it comes with model quality)"});
  drawChart("chart-decisions", s.t, [{label: "positive share", values: s.decision_rate, color: "#9333ea"}],
            {fmt: fmtPct, axisFmt: (u, vals) => vals.map(v => (100 * v).toFixed(0) + " %"), range: [0, 1], fill: true,
             empty: "no decisions in the last seconds"});
  renderHistogram(d.scores, all ? perPipeline : "no scores yet");
}

function renderHistogram(h, emptyText) {
  const box = $("chart-scores");
  const bars = h && h.count ? h.bars : [];
  const key = JSON.stringify(bars);
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  if (!bars.length) { box.replaceChildren(el("div", {class: "empty"}, emptyText)); setText("scores-sub", ""); return; }
  const max = Math.max(...bars.map(b => b.count), 1);
  const total = bars.reduce((n, b) => n + b.count, 0);
  const range = b => `${b.lo == null ? "≤" : fmtNum(b.lo) + "–"}${b.hi == null ? "∞" : fmtNum(b.hi)}`;
  box.replaceChildren(el("div", {class: "hist"}, ...bars.map(b => el("div", {
      class: "bar", data: {lo: b.lo == null ? "" : String(b.lo), hi: b.hi == null ? "" : String(b.hi),
                           count: String(b.count)},
      title: `${range(b)}: ${fmtInt(b.count)} events (${fmtPct(b.count / total)})`},
    el("div", {class: "bar-fill", style: `height: ${(100 * b.count / max).toFixed(1)}%`}),
    el("div", {class: "bar-label"}, b.hi == null ? ">" + +b.lo.toFixed(3) : String(+b.hi.toFixed(3)))))));
  setText("scores-sub", `${fmtInt(h.count)} events · mean ${fmtNum(h.mean)}`);
}

function renderTables(d) {
  const dlqTotal = Object.values(d.dlq).reduce((a, b) => a + b, 0);
  const reasons = Object.entries(d.dlq);
  setRows("dlq-table", reasons.map(([r, n]) => [r, {text: fmtInt(n), cls: "num"}, {text: fmtPct(n / dlqTotal), cls: "num"}]),
          "no dead-letter records", reasons.map(([r]) => ({reason: r})));
  setRows("predictions-table", d.predictions.map(p => [
    p.label, {text: fmtInt(p.count), cls: "num"}, {text: p.count ? fmtPct(p.positive / p.count) : dash, cls: "num"},
    p.in_use ? "✓ latest batch" : "",
  ]), "no predictions yet");
  const k = d.kafka;
  const kafkaEmpty = !k.configured ? "Kafka not configured (--bootstrap)" : k.reachable === false ? "Kafka unreachable" : null;
  setRows("models-table", k.models.map(m => [
    m.model, m.mode, m.primary ? "v" + m.primary.version : "?", m.secondary ? "v" + m.secondary.version : "",
    {text: m.mode === "single" ? "" : fmtPct(m.share), cls: "num"}, fmtAgo(m.time, d.now), short(m.reason),
  ]), kafkaEmpty || "no deployments on tidal.models", k.models.map(m => ({model: m.model})));
  setRows("alerts-table", k.alerts.map(a => [
    fmtAgo(a.time, d.now), el("span", {class: "sev sev-" + (a.severity || "info")}, a.severity || "info"),
    a.rule || a.type || "?", a.pipeline || "", short(a.message || a.reason),
  ]), kafkaEmpty || "no active alerts", k.alerts.map(a => ({rule: a.rule || a.type || ""})));
  setRows("groups-table", k.groups.map(g => [
    g.kind === "monitor" ? g.group + " (monitor)" : g.group, g.state, {text: fmtInt(g.members), cls: "num"}, {text: String(g.partitions.length), cls: "num"},
    {text: fmtInt(g.lag), cls: "num"},
  ]), kafkaEmpty || (k.reachable ? "no committed offsets yet" : "checking…"));
  setRows("targets-table", d.targets.map(t => [
    {text: t.url, cls: "nowrap"},
    el("span", {}, el("span", {class: "dot " + (t.up ? "dot-ok" : t.up === false ? "dot-bad" : "dot-unknown")}),
       t.up ? "up" : t.up === false ? "down: " + (t.error || "") : "not scraped yet"),
    t.kind || dash, t.pipelines.join(", "), {text: t.scrape_ms == null ? dash : t.scrape_ms + " ms", cls: "num"},
  ]), "no workers configured (--metrics)", d.targets.map(t => ({kind: t.kind || ""})));
  const m = d.monitor;
  setText("monitor-info", m.workers || m.in ? `monitor worker${m.workers === 1 ? "" : "s"} (not in the counts above): ` +
          `${fmtInt(m.in)} predictions and labels read · ${fmtInt(m.out)} joined · ${fmtInt(m.dlq)} dead-letter` +
          (m.unmatched ? ` · ${fmtInt(m.unmatched)} unmatched` : "") : "no monitor worker scraped for this view");
}

function render(d) {
  // one part that chokes on an odd record must not blank the others
  for (const part of [renderHeader, renderKpis, renderCharts, renderTables]) {
    try { part(d); } catch (err) { console.error(part.name + ": " + err); }
  }
  document.body.dataset.scrapes = String(d.scrapes);
  document.body.dataset.state = "live";
}

function select(p) {
  selected = p;
  history.replaceState(null, "", location.pathname + "?pipeline=" + encodeURIComponent(p));
  refresh();
}

async function refresh() {
  clearTimeout(timer);
  try {
    const q = selected ? "?pipeline=" + encodeURIComponent(selected) : "";
    // from the origin, not the page's URL: opened as http://user:password@host/ the page's URL
    // holds credentials, which fetch() refuses (the browser still sends the ones it was given)
    const resp = await fetch(new URL("api/summary" + q, location.origin + location.pathname), {cache: "no-store"});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const d = await resp.json();
    if (!selected && d.selected) selected = d.selected;  // the default stays put when other pipelines appear
    render(d);
  } catch (err) {
    setText("updated", "dashboard server unreachable, retrying… (" + err.message + ")");
    document.body.dataset.state = "error";
  } finally {
    timer = setTimeout(refresh, REFRESH_MS);
  }
}

setText("refresh-s", String(REFRESH_MS / 1000));
refresh();
