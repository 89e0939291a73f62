// The dashboard page: widgets built once, then only their text and sparkline change, so updates never disturb the user.
//
// Layout (which KPIs, their periods and alert thresholds) lives in
// localStorage; `?kpis=a,b` preselects KPIs; with neither, the page shows
// every KPI the gateway knows (the demo's ten under `kpi-stack --demo`).
import { KpiStream, isValidTopic, cadenceMs } from "/kpistream.js";

const LAYOUT_KEY = "kpistream.dashboard.v1";
const SPARK_POINTS = 40;
/** Live values of the current bucket kept for the sparkline. */
const SPARK_TRAIL = 15;
const DEFAULT_MAX_WIDGETS = 12;
/** Quiet for longer than this (no update for the bucket), the age turns amber. */
const QUIET_MS = { minute: 120e3, hour: 600e3, day: 3600e3 };
// The refresh choices of a widget (a gateway accepts any <N>s/<N>m).
const CADENCES = ["live", "5s", "1m", "close"];

const params = new URLSearchParams(location.search);
const client = new KpiStream({ token: params.get("token") || undefined });
// Debug hook for tests and curious developers: the client and its seq log.
window.__kpistream = client;

const $ = (sel) => document.querySelector(sel);
const widgetsEl = $("#widgets");
const template = $("#widget-template");
const widgets = new Map(); // id -> Widget
let nextId = 1;
let userTouched = false;

const fmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const fmtDelta = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2, signDisplay: "never" });
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const show = (v) => (num(v) === null ? "–" : fmt.format(v));

// ---- layout ----

function loadLayout() {
  try {
    const l = JSON.parse(localStorage.getItem(LAYOUT_KEY) || "null");
    return l && Array.isArray(l.widgets) ? l.widgets.filter((w) => isValidTopic(w.kpi, w.period)) : null;
  } catch {
    return null;
  }
}

function saveLayout() {
  const list = [...widgets.values()].map((w) => ({
    kpi: w.kpi,
    period: w.period,
    cadence: w.cadence,
    above: w.above,
    below: w.below,
  }));
  try {
    localStorage.setItem(LAYOUT_KEY, JSON.stringify({ widgets: list }));
  } catch {
    /* storage unavailable: the layout just does not persist */
  }
}

