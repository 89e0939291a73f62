/**
 * kpistream.js — the browser client of the kpistream gateway.
 *
 * GENERATED FILE, do not edit: built from the TypeScript package in
 * clients/js (src/*.ts) by `npm run build` there. To change it, edit
 * clients/js/src and run `cd clients/js && npm ci && npm run build`;
 * `npm run check-built` (run by scripts/test) fails while this copy is stale.
 * It is committed so that `cargo build` needs no Node.js.
 *
 * A plain ES module with no dependencies, served by every gateway at the
 * stable path `/kpistream.js` (npm users: `import { KpiStream } from "kpistream"`,
 * which also carries the TypeScript types and a React hook):
 *
 *     import { KpiStream } from "https://gateway.example/kpistream.js";
 *
 *     const c = new KpiStream({ url: "https://gateway.example", token });
 *     const sub = c.subscribe("revenue_eur", "minute", (msg, meta) => {
 *       // msg: the gateway's data message {type, kpi, period, seq, bucket_start,
 *       //      stats:{count,sum,avg,min,max,last}, previous, event_time, updated_at}
 *       // meta: {source: "ws"|"sse"|"poll"|"cache"|"memory", stale: boolean}
 *     });
 *     // Optional 4th argument: {cadence: "live" (default) | "<N>s" | "<N>m" |
 *     //   "close", encoding: "full" (default) | "delta"}. A throttled
 *     //   subscription hears at most once per N (the newest value); "close"
 *     //   once per closed bucket plus corrections; "delta" asks the gateway
 *     //   for merge patches, applied here (callbacks always get full messages).
 *     //   Handles sharing a kpi+period share the most frequent cadence.
 *     sub.setOptions({ cadence: "5s" }); // resubscribes with the new cadence
 *     sub.switchPeriod("hour");  // unsubscribe + subscribe, same callback
 *     sub.pause(); sub.resume(); // this subscription only (client side)
 *     sub.unsubscribe();
 *     c.pause(); c.resume();     // everything (the gateway conflates meanwhile)
 *     const off = c.on("status", (s) => console.log(s.state, s.transport));
 *     c.close();
 *
 * Options of `new KpiStream(options)` (see KpiStreamOptions in clients/js/src/client.ts):
 * url, token, getToken, transports (["ws", "sse", "poll"]), openTimeoutMs,
 * fallbackAfter, upgradeEveryMs, baseBackoffMs, maxBackoffMs, pollWaitSecs,
 * pollIntervalMs, maxStreams, pingEveryMs, pongTimeoutMs, cache, storagePrefix.
 *
 * Guarantees to a callback: it is never called with a lower `seq` than a
 * previous call for the same kpi+period (a repeat of the same seq is not
 * delivered either), except when the gateway's history was wiped and it
 * restarted its counter: a snapshot with a lower seq but a later
 * `updated_at` is then taken as the new truth. After a reconnect the client
 * resumes every subscription with `since` = the last seq it saw, on the
 * gateway it reaches (the same or another one).
 *
 * Events of `c.on(name, fn)`: "status" {state: "connecting"|"live"|
 * "reconnecting"|"offline", transport, paused, attempt, retryInMs},
 * "error" (an error message from the gateway), "message" (every applied
 * message), "system" (an admin broadcast). `sub.fresh` is true while the
 * gateway confirms the subscription on a live connection; a value shown while
 * it is false may be out of date. `c.log` holds the last 5000 events
 * (applied/skipped seqs, transport changes) for debugging and tests.
 */

// clients/js/src/backoff.ts
function backoffCeiling(failures, o) {
  return Math.min(o.maxBackoffMs, o.baseBackoffMs * 2 ** Math.min(failures, 20));
}
function backoffDelay(failures, o, random) {
  return random() * backoffCeiling(failures, o);
}

// clients/js/src/topic.ts
var keyOf = (kpi, period) => `${kpi}\0${period}`;
function sinceOf(topic) {
  return topic.last && !topic.fromCache && topic.last.seq > 0 ? topic.last.seq : void 0;
}
function modeParams(topic) {
  const p = {};
  if (topic.cadence !== "live") p.cadence = topic.cadence;
  if (topic.encoding === "delta") p.encoding = "delta";
  return p;
}
function isData(m) {
  if (m === null || typeof m !== "object") return false;
  const o = m;
  return (o.type === "snapshot" || o.type === "update") && typeof o.seq === "number" && Number.isSafeInteger(o.seq) && o.seq >= 0 && typeof o.kpi === "string" && typeof o.period === "string";
}

