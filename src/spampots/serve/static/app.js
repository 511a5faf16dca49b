// spampots dashboard. Every string shown comes from an attacker: the page is built with
// createElement and textContent only (never innerHTML), and the CSP allows no inline script.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fb2", "#e07b39", "#3a9a5b", "#c0392b", "#8e6bbf", "#8c6d4f", "#d66fb0", "#7f8c8d",
                "#b8b236", "#2bb3c0", "#5d6d7e", "#f1c40f"];
// Tables whose rows lead to the sessions and messages they count: table -> row -> filters.
const DRILL = {
  ports: r => ({port: r.port, protocol: r.protocol}),
  ports_sessions: r => ({port: r.port}),
  top_countries: r => ({country: r.country}),
  top_asns: r => ({asn: r.asn || r.as_name}),
  per_sensor: r => ({sensor: r.sensor}),
  availability: r => ({sensor: r.sensor}),
  helo: r => (r.helo == null ? null : {helo: r.helo}),
  subjects: r => (r.subject == null ? null : {subject: r.subject}),
  campaigns: r => ({campaign: r.campaign}),
  daily: r => ({day: r.day}),
  port25_by_sensor: r => ({sensor: r.sensor}),
  port25_by_protocol: r => ({protocol: r.protocol}),
  port25_by_country: r => ({country: r.country}),
  port25_by_asn: r => (r.as_id && r.as_id !== "unknown" ? {asn: r.as_id} : null),
};
const TALK = ["summary", "ports", "ports_sessions", "outbound_http", "outbound_socks"];
const TOP = ["top_countries", "top_asns"];
const FIELDS = ["campaigns", "subjects", "helo", "sender_domains", "rcpt_domains", "target_mx", "credentials",
                "proxy_chains", "tls_sni", "limits"];
const P25 = ["port25_outcome", "port25_categories", "port25_by_protocol", "port25_by_sensor", "port25_by_month",
             "port25_by_country", "port25_by_asn", "port25_concentration"];

let overview = null;

