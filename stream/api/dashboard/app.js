// musicrec live dashboard: polls the read API once a second; no framework, no build step.
// Every value from the API goes into the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 1000;
const EVENTS_REFRESH_MS = 10000; // the event log is re-read when the user's list changes, else this often
const RATE_HISTORY = 180;        // sparkline points (3 minutes at one poll a second)

const $ = (id) => document.getElementById(id);
const rateHistory = [];
const userState = { id: null, valueKey: null, eventsAt: 0 };
let plotShown = false;

// With MUSICREC_API_KEY set, every data endpoint needs "Authorization: Bearer <key>". The page asks
// once, on the first 401, and keeps the key for this browser tab's session only (sessionStorage).
const KEY_ITEM = "musicrec-api-key";
function authHeaders() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { Authorization: `Bearer ${key}` } : {};
}
function askForKey(message) {
  $("key-form").hidden = false;
  text("key-error", message || "");
  if (document.activeElement !== $("key-input")) $("key-input").focus();
}
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  plotShown = false;
});

async function authorizedFetch(url) {
  const response = await fetch(url, { cache: "no-store", headers: authHeaders() });
  if (response.status === 401) {
    const hadKey = sessionStorage.getItem(KEY_ITEM) !== null;
    sessionStorage.removeItem(KEY_ITEM);
    askForKey(hadKey ? "that key was refused" : "");
    throw new Error("API key needed");
  }
  return response;
}