// clients/js/src/cache.ts
var FLUSH_MS = 1e3;
var OfflineCache = class {
  /**
   * @param identity whose values these are: the gateway's origin and the
   *   token's subject, asked anew each time (the token may change).
   */
  constructor(env, enabled, prefix, identity) {
    this.env = env;
    this.prefix = prefix;
    this.identity = identity;
    this.storage = enabled ? env.storage : null;
  }
  env;
  prefix;
  identity;
  storage;
  dirty = /* @__PURE__ */ new Set();
  flushTimer = null;
  get enabled() {
    return this.storage !== null;
  }
  keyOf(kpi, period) {
    return `${this.prefix}${this.identity()}|${kpi}:${period}`;
  }
  /** The cached message of a kpi+period for the current identity, or null. */
  read(kpi, period) {
    if (!this.storage) return null;
    try {
      const m = JSON.parse(this.storage.getItem(this.keyOf(kpi, period)) ?? "null");
      return isData(m) && m.kpi === kpi && m.period === period ? m : null;
    } catch {
      return null;
    }
  }
  /** Writes are batched: the topic's `last` is written at the next flush. */
  markDirty(topic) {
    if (!this.storage) return;
    this.dirty.add(topic);
    if (this.flushTimer === null) this.flushTimer = this.env.setTimeout(() => this.flush(), FLUSH_MS);
  }
  flush() {
    if (this.flushTimer !== null) this.env.clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const storage = this.storage;
    if (storage) {
      for (const t of this.dirty) {
        try {
          if (t.last) storage.setItem(this.keyOf(t.kpi, t.period), JSON.stringify(t.last));
        } catch {
        }
      }
    }
    this.dirty.clear();
  }
  /** Drops unwritten values: they were read with another identity's token. */
  dropPending() {
    this.dirty.clear();
  }
  /** Forgets every cached value of the current identity: it may no longer read some of them. */
  clear() {
    const storage = this.storage;
    if (!storage) return;
    const prefix = `${this.prefix}${this.identity()}|`;
    try {
      const keys = [];
      for (let i = 0; i < storage.length; i++) {
        const k = storage.key(i);
        if (k && k.startsWith(prefix)) keys.push(k);
      }
      for (const k of keys) storage.removeItem(k);
    } catch {
    }
    this.dirty.clear();
  }
};

// clients/js/src/env.ts
function probeStorage() {
  try {
    const s = globalThis.localStorage;
    if (!s) return null;
    const probe = "kpistream:probe";
    s.setItem(probe, "1");
    s.removeItem(probe);
    return s;
  } catch {
    return null;
  }
}
function resolveEnvironment(overrides = {}) {
  const g = globalThis;
  const base = {
    now: () => Date.now(),
    random: () => Math.random(),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (id) => globalThis.clearTimeout(id),
    setInterval: (fn, ms) => globalThis.setInterval(fn, ms),
    clearInterval: (id) => globalThis.clearInterval(id),
    WebSocket: g.WebSocket ?? null,
    EventSource: g.EventSource ?? null,
    fetch: g.fetch ? (url, init) => g.fetch(url, init) : null,
    storage: "storage" in overrides ? null : probeStorage(),
    events: typeof g.addEventListener === "function" ? globalThis : null,
    online: () => g.navigator?.onLine !== false,
    origin: g.location?.origin ?? "http://127.0.0.1:8080",
    reportError: (what, error) => console.error(what, error)
  };
  return { ...base, ...overrides };
}

// clients/js/src/merge-patch.ts
var isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
function applyMergePatch(target, patch) {
  if (!isObject(patch)) return patch;
  const out = isObject(target) ? target : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}
var STAT_FIELDS = ["avg", "min", "max", "last"];
function restoreStats(stats) {
  if (!stats) return;
  for (const f of STAT_FIELDS) stats[f] ??= null;
}
function restoreNulls(m) {
  const loose = m;
  loose.previous ??= null;
  loose.event_time ??= null;
  restoreStats(loose.stats);
  if (loose.previous) restoreStats(loose.previous.stats);
  return m;
}
function unpatch(base, p) {
  const copy = JSON.parse(JSON.stringify(base));
  const full = applyMergePatch(copy, p.patch);
  full.type = "update";
  full.seq = p.seq;
  return restoreNulls(full);
}

// clients/js/src/options.ts
var PERIODS = ["minute", "hour", "day"];
var CODE_RE = /^[A-Za-z0-9_-]{1,64}$/;
var CADENCE_RE = /^(live|close|[1-9][0-9]{0,5}[sm])$/;
var MAX_CADENCE_MS = 864e5;
function isPeriod(period) {
  return typeof period === "string" && PERIODS.includes(period);
}
function isValidTopic(kpi, period) {
  return typeof kpi === "string" && CODE_RE.test(kpi) && isPeriod(period);
}
function cadenceMs(cadence) {
  const m = /^([0-9]+)([sm])$/.exec(cadence ?? "");
  return m ? Number(m[1]) * (m[2] === "m" ? 6e4 : 1e3) : null;
}
function cadenceRank(cadence) {
  return cadence === "live" ? 0 : cadence === "close" ? Infinity : cadenceMs(cadence) ?? Infinity;
}
function checkOptions(options = {}) {
  const cadence = options.cadence ?? "live";
  const encoding = options.encoding ?? "full";
  if (typeof cadence !== "string" || !CADENCE_RE.test(cadence) || (cadenceMs(cadence) ?? 0) > MAX_CADENCE_MS) {
    throw new TypeError(`invalid cadence: ${String(cadence)} (live, close, <N>s or <N>m)`);
  }
  if (encoding !== "full" && encoding !== "delta") throw new TypeError(`invalid encoding: ${String(encoding)}`);
  return { cadence, encoding };
}

// clients/js/src/http-error.ts
var KpiHttpError = class extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
    this.name = "KpiHttpError";
  }
  status;
  body;
};