function parseThreshold(v) {
  if (v === null || v === undefined || v === "") return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

// ---- widgets ----

class Widget {
  constructor({ kpi, period = "minute", cadence = "live", above = null, below = null }) {
    this.id = nextId++;
    this.kpi = kpi;
    this.period = period;
    // Anything else in a saved layout (an older page's) is live.
    this.cadence = CADENCES.includes(cadence) ? cadence : "live";
    this.lastAt = 0; // when the newest value arrived: when the next one is due
    this.above = parseThreshold(above);
    this.below = parseThreshold(below);
    this.msg = null;
    this.beyond = null; // "above" | "below" | null
    this.points = []; // [{t: ms, v}] sorted by bucket start: one per bucket
    this.trail = []; // live values within the current bucket, so the line moves before a bucket closes
    this.trailBucket = null;
    this.historyToken = 0;

    const el = template.content.firstElementChild.cloneNode(true);
    this.el = el;
    el.dataset.kpi = kpi;
    el.dataset.period = period;
    this.q = (s) => el.querySelector(s);
    this.q(".w-name").textContent = kpi;
    this.q(".w-name").title = kpi;
    this.periodSel = this.q(".w-period");
    this.periodSel.value = period;
    this.cadenceSel = this.q(".w-cadence");
    this.cadenceSel.value = this.cadence;
    el.dataset.cadence = this.cadence;
    this.aboveIn = this.q(".w-above");
    this.belowIn = this.q(".w-below");
    if (this.above !== null) this.aboveIn.value = String(this.above);
    if (this.below !== null) this.belowIn.value = String(this.below);

    this.periodSel.addEventListener("change", () => this.switchPeriod(this.periodSel.value));
    this.cadenceSel.addEventListener("change", () => this.setCadence(this.cadenceSel.value));
    this.q(".w-remove").addEventListener("click", () => removeWidget(this));
    const onThreshold = () => {
      this.above = parseThreshold(this.aboveIn.value);
      this.below = parseThreshold(this.belowIn.value);
      userTouched = true;
      saveLayout();
      // A new threshold sets the marker quietly; notices are for moves.
      this.evaluate(false);
    };
    this.aboveIn.addEventListener("change", onThreshold);
    this.belowIn.addEventListener("change", onThreshold);

    this.sub = client.subscribe(kpi, period, (m, meta) => this.onMessage(m, meta), {
      cadence: this.cadence,
      encoding: "delta",
    });
    this.loadHistory();
  }

  setCadence(cadence) {
    if (!CADENCES.includes(cadence) || cadence === this.cadence) return;
    this.cadence = cadence;
    this.el.dataset.cadence = cadence;
    this.sub.setOptions({ cadence });
    userTouched = true;
    saveLayout();
    this.tick();
  }

  switchPeriod(period) {
    if (!isValidTopic(this.kpi, period) || period === this.period) return;
    this.period = period;
    this.el.dataset.period = period;
    this.msg = null;
    this.beyond = null;
    this.points = [];
    this.trail = [];
    this.trailBucket = null;
    this.render(null, { source: "none", stale: true });
    this.sub.switchPeriod(period);
    this.loadHistory();
    userTouched = true;
    saveLayout();
  }

  async loadHistory() {
    const token = ++this.historyToken;
    const period = this.period;
    try {
      const buckets = await client.history(this.kpi, period, SPARK_POINTS);
      if (token !== this.historyToken) return;
      for (const b of buckets) this.addPoint(b.bucket_start, b.stats && b.stats.last, false);
      this.drawSpark();
    } catch {
      /* the sparkline fills from live updates instead */
    }
  }

  /** Adds or replaces one bucket's point; live values replace history for the same bucket. */
  addPoint(bucketStart, v, replace = true) {
    const t = Date.parse(bucketStart);
    if (!Number.isFinite(t) || num(v) === null) return;
    const i = this.points.findIndex((p) => p.t === t);
    if (i >= 0) {
      if (replace) this.points[i].v = v;
    } else {
      this.points.push({ t, v });
      this.points.sort((a, b) => a.t - b.t);
      if (this.points.length > SPARK_POINTS) this.points.splice(0, this.points.length - SPARK_POINTS);
    }
  }

  onMessage(m, meta) {
    if (m.kpi !== this.kpi || m.period !== this.period) return;
    if (meta.source !== "cache") this.lastAt = Date.now();
    const before = this.msg;
    this.msg = m;
    if (m.previous && m.previous.stats) this.addPoint(m.previous.bucket_start, m.previous.stats.last, false);
    if (m.seq > 0) {
      this.addPoint(m.bucket_start, m.stats && m.stats.last, true);
      const t = Date.parse(m.bucket_start);
      const v = num(m.stats && m.stats.last);
      // A correction of a closed bucket (older start) changes its point, not the trail.
      if (v !== null && (this.trailBucket === null || t >= this.trailBucket)) {
        if (t !== this.trailBucket) (this.trail = []), (this.trailBucket = t);
        this.trail.push(v);
        if (this.trail.length > SPARK_TRAIL) this.trail.shift();
      }
    }
    this.render(before, meta);
    this.drawSpark();
    this.evaluate(meta.source !== "cache" && before !== null);
  }

  render(before, meta) {
    const m = this.msg;
    const el = this.el;
    const s = (m && m.stats) || {};
    const valueEl = this.q(".w-value");
    const last = m && m.seq > 0 ? num(s.last) : null;
    valueEl.textContent = show(last);
    el.dataset.value = last === null ? "" : String(last);
    el.dataset.seq = m ? String(m.seq) : "";
    el.dataset.bucketStart = m ? m.bucket_start : "";
    el.dataset.source = meta.source;
    el.dataset.count = m && m.seq > 0 ? String(s.count ?? "") : "";

    const prev = m && m.previous && m.previous.stats ? num(m.previous.stats.last) : null;
    const change = this.q(".w-change");
    if (last !== null && prev !== null) {
      const d = last - prev;
      const dir = d > 0 ? "up" : d < 0 ? "down" : "flat";
      change.dataset.dir = dir;
      this.q(".w-arrow").textContent = dir === "up" ? "▲" : dir === "down" ? "▼" : "▬";
      const pct = prev !== 0 ? ` (${fmtDelta.format((Math.abs(d) / Math.abs(prev)) * 100)}%)` : "";
      this.q(".w-delta").textContent = `${fmtDelta.format(Math.abs(d))}${pct}`;
      change.title = `vs previous ${this.period}: ${show(prev)}`;
    } else {
      change.dataset.dir = "none";
      this.q(".w-arrow").textContent = "";
      this.q(".w-delta").textContent = last === null ? "" : `first ${this.period}`;
      change.title = "";
    }
    const has = m && m.seq > 0;
    this.q(".w-avg").textContent = has ? `avg ${show(s.avg)}` : "";
    this.q(".w-min").textContent = has ? `min ${show(s.min)}` : "";
    this.q(".w-max").textContent = has ? `max ${show(s.max)}` : "";
    this.q(".w-count").textContent = has ? `n ${fmt.format(s.count ?? 0)}` : "";

    // A short highlight on a changed value; the Web Animations API needs no re-layout.
    const changed = before && last !== null && num(before.stats && before.stats.last) !== last;
    if (changed && meta.source !== "cache" && !matchMedia("(prefers-reduced-motion: reduce)").matches) {
      const up = last > num(before.stats.last);
      valueEl.animate(
        [{ backgroundColor: up ? "#16803c33" : "#c6282833" }, { backgroundColor: "transparent" }],
        { duration: 900, easing: "ease-out" },
      );
    }
    this.tick();
  }

  drawSpark() {
    // Closed buckets, then the current bucket's recent live values.
    const closed = this.points.filter((p) => this.trailBucket === null || p.t < this.trailBucket);
    const current = this.trail.length ? this.trail : this.points.filter((p) => p.t === this.trailBucket).map((p) => p.v);
    const pts = [...closed.slice(-(SPARK_POINTS - current.length)).map((p) => p.v), ...current].map((v) => ({ v }));
    const line = this.q(".w-spark .line");
    const area = this.q(".w-spark .area");
    const dot = this.q(".w-spark .now");
    if (pts.length === 0) {
      line.setAttribute("d", "");
      area.setAttribute("d", "");
      dot.setAttribute("visibility", "hidden");
      return;
    }
    const W = 200, H = 44, pad = 4;
    let lo = Math.min(...pts.map((p) => p.v));
    let hi = Math.max(...pts.map((p) => p.v));
    if (hi === lo) (hi += 1), (lo -= 1);
    const x = (i) => (pts.length === 1 ? W : (i / (pts.length - 1)) * W);
    const y = (v) => pad + (1 - (v - lo) / (hi - lo)) * (H - 2 * pad);
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    line.setAttribute("d", d);
    area.setAttribute("d", `${d}L${x(pts.length - 1).toFixed(1)},${H}L${x(0).toFixed(1)},${H}Z`);
    dot.setAttribute("cx", x(pts.length - 1).toFixed(1));
    dot.setAttribute("cy", y(pts[pts.length - 1].v).toFixed(1));
    dot.setAttribute("visibility", "visible");
  }

  /** Threshold state; a notice only when the value moves past a threshold. */
  evaluate(notify) {
    const m = this.msg;
    const v = m && m.seq > 0 ? num(m.stats && m.stats.last) : null;
    let now = null;
    if (v !== null && this.above !== null && v > this.above) now = "above";
    else if (v !== null && this.below !== null && v < this.below) now = "below";
    if (now && now !== this.beyond && notify) notice(this, now, v);
    this.beyond = now;
    this.el.classList.toggle("alert-above", now === "above");
    this.el.classList.toggle("alert-below", now === "below");
  }

  /** Once a second: age text, the stale marker and when a throttled value is due. */
  tick() {
    const every = cadenceMs(this.cadence);
    const due = this.q(".w-due");
    if (every !== null && this.lastAt > 0) {
      const left = Math.max(0, Math.ceil((this.lastAt + every - Date.now()) / 1000));
      due.textContent = left > 0 ? `next in ≤ ${left} s` : "next on change";
    } else {
      due.textContent = this.cadence === "close" ? `next when the ${this.period} closes` : "";
    }
    const m = this.msg;
    const stale = !this.sub.fresh;
    this.el.classList.toggle("stale", stale);
    this.el.dataset.stale = String(stale);
    const age = this.q(".w-age");
    if (!m || m.seq === 0) {
      age.textContent = stale ? "waiting for data…" : "no data yet";
      age.classList.remove("quiet");
      return;
    }
    const ms = Math.max(0, Date.now() - Date.parse(m.updated_at));
    age.textContent = `updated ${ago(ms)}`;
    age.title = `event ${m.event_time} · published ${m.updated_at} · seq ${m.seq}`;
    age.classList.toggle("quiet", ms > (QUIET_MS[this.period] ?? 120e3));
  }

  destroy() {
    this.sub.unsubscribe();
    this.el.remove();
  }
}

function ago(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s ago`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  return h < 48 ? `${h} h ago` : `${Math.round(h / 24)} d ago`;
}

function addWidget(spec) {
  const w = new Widget(spec);
  widgets.set(w.id, w);
  widgetsEl.appendChild(w.el);
  $("#empty").hidden = true;
  return w;
}

function removeWidget(w) {
  w.destroy();
  widgets.delete(w.id);
  userTouched = true;
  saveLayout();
  $("#empty").hidden = widgets.size > 0;
}

// ---- notices ----

function notice(w, dir, v) {
  const box = $("#notices");
  const n = document.createElement("div");
  n.className = "notice";
  n.dataset.dir = dir;
  n.dataset.kpi = w.kpi;
  const text = document.createElement("span");
  const limit = dir === "above" ? w.above : w.below;
  text.textContent = `${w.kpi} (${w.period}) ${dir === "above" ? "rose above" : "fell below"} ${show(limit)}: now ${show(v)}`;
  const close = document.createElement("button");
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => n.remove());
  n.append(text, close);
  box.appendChild(n);
  while (box.children.length > 5) box.firstElementChild.remove();
  setTimeout(() => n.remove(), 20000);
}

// ---- header: status, pause, picker ----

const statusEl = $("#status");
client.on("status", (s) => {
  statusEl.dataset.state = s.state;
  statusEl.dataset.transport = s.transport;
  const via = { ws: "WebSocket", sse: "SSE fallback", poll: "polling fallback" }[s.transport] ?? s.transport;
  let text;
  if (s.state === "live") text = `live · ${via}`;
  else if (s.state === "offline") text = "offline — showing last known values";
  else if (s.state === "reconnecting")
    text = s.retryInMs > 1500 ? `reconnecting in ${Math.ceil(s.retryInMs / 1000)} s…` : "reconnecting…";
  else text = "connecting…";
  if (s.paused) text += " · paused";
  statusEl.querySelector(".status-text").textContent = text;
  for (const w of widgets.values()) w.tick();
});

const pauseBtn = $("#pause");
pauseBtn.addEventListener("click", () => {
  if (client.paused) client.resume();
  else client.pause();
  pauseBtn.setAttribute("aria-pressed", String(client.paused));
  pauseBtn.textContent = client.paused ? "Resume" : "Pause";
});

$("#picker").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("#pick-kpi");
  const kpi = input.value.trim();
  const period = $("#pick-period").value;
  if (!isValidTopic(kpi, period)) {
    input.setCustomValidity("1 to 64 characters: letters, digits, _ and -");
    input.reportValidity();
    return;
  }
  input.setCustomValidity("");
  userTouched = true;
  addWidget({ kpi, period });
  saveLayout();
  input.value = "";
});
$("#pick-kpi").addEventListener("input", (e) => e.target.setCustomValidity(""));

async function refreshKpiList() {
  try {
    const codes = await client.kpis();
    const list = $("#kpi-list");
    const have = new Set([...list.options].map((o) => o.value));
    for (const c of codes) {
      if (!have.has(c)) {
        const o = document.createElement("option");
        o.value = c;
        list.appendChild(o);
      }
    }
    return codes;
  } catch {
    return null;
  }
}

// ---- start ----

async function start() {
  const fromUrl = (params.get("kpis") || "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => isValidTopic(s, "minute"));
  const saved = loadLayout();
  if (fromUrl.length) {
    const bySaved = new Map((saved ?? []).map((w) => [w.kpi, w]));
    for (const kpi of new Set(fromUrl)) addWidget(bySaved.get(kpi) ?? { kpi, period: "minute" });
  } else if (saved && saved.length) {
    for (const w of saved) addWidget(w);
  }
  setInterval(refreshKpiList, 30000);
  setInterval(() => {
    for (const w of widgets.values()) w.tick();
  }, 1000);
  // Nothing chosen yet: show what the gateway knows, as soon as it knows something.
  let codes = await refreshKpiList();
  while (widgets.size === 0 && !userTouched) {
    if (codes && codes.length) {
      for (const kpi of codes.slice(0, DEFAULT_MAX_WIDGETS)) addWidget({ kpi, period: "minute" });
      break;
    }
    $("#empty").hidden = false;
    await new Promise((r) => setTimeout(r, 2000));
    codes = await refreshKpiList();
  }
}

start();