async function getJSON(url) {
  const response = await authorizedFetch(url);
  let body = {};
  try { body = await response.json(); } catch (_) { /* a non-JSON error page: fall back to the status */ }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function text(id, value) { $(id).textContent = value; }
function seconds(v) { return v === null || v === undefined ? "–" : v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`; }
function number(v) { return v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"); }
function utc(ts) { return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"; }
function ago(ts) { const s = Date.now() / 1000 - ts; return s < 90 ? `${Math.max(0, s).toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`; }

function setStatus(kind, label) {
  const el = $("status");
  el.className = `pill ${kind}`;
  el.textContent = label;
}

function drawSpark() {
  const canvas = $("rate-spark");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (rateHistory.length < 2) return;
  const max = Math.max(1, ...rateHistory);
  ctx.strokeStyle = "#3a5bd9";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  const step = canvas.width / (RATE_HISTORY - 1);
  const offset = canvas.width - (rateHistory.length - 1) * step; // newest point on the right edge
  rateHistory.forEach((v, i) => {
    const x = offset + i * step;
    const y = canvas.height - 2 - (v / max) * (canvas.height - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function renderGate(metrics) {
  const body = $("gate-metrics").querySelector("tbody");
  body.replaceChildren();
  const gate = metrics && metrics.gate;
  if (!gate || typeof gate !== "object") {
    text("gate-reason", metrics && metrics.error ? metrics.error : "no gate metrics recorded for this version");
    return;
  }
  text("gate-reason", `retrain gate: ${gate.publish ? "publish" : "hold back"} (${gate.reason || "no reason given"})`);
  const candidate = gate.candidate || {};
  const served = gate.served || {};
  for (const name of Object.keys(candidate)) {
    const row = document.createElement("tr");
    for (const cell of [name, candidate[name], served[name]]) {
      const td = document.createElement("td");
      td.textContent = typeof cell === "number" ? (Number.isInteger(cell) ? String(cell) : cell.toFixed(4)) : (cell ?? "–");
      row.appendChild(td);
    }
    body.appendChild(row);
  }
}

function renderOverview(o) {
  const live = o.workers.filter((w) => !w.stale);
  if (!o.redis.ok) setStatus("bad", "Redis unreachable");
  else if (live.length === 0) setStatus("warn", "no live worker");
  else if (o.model.published && o.model.served !== o.model.published) setStatus("warn", "index loading");
  else setStatus("ok", "live");

  text("events-per-s", o.events_per_s.toFixed(o.events_per_s < 10 ? 1 : 0));
  rateHistory.push(o.events_per_s);
  if (rateHistory.length > RATE_HISTORY) rateHistory.shift();
  drawSpark();
  text("freshness-p50", seconds(o.freshness.p50_s));
  text("freshness-p99", seconds(o.freshness.p99_s));
  text("freshness-n", `event → Redis, ${number(o.freshness.samples)} sampled writes in the last ${o.freshness.window_s / 60} min`);
  text("dlq", number(o.dlq));
  text("lag", o.lag.available ? number(o.lag.total) : "n/a");
  text("lag-note", o.lag.available ? `${Object.keys(o.lag.partitions).length} partitions` : (o.lag.error || ""));
  text("workers", `${live.length}`);
  text("workers-note", o.workers.map((w) => `${w.worker}: ${number(w.events)} events, ${w.age_s.toFixed(0)} s ago`).join(" · "));
  text("model-version", o.model.published || "none");
  text("model-served", o.model.served || "not loaded");
  text("model-kind", o.model.kind ? `${o.model.kind}, trained ${utc(o.model.created_at)} UTC` : "");
  text("index-songs", number(o.model.index_songs));
  text("updated", `updated ${new Date().toLocaleTimeString()}`);
  renderGate(o.model.metrics);
  renderAB(o.ab || { running: false });

  renderHistory(o.history);
  if (o.report.prequential_png && !plotShown) {
    plotShown = true;
    showPlot().catch(() => { plotShown = false; }); // e.g. replaced while being read: try on a later poll
  }
}

async function showPlot() {
  // fetched with the key (an <img src> cannot send it), shown from a blob URL
  const response = await authorizedFetch(`/reports/prequential.png?t=${Date.now()}`);
  if (!response.ok) throw new Error(`${response.status}`);
  const img = $("plot");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.onload = () => { img.hidden = false; $("plot-placeholder").hidden = true; };
  img.src = URL.createObjectURL(await response.blob());
}

// The last 15 minutes, one point per 10 s bucket: events/s, and freshness p50/p99 (gaps where no
// write was sampled). Time runs left to right over the whole span; the newest bucket is on the right.
function drawSeries(canvasId, t, series, span, unit) {
  const canvas = $(canvasId);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const values = series.flatMap((s) => s.values.filter((v) => v !== null));
  const max = Math.max(unit === "s" ? 0.1 : 1, ...values);
  const end = t.length ? t[t.length - 1] : Date.now() / 1000;
  const x = (ts) => canvas.width * (1 - (end - ts) / span);
  const y = (v) => canvas.height - 14 - (v / max) * (canvas.height - 20);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#777";
  ctx.fillText(unit === "s" ? seconds(max) : number(Math.round(max)), 2, 10);
  ctx.fillText("-15 min", 2, canvas.height - 2);
  ctx.fillText("now", canvas.width - 22, canvas.height - 2);
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    s.values.forEach((v, i) => {
      if (v === null) { drawing = false; return; }
      if (drawing) ctx.lineTo(x(t[i]), y(v)); else ctx.moveTo(x(t[i]), y(v));
      drawing = true;
    });
    ctx.stroke();
  }
}

function renderHistory(h) {
  if (!h) return;
  drawSeries("history-rate", h.t, [{ values: h.events_per_s, color: "#3a5bd9" }], h.span_s, "ev/s");
  drawSeries("history-freshness", h.t, [{ values: h.freshness_p50_s, color: "#2a9d5c" },
                                        { values: h.freshness_p99_s, color: "#d9822b" }], h.span_s, "s");
  const rates = h.events_per_s;
  const mean = rates.length ? rates.reduce((a, b) => a + b, 0) / rates.length : 0;
  text("history-note", `${rates.length} buckets of ${h.bucket_s} s · mean ${mean.toFixed(1)} events/s`);
}

function renderAB(ab) {
  if (!ab.running) { text("ab", ab.error ? `A/B: ${ab.error}` : "no A/B test running"); return; }
  const arm = (name) => {
    const a = ab.arms[name];
    return `${name} ${(100 * a.hit_rate).toFixed(2)}% hits (${number(a.hits)} / ${number(a.plays)} plays)`;
  };
  text("ab", `A/B test: ${(100 * ab.share).toFixed(0)}% of users get ${ab.treatment} · ${arm("control")} · ` +
             `${arm("treatment")}` + (ab.lift ? ` · lift ${ab.lift.toFixed(3)}` : ""));
}

function renderRecs(r) {
  $("user-view").hidden = false;
  text("recs-user", r.user_id);
  text("recs-version", r.model_version || "nothing written yet");
  const updated = $("recs-updated");
  updated.dataset.ts = String(r.updated_at);
  updated.textContent = r.updated_at === null ? "–" : `${utc(r.updated_at)} UTC (${ago(r.updated_at)})`;
  const last = r.last_event;
  text("recs-last-event", last && last.event_id ? last.event_id : "–");
  text("recs-freshness", last && last.produced_at ? `freshness ${seconds(r.updated_at - last.produced_at)}` : "");
  $("recs-fallback").hidden = !r.fallback;
  $("recs-arm").hidden = r.arm === null || r.arm === undefined;
  text("recs-arm", r.arm ? `arm ${r.arm}` : "");

  const list = $("recs-list");
  const key = `${r.updated_at}|${r.model_version}|${r.items.map((i) => i.song_id).join(",")}`;
  if (list.dataset.key === key) return;
  const changed = list.dataset.key !== undefined;
  list.dataset.key = key;
  list.replaceChildren(...r.items.map((item) => {
    const li = document.createElement("li");
    li.setAttribute("data-testid", "rec");
    li.dataset.song = item.song_id;
    const name = document.createElement("b");
    name.textContent = item.song_id;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = item.score === null ? "" : item.score.toFixed(3);
    li.append(name, score);
    if (item.because) {
      const why = document.createElement("span");
      why.className = "because";
      why.textContent = item.because;
      li.appendChild(why);
    }
    if (changed) li.classList.add("flash");
    return li;
  }));
}

function renderEvents(e) {
  const body = $("events-table").querySelector("tbody");
  body.replaceChildren(...e.events.map((ev) => {
    const row = document.createElement("tr");
    row.setAttribute("data-testid", "event");
    for (const cell of [utc(ev.ts), ev.event, ev.song_id, ev.ms_played === null ? "–" : `${(ev.ms_played / 1000).toFixed(0)} s`]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.appendChild(td);
    }
    return row;
  }));
}

async function pollOverview() {
  try {
    renderOverview(await getJSON("/overview"));
  } catch (err) {
    setStatus("bad", `API unreachable: ${err.message}`);
  } finally {
    setTimeout(pollOverview, POLL_MS);
  }
}

async function pollUser() {
  const id = userState.id;
  if (id !== null) {
    const path = encodeURIComponent(id);
    try {
      const recs = await getJSON(`/recs/${path}?k=10`);
      if (userState.id !== id) return; // the lookup changed while this request was in flight
      renderRecs(recs);
      text("user-error", "");
      // a new event for the user rewrites its list, so the log is re-read when the list changes
      const valueKey = `${recs.updated_at}|${recs.last_event ? recs.last_event.event_id : ""}`;
      if (valueKey !== userState.valueKey || Date.now() - userState.eventsAt > EVENTS_REFRESH_MS) {
        const events = await getJSON(`/users/${path}/events?n=10`);
        if (userState.id !== id) return;
        renderEvents(events);
        userState.valueKey = valueKey;
        userState.eventsAt = Date.now();
      }
    } catch (err) {
      text("user-error", err.message);
    }
  }
}

async function userLoop() {
  await pollUser();
  setTimeout(userLoop, POLL_MS);
}

$("lookup").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("user-input").value.trim();
  if (!id) return;
  Object.assign(userState, { id, valueKey: null, eventsAt: 0 });
  delete $("recs-list").dataset.key;
  $("recs-list").replaceChildren();
  $("events-table").querySelector("tbody").replaceChildren();
  pollUser();
});

pollOverview();
userLoop();