// clients/js/src/subscription.ts
var Subscription = class {
  /** @internal Created by `KpiStream.subscribe`. */
  constructor(client, kpi, period, onMessage, mode) {
    this.client = client;
    this.onMessage = onMessage;
    this.kpi = kpi;
    this.period = period;
    this.cadence = mode.cadence;
    this.encoding = mode.encoding;
  }
  client;
  onMessage;
  kpi;
  period;
  cadence;
  encoding;
  closed = false;
  /** @internal */
  _topic = null;
  paused = false;
  pending = null;
  /** The last message delivered (or held while paused). */
  get last() {
    return this._topic?.last ?? null;
  }
  /** True while the gateway confirms this subscription on a live connection. */
  get fresh() {
    return this._topic !== null && this.client._isFresh(this._topic);
  }
  /** Moves this handle to another period: unsubscribe, then subscribe, same callback. */
  switchPeriod(period) {
    if (this.closed) throw new Error("subscription is closed");
    if (!isPeriod(period)) throw new TypeError(`invalid period: ${String(period)}`);
    if (period === this.period) return this;
    this.client._detach(this);
    this.period = period;
    this.pending = null;
    this.client._attach(this);
    return this;
  }
  /** Changes this handle's cadence and/or encoding (a resubscription when the wire mode changes). */
  setOptions(options = {}) {
    if (this.closed) throw new Error("subscription is closed");
    const o = checkOptions({ cadence: this.cadence, encoding: this.encoding, ...options });
    this.cadence = o.cadence;
    this.encoding = o.encoding;
    if (this._topic) this.client._modeChanged(this._topic);
    return this;
  }
  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this.client._detach(this);
  }
  /** Holds deliveries to this handle (the newest is kept) until `resume()`. */
  pause() {
    this.paused = true;
  }
  resume() {
    this.paused = false;
    this._flushPending();
  }
  /** @internal */
  _deliver(msg, meta) {
    if (this.closed) return;
    if (this.paused || this.client.paused) {
      this.pending = [msg, meta];
      return;
    }
    try {
      this.onMessage(msg, meta);
    } catch (e) {
      this.client._reportError("kpistream subscriber failed", e);
    }
  }
  /** @internal */
  _flushPending() {
    const p = this.pending;
    this.pending = null;
    if (p) this._deliver(p[0], p[1]);
  }
};

// clients/js/src/token.ts
function claimsOf(token) {
  if (!token) return null;
  try {
    const part = token.split(".")[1];
    if (part === void 0) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - b64.length % 4) % 4)));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}
function refreshDelayMs(claims, now) {
  const exp = claims?.exp;
  if (typeof exp !== "number" || !Number.isFinite(exp)) return null;
  const left = exp * 1e3 - now;
  return Math.max(0, left - Math.min(6e4, left / 2));
}

// clients/js/src/poll.ts
var POLL_GRACE_SECS = 10;
var Poller = class {
  constructor(c, owner) {
    this.c = c;
    this.owner = owner;
  }
  c;
  owner;
  loops = /* @__PURE__ */ new Map();
  has(topic) {
    return this.loops.has(topic.key);
  }
  add(topic) {
    if (this.loops.has(topic.key)) return;
    const loop = { abort: new AbortController(), failures: 0 };
    this.loops.set(topic.key, loop);
    void this.run(topic, loop);
  }
  remove(topic) {
    const loop = this.loops.get(topic.key);
    if (loop) {
      loop.abort.abort();
      this.loops.delete(topic.key);
    }
  }
  close() {
    for (const l of this.loops.values()) l.abort.abort();
    this.loops.clear();
  }
  sleep(ms) {
    return new Promise((resolve) => this.c.env.setTimeout(resolve, ms));
  }
  /** One request, aborted by the loop's end or by its own deadline. */
  async poll(path, params, loop, deadlineMs) {
    const env = this.c.env;
    const req = new AbortController();
    const onAbort = () => req.abort();
    loop.abort.signal.addEventListener("abort", onAbort);
    const timer = env.setTimeout(() => req.abort(), deadlineMs);
    try {
      return await this.c._getJson(path, params, req.signal);
    } finally {
      env.clearTimeout(timer);
      loop.abort.signal.removeEventListener("abort", onAbort);
    }
  }
  async run(topic, loop) {
    const c = this.c;
    const o = c._opts;
    while (this.loops.get(topic.key) === loop) {
      const long = this.owner !== null && this.loops.size <= o.maxStreams;
      const wait = long ? o.pollWaitSecs : 0;
      const params = { period: topic.period, wait, since: sinceOf(topic) };
      const every = cadenceMs(topic.cadence);
      const spaced = every !== null && every > o.pollWaitSecs * 1e3;
      if (topic.cadence !== "live" && !spaced) params.cadence = topic.cadence;
      try {
        const body = await this.poll(`/api/kpi/${topic.kpi}/updates`, params, loop, (wait + POLL_GRACE_SECS) * 1e3);
        if (loop.abort.signal.aborted) return;
        loop.failures = 0;
        c._confirm(topic);
        this.owner?.ok();
        for (const m of body.messages ?? []) c._receive(m, "poll");
        c._status();
        if (spaced) await this.sleep(every);
        else if (!long) await this.sleep(o.pollIntervalMs);
      } catch (e) {
        if (loop.abort.signal.aborted) return;
        loop.failures += 1;
        this.owner?.failed();
        if (e instanceof KpiHttpError && e.status >= 400 && e.status < 500) c._httpError(e);
        await this.sleep(backoffDelay(loop.failures, o, () => c.env.random()));
      }
    }
  }
};
var PollDriver = class {
  constructor(c) {
    this.c = c;
    this.poller = new Poller(c, this);
  }
  c;
  poller;
  opened = false;
  done = false;
  start() {
    const topics = this.c._topicList();
    for (const t of topics) this.add(t);
    if (topics.length === 0) this.ok();
  }
  add(topic) {
    this.poller.add(topic);
  }
  remove(topic) {
    this.poller.remove(topic);
  }
  ok() {
    if (this.done) return;
    if (!this.opened || this.c._state !== "live") {
      this.opened = true;
      this.c._opened(this);
    }
  }
  failed() {
    if (this.done) return;
    this.c._unconfirmAll();
    this.c._setState(this.c.env.online() ? "reconnecting" : "offline");
  }
  close() {
    this.done = true;
    this.poller.close();
  }
};