// -- small helpers ----------------------------------------------------------------------------
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}
function titled(node, text) { const t = svg("title"); t.textContent = text; node.append(t); return node; }
function clear(id) { const e = document.getElementById(id); e.replaceChildren(); return e; }
function ready(name) {
  const p = document.querySelector(`[data-panel="${name}"]`);
  if (p) p.dataset.ready = "1";
  const all = [...document.querySelectorAll("[data-panel]")];
  if (all.every(x => x.dataset.ready) && !document.body.dataset.readyMs) {
    document.body.dataset.readyMs = String(Math.round(performance.now()));
  }
}
async function getJSON(url) {
  const r = await fetch(url, {credentials: "same-origin", cache: "no-store"});
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

// Control characters and bidi overrides shown as \xNN / \uNNNN, as the terminal report does.
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
function visible(s) {
  return String(s).replace(CONTROL, c => {
    const n = c.charCodeAt(0);
    return n < 0x100 ? "\\x" + n.toString(16).padStart(2, "0") : "\\u" + n.toString(16).padStart(4, "0");
  });
}
function group(n) { return Math.abs(n).toLocaleString("en-US", {maximumFractionDigits: 0}); }
function fmt(v, kind) {
  if (v === null || v === undefined) return "";
  if (kind === "int") return (v < 0 ? "-" : "") + group(Math.trunc(Number(v)));
  if (kind === "pct" || kind === "num") {
    const [whole, frac] = Math.abs(Number(v)).toFixed(2).split(".");
    return (Number(v) < 0 && Number(v).toFixed(2) !== "-0.00" ? "-" : "") + group(Number(whole)) + "." + frac;
  }
  return visible(v);
}
function plain(v) { return v === null || v === undefined ? "" : visible(v); }

// -- tables -----------------------------------------------------------------------------------
function table(result, name) {
  const wrap = el("div", {class: result.columns.length > 6 ? "result wide" : "result", "data-table": name});
  const cap = el("caption", {text: result.title});
  const t = el("table", {}, cap);
  const drill = DRILL[name];
  if (result.definition) wrap.append(el("details", {class: "def"}, el("summary", {text: "Definition"}),
                                        el("p", {text: result.definition})));
  if (name === "summary" || result.columns.length === 1) {  // vertical: one row as label/value pairs
    const row = result.rows[0] || {};
    for (const c of result.columns) {
      const td = el("td", {class: c.kind === "text" || c.kind === "date" ? "t" : "n", "data-key": c.key,
                           text: fmt(row[c.key], c.kind)});
      t.append(el("tr", {}, el("th", {text: c.label}), td));
    }
  } else {
    t.append(el("thead", {}, el("tr", {}, ...result.columns.map(c => el("th", {
      class: c.kind === "text" || c.kind === "date" ? "" : "n", text: c.label})))));
    const body = el("tbody");
    result.rows.forEach((row, i) => {
      const tr = el("tr", {}, ...result.columns.map(c => el("td", {
        class: c.kind === "text" || c.kind === "date" ? "t" : "n", "data-key": c.key, text: fmt(row[c.key], c.kind)})));
      const total = Object.values(row).some(v => v === "Total" || v === "total");
      if (total) tr.className = "total";
      const f = drill && !total ? drill(row) : null;
      if (f) { tr.classList.add("clickable"); tr.addEventListener("click", () => openDrill(f)); }
      body.append(tr);
      tr.dataset.row = String(i);
    });
    t.append(body);
  }
  wrap.append(t);
  if (result.note) wrap.append(el("p", {class: "muted", text: result.note}));
  return wrap;
}
function tables(containerId, doc, names) {
  const box = clear(containerId);
  const grid = el("div", {class: "tables"});
  for (const n of names) if (doc.tables[n]) grid.append(table(doc.tables[n], n));
  box.append(grid);
}

// -- charts -----------------------------------------------------------------------------------
function sparkline(id, values) {
  const box = clear(id);
  const n = values.length, max = Math.max(1, ...values);
  const s = svg("svg", {viewBox: `0 0 ${n * 4} 36`, preserveAspectRatio: "none", role: "img"});
  values.forEach((v, i) => {
    if (v > 0) s.append(titled(svg("rect", {x: i * 4, y: 36 - 34 * v / max, width: 3, height: 34 * v / max}), `${v}`));
  });
  box.append(s);
}

function stackedBars(box, data, onClick) {
  const W = 960, H = 280, L = 56, B = 28, T = 8;
  const pts = data.points, keys = data.keys;
  const totals = pts.map(p => keys.reduce((a, k) => a + (p.values[k] || 0), 0));
  const step = niceStep(Math.max(1, ...totals) / 4), max = step * 4;
  const s = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img"});
  const bw = (W - L - 4) / Math.max(1, pts.length);
  const y = v => T + (H - T - B) * (1 - v / max);
  for (let i = 0; i <= 4; i++) {  // one axis, from zero
    const v = step * i;
    s.append(svg("line", {x1: L, x2: W, y1: y(v), y2: y(v), class: "axis", "stroke-opacity": i ? .25 : 1}));
    const t = svg("text", {x: L - 4, y: y(v) + 4, "text-anchor": "end"});
    t.textContent = fmt(v, "int");
    s.append(t);
  }
  pts.forEach((p, i) => {
    let acc = 0;
    keys.forEach((k, j) => {
      const v = p.values[k] || 0;
      if (!v) return;
      const r = svg("rect", {x: L + i * bw + bw * .1, width: Math.max(.8, bw * .8), y: y(acc + v),
                             height: Math.max(.5, y(acc) - y(acc + v)), fill: COLORS[j % COLORS.length],
                             class: "clickable"});
      titled(r, `${p.t} ${visible(k)}: ${fmt(v, "int")}`);
      r.addEventListener("click", () => onClick(p.t, k));
      s.append(r);
      acc += v;
    });
  });
  const every = Math.max(1, Math.ceil(pts.length / 10));
  pts.forEach((p, i) => {
    if (i % every) return;
    const t = svg("text", {x: L + i * bw + bw / 2, y: H - 8, "text-anchor": "middle"});
    t.textContent = p.t;
    s.append(t);
  });
  box.append(s);
  const legend = el("div", {class: "legend"});
  keys.forEach((k, j) => {
    const sw = el("i");
    sw.style.background = COLORS[j % COLORS.length];
    legend.append(el("span", {}, sw, document.createTextNode(visible(k))));
  });
  box.append(legend);
}

function niceStep(x) {  // 1, 2 or 5 times a power of ten, at least 1
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(1, x))));
  return [1, 2, 5, 10].map(m => m * p).find(v => v >= x) || 10 * p;
}