// clients/js/src/sse.ts
var SseDriver = class {
  constructor(c) {
    this.c = c;
    this.poller = new Poller(c, null);
  }
  c;
  streams = /* @__PURE__ */ new Map();
  poller;
  opened = false;
  done = false;
  timer = null;
  start() {
    for (const t of this.c._topicList()) this.add(t);
    this.timer = this.c.env.setTimeout(() => {
      if (!this.opened) this.finish();
    }, this.c._opts.openTimeoutMs);
    this.check();
  }
  add(topic) {
    if (this.done || this.streams.has(topic.key) || this.poller.has(topic)) return;
    if (this.streams.size >= this.c._opts.maxStreams) {
      this.poller.add(topic);
      return;
    }
    const params = { period: topic.period, since: sinceOf(topic), ...modeParams(topic) };
    let es;
    try {
      const EventSource = this.c.env.EventSource;
      if (!EventSource) throw new Error("no EventSource");
      es = new EventSource(this.c._url(`/sse/kpi/${topic.kpi}`, params, true));
    } catch {
      queueMicrotask(() => this.finish());
      return;
    }
    const s = { es, open: false };
    this.streams.set(topic.key, s);
    es.onopen = () => {
      s.open = true;
      this.c._confirm(topic);
      this.check();
    };
    es.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch {
        return;
      }
      if (m === null || typeof m !== "object") return;
      if (m.type === "system") this.c._system(m);
      else if (m.type === "error") this.c._gatewayError(m);
      else this.c._receive(m, "sse");
    };
    es.onerror = () => this.finish();
  }
  remove(topic) {
    const s = this.streams.get(topic.key);
    if (s) {
      s.es.close();
      this.streams.delete(topic.key);
    }
    this.poller.remove(topic);
  }
  /** Live once every stream is open. */
  check() {
    if (this.done || this.opened) return;
    if ([...this.streams.values()].every((s) => s.open)) {
      this.opened = true;
      if (this.timer !== null) this.c.env.clearTimeout(this.timer);
      this.c._opened(this);
    }
  }
  finish() {
    if (this.done) return;
    const opened = this.opened;
    this.close();
    this.c._closedBy(this, { opened, code: void 0 });
  }
  close() {
    this.done = true;
    if (this.timer !== null) this.c.env.clearTimeout(this.timer);
    for (const s of this.streams.values()) s.es.close();
    this.streams.clear();
    this.poller.close();
  }
};

// clients/js/src/ws.ts
var OPEN = 1;
var SILENT = 4e3;
var WsDriver = class {
  constructor(c) {
    this.c = c;
  }
  c;
  ws = null;
  opened = false;
  done = false;
  timeouts = [];
  pinger = null;
  pingId = 0;
  /** When the oldest unanswered ping was sent; any message answers it. */
  awaitingPong = null;
  start() {
    const c = this.c;
    let ws;
    try {
      ws = c._openWebSocket();
    } catch (e) {
      c._log({ ev: "ws-construct-failed", error: String(e) });
      queueMicrotask(() => this.finish(void 0));
      return;
    }
    this.ws = ws;
    this.later(() => {
      if (!this.opened) this.finish(void 0);
    }, c._opts.openTimeoutMs);
    ws.onopen = () => {
      this.opened = true;
      for (const t of c._topicList()) this.add(t);
      if (c.paused) this.send({ type: "pause" });
      this.pinger = c.env.setInterval(() => this.ping(), c._opts.pingEveryMs);
      c._opened(this);
    };
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = (e) => this.finish(e.code);
  }
  later(fn, ms) {
    this.timeouts.push(this.c.env.setTimeout(fn, ms));
  }
  onMessage(data) {
    let m;
    try {
      m = JSON.parse(String(data));
    } catch {
      return;
    }
    this.awaitingPong = null;
    const c = this.c;
    if (m === null || typeof m !== "object") return;
    switch (m.type) {
      case "snapshot":
      case "update":
      case "patch":
        c._receive(m, "ws");
        break;
      case "subscribed":
        c._confirm(c._topic(m.kpi, m.period));
        c._status();
        break;
      case "error": {
        c._gatewayError(m);
        const { kpi, period } = m;
        if (m.code === "unavailable" && kpi && period) {
          this.later(
            () => {
              const t = c._topic(kpi, period);
              if (t) this.add(t);
            },
            2e3 + c.env.random() * 3e3
          );
        }
        break;
      }
      case "system":
        c._system(m);
        break;
      default:
        break;
    }
  }
  /** An application-level ping: a connection that went silent (Wi-Fi gone, no FIN) is dropped. */
  ping() {
    const now = this.c.env.now();
    if (this.awaitingPong !== null && now - this.awaitingPong > this.c._opts.pongTimeoutMs) {
      this.finish(SILENT);
      return;
    }
    if (this.awaitingPong === null) this.awaitingPong = now;
    this.send({ type: "ping", id: ++this.pingId });
  }
  send(msg) {
    if (this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify(msg));
  }
  add(topic) {
    if (!this.opened) return;
    const msg = { type: "subscribe", kpi: topic.kpi, period: topic.period, ...modeParams(topic) };
    const since = sinceOf(topic);
    if (since !== void 0) msg.since = since;
    this.send(msg);
  }
  remove(topic) {
    if (this.opened) this.send({ type: "unsubscribe", kpi: topic.kpi, period: topic.period });
  }
  pauseAll(paused) {
    this.send({ type: paused ? "pause" : "resume" });
  }
  finish(code) {
    if (this.done) return;
    const opened = this.opened;
    this.close();
    this.c._closedBy(this, { opened, code });
  }
  close() {
    this.done = true;
    for (const t of this.timeouts) this.c.env.clearTimeout(t);
    this.timeouts = [];
    if (this.pinger !== null) this.c.env.clearInterval(this.pinger);
    this.pinger = null;
    const ws = this.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1e3);
      } catch {
      }
    }
  }
};

// clients/js/src/transport.ts
var TRANSPORTS = ["ws", "sse", "poll"];
function createDriver(mode, host) {
  switch (mode) {
    case "ws":
      return new WsDriver(host);
    case "sse":
      return new SseDriver(host);
    case "poll":
      return new PollDriver(host);
  }
}
var TransportSelector = class {
  order;
  mode;
  /** Consecutive failed opens while plain HTTP to the gateway worked. */
  blocked = 0;
  constructor(order) {
    this.order = order.filter((t) => TRANSPORTS.includes(t));
    const first = this.order[0];
    if (first === void 0) throw new TypeError("no usable transport");
    this.mode = first;
  }
  /** The preferred transport, which a fallback keeps trying to return to. */
  get best() {
    return this.order[0];
  }
  /**
   * Counts a failed open; returns the transport to fall back to now, or
   * null to retry this one. A gateway that is down (HTTP fails too) is waited
   * for, not routed around.
   */
  failedOpen(httpWorks, fallbackAfter) {
    this.blocked = httpWorks ? this.blocked + 1 : 0;
    const next = this.order[this.order.indexOf(this.mode) + 1];
    return httpWorks && next !== void 0 && this.blocked >= fallbackAfter ? next : null;
  }
  opened() {
    this.blocked = 0;
  }
  switchTo(mode) {
    this.mode = mode;
    this.blocked = 0;
  }
};