async function loadSeries() {
  const measure = document.getElementById("series-measure").value;
  const bucket = document.getElementById("series-bucket").value;
  const split = document.getElementById("series-split").value;
  const box = clear("series-chart");
  let data;
  try {
    data = await getJSON(`/api/series?measure=${encodeURIComponent(measure)}&bucket=${encodeURIComponent(bucket)}` +
                         `&split=${encodeURIComponent(split)}`);
  } catch (e) {
    box.append(el("p", {class: "muted", text: "Not available for this choice."}));
    ready("series");
    return;
  }
  if (!data.points.length) box.append(el("p", {class: "muted", text: "No data."}));
  else stackedBars(box, data, (t, k) => {
    const f = {[bucket]: t};
    if (k !== "other") f[split] = k;
    openDrill(f);
  });
  ready("series");
}

async function drawMap() {
  const box = clear("map");
  const world = await getJSON("/static/world.json");
  const by = {};
  for (const c of overview.countries) by[c.country] = c;
  const max = Math.max(1, ...overview.countries.map(c => c.emails || 0));
  const s = svg("svg", {viewBox: "0 16 720 292", role: "img"});  // 82N to 56S: Antarctica left out
  for (const [cc, shape] of Object.entries(world)) {
    if (cc === "AQ") continue;
    const c = by[cc];
    const p = svg("path", {d: shape.d, "data-cc": cc, fill: "#e6e9ef"});
    const v = c ? (c.emails || 0) : 0;
    if (c) {  // sources but no email: the lightest shade
      p.setAttribute("class", "has");
      p.setAttribute("fill", v > 0 ? shade(.15 + .85 * Math.log1p(v) / Math.log1p(max)) : shade(0));
      p.addEventListener("click", () => openDrill({country: cc}));
    }
    titled(p, c ? `${shape.name} (${cc}): ${fmt(c.emails, "int")} emails, ${fmt(c.sources, "int")} source IPs`
                : `${shape.name} (${cc})`);
    s.append(p);
  }
  box.append(s);
  const off = overview.countries.filter(c => !world[c.country]);
  const legend = clear("map-legend");
  legend.append(el("span", {text: `Darker: more emails (log scale, top: ${fmt(max, "int")}).`}));
  if (off.length) legend.append(el("span", {text: " Not on the map: " + off.map(
    c => `${visible(c.country)} ${fmt(c.emails, "int")} emails / ${fmt(c.sources, "int")} IPs`).join("; ")}));
  ready("map");
}
function shade(f) {  // light blue to dark blue
  const a = [219, 233, 246], b = [8, 48, 107];
  return `rgb(${a.map((x, i) => Math.round(x + (b[i] - x) * f)).join(",")})`;
}