// clients/js/src/client.ts
var LOG_MAX = 5e3;
var CLOSE_DRAINING = 1012;
var CLOSE_TOKEN_EXPIRED = 4001;
var TOKEN_RETRY_MS = 5e3;
var DEFAULTS = {
  transports: ["ws", "sse", "poll"],
  openTimeoutMs: 5e3,
  fallbackAfter: 2,
  upgradeEveryMs: 6e4,
  baseBackoffMs: 500,
  maxBackoffMs: 3e4,
  pollWaitSecs: 25,
  pollIntervalMs: 2e3,
  maxStreams: 4,
  pingEveryMs: 25e3,
  pongTimeoutMs: 1e4,
  cache: true,
  storagePrefix: "kpistream:last:"
};
var NO_DRIVER = { start() {
}, add() {
}, remove() {
}, close() {
} };
var KpiStream = class {
  options;
  /** The last 5000 events (applied/skipped seqs, transport changes) for debugging and tests. */
  log = [];
  /** @internal */
  env;
  /** @internal */
  _state = "connecting";
  base;
  token;
  getToken;
  refreshTimer = null;
  selector;
  topics = /* @__PURE__ */ new Map();
  listeners = /* @__PURE__ */ new Map();
  isPaused = false;
  closed = false;
  /** Consecutive failures: the backoff exponent. */
  attempt = 0;
  retryTimer = null;
  retryAt = 0;
  driver = null;
  upgradeTimer = null;
  cache;
  onOnline = () => this.reconnectNow("online");
  onOffline = () => this.lost("offline");
  onHide = () => this.cache.flush();
  constructor(options = {}) {
    const { env, ...rest } = options;
    const defined = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== void 0));
    this.options = { ...DEFAULTS, ...defined };
    this.env = resolveEnvironment(env);
    this.base = new URL(this.options.url || this.env.origin);
    this.token = this.options.token || null;
    this.getToken = typeof this.options.getToken === "function" ? this.options.getToken : null;
    this.selector = new TransportSelector(this.options.transports);
    this.cache = new OfflineCache(this.env, this.options.cache, this.options.storagePrefix, () => this.identity());
    const events = this.env.events;
    if (events) {
      events.addEventListener("online", this.onOnline);
      events.addEventListener("offline", this.onOffline);
      events.addEventListener("pagehide", this.onHide);
    }
    if (this.getToken && !this.token) {
      void this.refreshToken().finally(() => this.connect());
    } else {
      this.scheduleRefresh();
      this.connect();
    }
  }
  // ---- public API ----
  /** Subscribes to one KPI in one period; returns a handle. */
  subscribe(kpi, period, onMessage, options = {}) {
    if (!isValidTopic(kpi, period)) throw new TypeError(`invalid kpi or period: ${String(kpi)} ${String(period)}`);
    if (typeof onMessage !== "function") throw new TypeError("onMessage must be a function");
    const sub = new Subscription(this, kpi, period, onMessage, checkOptions(options));
    this._attach(sub);
    return sub;
  }
  /** Stops deliveries to every subscription until `resume()`; the gateway keeps only the latest value meanwhile. */
  pause() {
    if (this.isPaused) return;
    this.isPaused = true;
    this.driver?.pauseAll?.(true);
    this._status();
  }
  /** Delivers the latest value of every subscription and goes on live. */
  resume() {
    if (!this.isPaused) return;
    this.isPaused = false;
    this.driver?.pauseAll?.(false);
    for (const t of this.topics.values()) for (const s of t.subs) s._flushPending();
    this._status();
  }
  /** Registers a listener; returns a function that removes it. A `status` listener hears the current status at once. */
  on(event, fn) {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, set = /* @__PURE__ */ new Set());
    set.add(fn);
    if (event === "status") fn(this.status);
    return () => {
      this.listeners.get(event)?.delete(fn);
    };
  }
  get status() {
    return {
      state: this._state,
      transport: this.selector.mode,
      paused: this.isPaused,
      attempt: this.attempt,
      retryInMs: this.retryTimer !== null ? Math.max(0, this.retryAt - this.env.now()) : 0
    };
  }
  get paused() {
    return this.isPaused;
  }
  /** The last message seen for a kpi+period (live or cached), or null. */
  latest(kpi, period) {
    return this.topics.get(keyOf(kpi, period))?.last ?? this.cache.read(kpi, period);
  }
  /** `GET /api/kpis`: the codes with published updates. */
  async kpis() {
    return (await this._getJson("/api/kpis")).kpis ?? [];
  }
  /** `GET /api/kpi/<code>/history`: closed buckets, oldest first. */
  async history(kpi, period, limit = 30) {
    if (!isValidTopic(kpi, period)) throw new TypeError("invalid kpi or period");
    const body = await this._getJson(`/api/kpi/${kpi}/history`, { period, limit });
    return body.buckets ?? [];
  }
  /** `GET /api/kpi/<code>`: the current snapshot. */
  async snapshot(kpi, period) {
    if (!isValidTopic(kpi, period)) throw new TypeError("invalid kpi or period");
    return await this._getJson(`/api/kpi/${kpi}`, { period });
  }
  /** Closes the connection and forgets every subscription. */
  close() {
    this.closed = true;
    this.cache.flush();
    this.clear(this.retryTimer);
    this.retryTimer = null;
    this.clear(this.refreshTimer);
    this.refreshTimer = null;
    this.stopUpgrades();
    this.driver?.close();
    this.driver = null;
    this.topics.clear();
    const events = this.env.events;
    if (events) {
      events.removeEventListener("online", this.onOnline);
      events.removeEventListener("offline", this.onOffline);
      events.removeEventListener("pagehide", this.onHide);
    }
    this._setState("offline");
  }
  // ---- topics and subscriptions (called by Subscription and the drivers) ----
  /** @internal */
  get _opts() {
    return this.options;
  }
  /** @internal */
  _topicList() {
    return [...this.topics.values()];
  }
  /** @internal */
  _topic(kpi, period) {
    return kpi === void 0 || period === void 0 ? void 0 : this.topics.get(keyOf(kpi, period));
  }
  /** @internal */
  _attach(sub) {
    const key = keyOf(sub.kpi, sub.period);
    let topic = this.topics.get(key);
    const isNew = !topic;
    if (!topic) {
      const cached = this.cache.read(sub.kpi, sub.period);
      topic = {
        kpi: sub.kpi,
        period: sub.period,
        key,
        last: cached,
        fromCache: cached !== null,
        confirmed: false,
        subs: /* @__PURE__ */ new Set(),
        cadence: sub.cadence,
        encoding: sub.encoding
      };
      this.topics.set(key, topic);
    }
    topic.subs.add(sub);
    sub._topic = topic;
    const changed = this.chooseMode(topic);
    if (topic.last) {
      sub._deliver(topic.last, { source: isNew ? "cache" : "memory", stale: !this._isFresh(topic) });
    }
    if (isNew) this.driver?.add(topic);
    else if (changed) this.resubscribe(topic);
  }
  /** @internal */
  _detach(sub) {
    const topic = sub._topic;
    if (!topic) return;
    topic.subs.delete(sub);
    sub._topic = null;
    if (topic.subs.size === 0 && this.topics.get(topic.key) === topic) {
      this.topics.delete(topic.key);
      this.driver?.remove(topic);
    } else if (this.chooseMode(topic)) {
      this.resubscribe(topic);
    }
  }
  /** @internal A handle changed its options. */
  _modeChanged(topic) {
    if (this.chooseMode(topic)) this.resubscribe(topic);
  }
  /** Sets a topic's wire cadence/encoding from its handles; true when it changed. */
  chooseMode(topic) {
    const subs = [...topic.subs];
    const first = subs[0];
    if (!first) return false;
    const cadence = subs.map((s) => s.cadence).reduce((a, b) => cadenceRank(b) < cadenceRank(a) ? b : a, first.cadence);
    const encoding = subs.every((s) => s.encoding === "delta") ? "delta" : "full";
    const changed = cadence !== topic.cadence || encoding !== topic.encoding;
    topic.cadence = cadence;
    topic.encoding = encoding;
    return changed;
  }
  /** Subscribes a topic again (its cadence changed, or a patch could not be applied). */
  resubscribe(topic) {
    this.driver?.remove(topic);
    this.driver?.add(topic);
  }
  /** @internal */
  _isFresh(topic) {
    return topic.confirmed && this._state === "live";
  }
  /**
   * @internal The gateway acknowledged a topic on the current connection. A
   * value from the cache is not confirmed by an acknowledgement: only a
   * message at least as new as it does that.
   */
  _confirm(topic) {
    if (topic && !topic.fromCache) topic.confirmed = true;
  }
  /** @internal */
  _unconfirmAll() {
    for (const t of this.topics.values()) t.confirmed = false;
  }
  /** @internal One data or patch message from any transport: ordered per topic, then delivered. */
  _receive(raw, source) {
    const msg = isPatch(raw) ? this.unpatch(raw, source) : raw;
    if (!isData(msg)) return;
    const topic = this.topics.get(keyOf(msg.kpi, msg.period));
    if (!topic) return;
    const last = topic.last;
    const entry = { kpi: msg.kpi, period: msg.period, seq: msg.seq, type: msg.type, source };
    if (last && msg.seq === last.seq) {
      topic.fromCache = false;
      topic.confirmed = true;
      this._log({ ev: "skipped", ...entry, last: last.seq });
      return;
    }
    if (last && msg.seq < last.seq) {
      const reset = msg.type === "snapshot" && msg.seq > 0 && Date.parse(msg.updated_at) > Date.parse(last.updated_at);
      if (!reset) {
        this._log({ ev: "skipped", ...entry, last: last.seq });
        return;
      }
      this._log({ ev: "reset", kpi: msg.kpi, period: msg.period, seq: msg.seq, source, last: last.seq });
    }
    topic.last = msg;
    topic.fromCache = false;
    topic.confirmed = true;
    this._log({ ev: "applied", ...entry });
    this.cache.markDirty(topic);
    const meta = { source, stale: false };
    for (const s of topic.subs) s._deliver(msg, meta);
    this.emit("message", msg, meta);
  }
  /**
   * The full message a patch makes of the one held, or null (and a fresh
   * subscription, which starts with a full message) when it holds another.
   */
  unpatch(p, source) {
    const topic = this.topics.get(keyOf(p.kpi, p.period));
    if (!topic) return null;
    const last = topic.last;
    if (!last || topic.fromCache || last.seq !== p.base_seq || !Number.isSafeInteger(p.seq)) {
      this._log({ ev: "patch-miss", kpi: p.kpi, period: p.period, seq: p.seq, base: p.base_seq, source });
      if (!last || last.seq < p.seq) this.resubscribe(topic);
      return null;
    }
    return unpatch(last, p);
  }
  // ---- connection management ----
  clear(timer) {
    if (timer !== null) this.env.clearTimeout(timer);
  }
  connect() {
    if (this.closed) return;
    this.clear(this.retryTimer);
    this.retryTimer = null;
    this.driver?.close();
    this.driver = createDriver(this.selector.mode, this);
    this._setState(this.attempt === 0 && this._state !== "reconnecting" ? "connecting" : "reconnecting");
    this.driver.start();
    this.scheduleUpgrade();
  }
  /** @internal The current driver is connected and has (re)sent every subscription. */
  _opened(driver) {
    if (driver !== this.driver) return;
    this.attempt = 0;
    this.selector.opened();
    this._setState("live");
  }
  /**
   * @internal The current driver lost its connection (`opened`) or could not
   * open one. A failed open counts towards falling back only while plain HTTP
   * to the gateway works.
   */
  async _closedBy(driver, { opened, code }) {
    if (driver !== this.driver || this.closed) return;
    this._unconfirmAll();
    this._log({ ev: "closed", transport: this.selector.mode, opened, code });
    if (code === CLOSE_TOKEN_EXPIRED && this.getToken && await this.refreshToken()) {
      if (driver !== this.driver || this.closed) return;
      this.attempt = 0;
      return this.retryIn(0);
    }
    if (opened) {
      if (code === CLOSE_DRAINING) {
        this.attempt = 0;
        return this.retryIn(this.env.random() * 1e3);
      }
      return this.retryIn(this.backoff());
    }
    this._setState(this.env.online() ? "reconnecting" : "offline");
    const reachable = await this.probeHttp();
    if (driver !== this.driver || this.closed) return;
    const next = this.selector.failedOpen(reachable, this.options.fallbackAfter);
    if (next) {
      this.switchTo(next, `${this.selector.mode} failed ${this.selector.blocked} times while HTTP works`);
      return;
    }
    this.retryIn(this.backoff());
  }
  switchTo(mode, why) {
    this._log({ ev: "transport", from: this.selector.mode, to: mode, why });
    this.selector.switchTo(mode);
    this.attempt = 0;
    this.connect();
  }
  backoff() {
    const delay = backoffDelay(this.attempt, this.options, () => this.env.random());
    this.attempt += 1;
    return delay;
  }
  retryIn(ms) {
    this.clear(this.retryTimer);
    this.retryAt = this.env.now() + ms;
    this.retryTimer = this.env.setTimeout(() => this.connect(), ms);
    this._setState(this.env.online() ? "reconnecting" : "offline");
  }
  reconnectNow(why) {
    if (this.closed || this._state === "live") return;
    this._log({ ev: "wake", why });
    this.attempt = 0;
    this.retryIn(this.env.random() * 250);
  }
  /** The network went away: drop the connection now rather than wait for TCP to notice. */
  lost(why) {
    if (this.closed) return;
    this._log({ ev: "lost", why });
    const d = this.driver;
    this.driver = NO_DRIVER;
    d?.close();
    this._unconfirmAll();
    this.retryIn(this.backoff());
    this._setState("offline");
  }
  stopUpgrades() {
    if (this.upgradeTimer !== null) this.env.clearInterval(this.upgradeTimer);
    this.upgradeTimer = null;
  }
  /** While on a fallback transport, tries the best one now and then and moves back when it opens. */
  scheduleUpgrade() {
    this.stopUpgrades();
    const best = this.selector.best;
    if (this.selector.mode === best || !this.options.upgradeEveryMs) return;
    this.upgradeTimer = this.env.setInterval(() => {
      if (this._state !== "live") return;
      void this.tryWebSocket().then((ok) => {
        if (ok && !this.closed && this.selector.mode !== best) this.switchTo(best, "WebSocket works again");
      });
    }, this.options.upgradeEveryMs);
  }
  tryWebSocket() {
    return new Promise((resolve) => {
      let ws;
      try {
        ws = this._openWebSocket();
      } catch {
        resolve(false);
        return;
      }
      const done = (ok) => {
        this.env.clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onclose = null;
        try {
          ws.close();
        } catch {
        }
        resolve(ok);
      };
      const timer = this.env.setTimeout(() => done(false), this.options.openTimeoutMs);
      ws.onopen = () => done(true);
      ws.onerror = ws.onclose = () => done(false);
    });
  }
  /** Whether plain HTTP to the gateway works (any answer below 500). */
  async probeHttp() {
    const fetch = this.env.fetch;
    if (!fetch) return false;
    const abort = new AbortController();
    const timer = this.env.setTimeout(() => abort.abort(), this.options.openTimeoutMs);
    try {
      const res = await fetch(new URL("/healthz", this.base).toString(), { cache: "no-store", signal: abort.signal });
      return res.status < 500;
    } catch {
      return false;
    } finally {
      this.env.clearTimeout(timer);
    }
  }
  // ---- URLs and HTTP ----
  /** @internal */
  _url(path, params = {}, withToken = false) {
    const u = new URL(path, this.base);
    for (const [k, v] of Object.entries(params)) if (v !== void 0 && v !== null) u.searchParams.set(k, String(v));
    if (withToken && this.token) u.searchParams.set("token", this.token);
    return u.toString();
  }
  /** @internal `/ws` with the token as a subprotocol, never in the URL. */
  _openWebSocket() {
    const WebSocket = this.env.WebSocket;
    if (!WebSocket) throw new Error("WebSocket is not available");
    const u = new URL(this._url("/ws"));
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return this.token ? new WebSocket(u.toString(), ["kpistream", `bearer.${this.token}`]) : new WebSocket(u.toString());
  }
  /** @internal */
  async _getJson(path, params = {}, signal) {
    const fetch = this.env.fetch;
    if (!fetch) throw new Error("fetch is not available");
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const res = await fetch(this._url(path, params), signal ? { headers, cache: "no-store", signal } : { headers, cache: "no-store" });
    const body = await res.json().catch(() => ({}));
    const err = asError(body);
    if (res.status === 403 && err?.code === "forbidden") this.cache.clear();
    if (!res.ok) throw new KpiHttpError(err?.message ?? `HTTP ${res.status}`, res.status, body);
    return body;
  }
  // ---- token ----
  /** Whose values the cache holds: the gateway and the token's subject. */
  identity() {
    const sub = this.token ? claimsOf(this.token)?.sub : void 0;
    return `${this.base.origin}|${typeof sub === "string" ? sub : this.token ? "token" : "anonymous"}`;
  }
  /** Asks `getToken` for a new token some time before this one's `exp`. */
  scheduleRefresh() {
    this.clear(this.refreshTimer);
    this.refreshTimer = null;
    if (!this.getToken || !this.token || this.closed) return;
    const ms = refreshDelayMs(claimsOf(this.token), this.env.now());
    if (ms !== null) this.refreshTimer = this.env.setTimeout(() => void this.refreshToken(), ms);
  }
  async refreshToken() {
    if (!this.getToken || this.closed) return false;
    let token;
    try {
      token = await this.getToken();
    } catch (e) {
      this._log({ ev: "token-refresh-failed", error: String(e) });
    }
    if (typeof token !== "string" || !token) {
      this.refreshTimer = this.env.setTimeout(() => void this.refreshToken(), TOKEN_RETRY_MS);
      return false;
    }
    const before = this.identity();
    this.token = token;
    this._log({ ev: "token-refreshed" });
    if (this.identity() !== before) this.cache.dropPending();
    this.driver?.send?.({ type: "auth", token });
    this.scheduleRefresh();
    return true;
  }
  // ---- events ----
  /** @internal */
  _setState(state) {
    if (state !== "live") this._unconfirmAll();
    const changed = state !== this._state;
    this._state = state;
    if (changed) this._log({ ev: "status", state, transport: this.selector.mode });
    this._status();
  }
  /** @internal */
  _status() {
    this.emit("status", this.status);
  }
  /** @internal An error message from the gateway. */
  _gatewayError(m) {
    this.emit("error", m);
    if (m.code === "forbidden") this.cache.clear();
  }
  /** @internal A 4xx answer to a poll. */
  _httpError(e) {
    this.emit("error", asError(e.body) ?? { type: "error", code: `http_${e.status}`, message: e.message });
  }
  /** @internal */
  _system(m) {
    this.emit("system", m);
  }
  /** @internal */
  _reportError(what, error) {
    this.env.reportError(what, error);
  }
  emit(event, ...args) {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        this.env.reportError("kpistream listener failed", e);
      }
    }
  }
  /** @internal */
  _log(entry) {
    entry.t = this.env.now();
    this.log.push(entry);
    if (this.log.length > LOG_MAX) this.log.splice(0, this.log.length - LOG_MAX);
  }
};
function isPatch(m) {
  return m !== null && typeof m === "object" && m.type === "patch";
}
function asError(body) {
  if (body === null || typeof body !== "object") return null;
  const o = body;
  return typeof o.message === "string" || typeof o.code === "string" ? { type: "error", code: o.code ?? "error", message: o.message ?? "", ...pick(o) } : null;
}
function pick(o) {
  const out = {};
  if (typeof o.kpi === "string") out.kpi = o.kpi;
  if (typeof o.period === "string") out.period = o.period;
  return out;
}
export {
  KpiHttpError,
  KpiStream,
  Subscription,
  applyMergePatch,
  cadenceMs,
  isValidTopic
};