// -- panels -----------------------------------------------------------------------------------
let liveSensors = {};
function drawHealth() {
  if (!overview) return;
  const box = clear("health");
  const avail = overview.report.tables.availability;
  const interval = {};
  if (avail) for (const r of avail.rows) interval[r.sensor] = r.interval_s;
  // the lake's last heartbeat of each sensor, and newer ones (or a start) from the live stream
  const rows = {};
  for (const h of overview.health) rows[h.sensor] = {sensor: h.sensor, last_seen: h.last_heartbeat,
                                                     uptime_s: h.uptime_s, version: h.version};
  for (const [name, h] of Object.entries(liveSensors)) {
    if (!rows[name] || String(h.last_seen) > String(rows[name].last_seen)) rows[name] = {sensor: name, ...h};
    if (h.interval_s) interval[name] = h.interval_s;
  }
  const now = Date.now();
  const t = el("table", {}, el("caption", {text: "Last sign of life of each sensor (start or heartbeat)"}),
    el("thead", {}, el("tr", {}, ...["Sensor", "Status", "Last seen (UTC)", "Age", "Uptime", "Version"]
      .map(h => el("th", {text: h})))));
  const body = el("tbody");
  for (const h of Object.values(rows).sort((a, b) => String(a.sensor).localeCompare(String(b.sensor)))) {
    const ts = String(h.last_seen);
    const age = (now - Date.parse(ts.endsWith("Z") ? ts : ts + "Z")) / 1000;
    const up = age <= 2.5 * (interval[h.sensor] || 60);  // the availability table's tolerance
    body.append(el("tr", {},
      el("td", {class: "t", text: plain(h.sensor)}),
      el("td", {class: up ? "up" : "down", text: up ? "up" : "silent"}),
      el("td", {class: "t", text: ts.slice(0, 19).replace("T", " ")}),
      el("td", {class: "n", text: duration(age)}),
      el("td", {class: "n", text: duration(h.uptime_s)}),
      el("td", {class: "t", text: plain(h.version)})));
  }
  t.append(body);
  box.append(t);
  if (!Object.keys(rows).length) box.append(el("p", {class: "muted", text: "No heartbeats stored."}));
  if (avail) box.append(table(avail, "availability"));
  ready("health");
}
function duration(s) {
  if (s == null || isNaN(s)) return "";
  s = Math.max(0, Math.round(s));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

async function loadOverview() {
  const got = await fetch("/api/overview", {credentials: "same-origin", cache: "no-store"});
  if (got.status === 503) {  // being computed: the live stream says when they are ready
    document.getElementById("taken").textContent = "computing the figures…";
    return;
  }
  if (!got.ok) {
    document.getElementById("taken").textContent = `figures unavailable (${got.status})`;
    return;
  }
  overview = await got.json();
  document.getElementById("taken").textContent = `figures of ${overview.taken}`;
  tables("talk", overview.report, TALK); ready("talk");
  tables("top", overview.report, TOP); ready("top");
  if (overview.port25) {
    const stmt = overview.port25.tables.port25_statement;
    document.getElementById("statement").textContent = stmt && stmt.rows[0] ? stmt.rows[0].statement : "";
    tables("port25", overview.port25, P25); ready("port25");
  } else {
    document.getElementById("statement").textContent = "Computing the Port 25 Management figures…";
  }
  tables("campaigns", overview.report, FIELDS); ready("campaigns");
  drawHealth();
  await Promise.all([drawMap(), loadSeries()]);
}

// -- live -------------------------------------------------------------------------------------
function onLive(state) {
  document.getElementById("live-day").textContent = `(UTC day ${state.day})`;
  for (const k of ["sessions", "messages", "requests"]) {
    document.getElementById(`live-${k}`).textContent = fmt(state.totals[k], "int");
    const m = state.minutes.map(x => x[k]);
    document.getElementById(`live-${k}-min`).textContent = fmt(m[m.length - 1] || 0, "int");
    sparkline(`spark-${k}`, m);
  }
  liveSensors = state.sensors || {};
  drawHealth();
  ready("live");
}
// One load of the figures at a time; when it ends, another if the stream announced newer ones.
let announced = "", loading = null;
function reload() {
  if (loading) return;
  loading = loadOverview().catch(console.error).finally(() => {
    loading = null;
    if (announced && (!overview || overview.version < announced)) reload();
  });
}

let stream = null;
function follow() {
  if (stream) return;
  stream = new EventSource("/api/stream");
  stream.addEventListener("live", e => onLive(JSON.parse(e.data)));
  stream.addEventListener("figures", e => { announced = JSON.parse(e.data); reload(); });
}
// A page left (or kept in the back-forward cache) gives its stream back: a browser opens at
// most 6 connections to one server, and a stream holds one for as long as it is open.
window.addEventListener("pagehide", () => { if (stream) { stream.close(); stream = null; } });
window.addEventListener("pageshow", e => { if (e.persisted) follow(); });

// -- drill-down and message view --------------------------------------------------------------
function rowsTable(rows, cols, onRow) {
  const t = el("table", {}, el("thead", {}, el("tr", {}, ...cols.map(c => el("th", {text: c[1]})))));
  const body = el("tbody");
  for (const r of rows) {
    const tr = el("tr", {}, ...cols.map(c => el("td", {class: c[2] === "int" ? "n" : "t", "data-key": c[0],
                                                     text: fmt(r[c[0]], c[2] || "text")})));
    if (onRow) { tr.classList.add("clickable"); tr.addEventListener("click", () => onRow(r)); }
    body.append(tr);
  }
  t.append(body);
  return t;
}
async function openDrill(filters) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v !== null && v !== undefined) q.set(k, String(v));
  const sec = document.getElementById("drill");
  document.getElementById("drill-what").textContent =
    [...q.entries()].map(([k, v]) => `${k} = ${visible(v)}`).join(", ");
  sec.hidden = false;
  sec.dataset.ready = "";
  const data = await getJSON("/api/drill?" + q.toString());
  const msgs = clear("drill-messages"), sess = clear("drill-sessions");
  msgs.append(rowsTable(data.messages, [["ts", "Time (UTC)"], ["sensor", "Sensor"], ["src_ip", "Source"],
    ["port", "Port"], ["protocol", "Via"], ["helo", "HELO"], ["mail_from", "MAIL FROM"],
    ["rcpts", "Rcpts", "int"], ["subject", "Subject"], ["sha256", "SHA-256"]], r => openMessage(r.sha256)));
  if (data.messages.length >= data.limit) msgs.append(el("p", {class: "muted", text: `The newest ${data.limit}.`}));
  sess.append(rowsTable(data.sessions, [["ts", "Time (UTC)"], ["sensor", "Sensor"], ["session", "Session"],
    ["src_ip", "Source"], ["port", "Port"], ["country", "Country"], ["as_name", "AS"]],
    r => openDrill({session: r.session})));
  sec.dataset.ready = "1";
  sec.scrollIntoView();
}
async function openMessage(sha) {
  if (!/^[0-9a-f]{64}$/.test(sha || "")) return;
  const sec = document.getElementById("message");
  sec.hidden = false;
  sec.dataset.ready = "";
  const data = await getJSON(`/api/message/${sha}`);
  document.getElementById("message-sha").textContent = sha;
  document.getElementById("message-eml").setAttribute("href", `/api/message/${sha}/eml`);
  clear("message-events").append(rowsTable(data.events, [["ts", "Time (UTC)"], ["sensor", "Sensor"],
    ["src_ip", "Source"], ["port", "Port"], ["helo", "HELO"], ["mail_from", "MAIL FROM"],
    ["rcpts", "RCPT TO"], ["target_host", "Target"], ["size", "Bytes", "int"]]));
  const head = clear("message-headers"), body = clear("message-body");
  if (!data.message) {
    body.append(el("p", {class: "muted", text: "The message body is not in this data dir's store."}));
  } else {
    head.append(rowsTable(data.message.headers.map(([k, v]) => ({k, v})), [["k", "Header"], ["v", "Value"]]));
    for (const p of data.message.parts) {
      body.append(el("p", {class: "muted", text: `${visible(p.type)}, ${fmt(p.bytes, "int")} bytes decoded`}));
      body.append(el("pre", {class: "body", text: visible(p.text.replace(/\r\n/g, "\n"))}));
    }
    if (data.message.truncated) body.append(el("p", {class: "muted", text: "Cut short here; the .eml has it all."}));
  }
  sec.dataset.ready = "1";
  sec.scrollIntoView();
}

// -- start ------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["series-measure", "series-bucket", "series-split"]) {
    document.getElementById(id).addEventListener("change", () => loadSeries().catch(console.error));
  }
  document.getElementById("drill-close").addEventListener("click", () => { document.getElementById("drill").hidden = true; });
  document.getElementById("message-close").addEventListener("click", () => { document.getElementById("message").hidden = true; });
  follow();
  reload();
});
