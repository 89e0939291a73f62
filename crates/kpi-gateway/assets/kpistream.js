/**
 * kpistream.js — the browser client of the kpistream gateway.
 *
 * A plain ES module with no dependencies, served by every gateway at the
 * stable path `/kpistream.js`:
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
 * Options of `new KpiStream(options)`:
 *   url            gateway base URL (default: the page's origin)
 *   token          JWT; sent as `Authorization: Bearer` on fetches, as the
 *                  `bearer.<jwt>` subprotocol on WebSockets (so it stays out of
 *                  URLs and logs), and as `?token=` on SSE (EventSource can send nothing else)
 *   getToken       async () => a fresh JWT; called before the token expires (and
 *                  when the gateway closes for an expired one), and the new
 *                  token is handed to the open connection (`{"type":"auth"}`)
 *   transports     order to try, default ["ws", "sse", "poll"]
 *   openTimeoutMs  a connection not open within this counts as failed (5000)
 *   fallbackAfter  failed opens, while plain HTTP to the gateway works, before
 *                  falling back to the next transport (2)
 *   upgradeEveryMs while on a fallback, how often to try WebSocket again (60000)
 *   baseBackoffMs, maxBackoffMs  reconnect delay: full jitter, random(0, min(max, base * 2^n)),
 *                  never giving up (500, 30000)
 *   pollWaitSecs   long-poll wait (25); maxStreams: SSE streams at once (4), the
 *                  rest are polled, since a browser opens only 6 HTTP/1.1
 *                  connections per host
 *   cache          keep the last message of every subscription in localStorage
 *                  and show it (stale) on the next start (true); kept per
 *                  gateway and identity (the token's `sub`), and cleared when
 *                  the gateway answers `forbidden`
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
 * message). `sub.fresh` is true while the gateway confirms the subscription
 * on a live connection; a value shown while it is false may be out of date.
 * `c.log` holds the last 5000 events (applied/skipped seqs, transport changes)
 * for debugging and tests.
 */

const PERIODS = ["minute", "hour", "day"];
const CODE_RE = /^[A-Za-z0-9_-]{1,64}$/;
const LOG_MAX = 5000;

const DEFAULTS = {
  transports: ["ws", "sse", "poll"],
  openTimeoutMs: 5000,
  fallbackAfter: 2,
  upgradeEveryMs: 60000,
  baseBackoffMs: 500,
  maxBackoffMs: 30000,
  pollWaitSecs: 25,
  pollIntervalMs: 2000,
  maxStreams: 4,
  pingEveryMs: 25000,
  pongTimeoutMs: 10000,
  cache: true,
  storagePrefix: "kpistream:last:",
};

/** True when `kpi` is a valid KPI code and `period` a valid period. */
export function isValidTopic(kpi, period) {
  return typeof kpi === "string" && CODE_RE.test(kpi) && PERIODS.includes(period);
}

/**
 * Where to resume a topic: after the last seq seen live in this session. A
 * cached value asks for a fresh snapshot instead, since the gateway sends
 * nothing for a `since` at or past its latest seq, and so could never show
 * that the cached value is current (or that the gateway was wiped since).
 */
const sinceOf = (topic) => (topic.last && !topic.fromCache && topic.last.seq > 0 ? topic.last.seq : undefined);
const keyOf = (kpi, period) => `${kpi}\u0000${period}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const CADENCE_RE = /^(live|close|[1-9][0-9]{0,5}[sm])$/;

/** The interval of a `<N>s`/`<N>m` cadence in ms, else null. */
export function cadenceMs(cadence) {
  const m = /^([0-9]+)([sm])$/.exec(cadence ?? "");
  return m ? Number(m[1]) * (m[2] === "m" ? 60000 : 1000) : null;
}

/** How often a cadence hears (lower is more often): live, then by N, then close. */
const cadenceRank = (c) => (c === "live" ? 0 : c === "close" ? Infinity : cadenceMs(c));

function checkOptions({ cadence = "live", encoding = "full" } = {}) {
  if (!CADENCE_RE.test(cadence) || (cadenceMs(cadence) ?? 0) > 86400000) {
    throw new TypeError(`invalid cadence: ${cadence} (live, close, <N>s or <N>m)`);
  }
  if (encoding !== "full" && encoding !== "delta") throw new TypeError(`invalid encoding: ${encoding}`);
  return { cadence, encoding };
}

/** RFC 7386: applies a merge patch to `target` (mutated when an object) and returns the result. */
export function applyMergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out = target !== null && typeof target === "object" && !Array.isArray(target) ? target : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}

/** The wire parameters of a topic's cadence and encoding (defaults left out). */
function modeParams(topic) {
  const p = {};
  if (topic.cadence && topic.cadence !== "live") p.cadence = topic.cadence;
  if (topic.encoding === "delta") p.encoding = "delta";
  return p;
}
const isData = (m) =>
  m && (m.type === "snapshot" || m.type === "update") && Number.isSafeInteger(m.seq) && m.seq >= 0;

export class KpiStream {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    const origin = globalThis.location ? globalThis.location.origin : "http://127.0.0.1:8080";
    this._base = new URL(this.options.url || origin);
    this._token = this.options.token || null;
    this._getToken = typeof this.options.getToken === "function" ? this.options.getToken : null;
    this._refreshTimer = null;
    this._transports = this.options.transports.filter((t) => ["ws", "sse", "poll"].includes(t));
    if (this._transports.length === 0) throw new TypeError("no usable transport");
    this._mode = this._transports[0];
    this._topics = new Map();
    this._listeners = new Map();
    this._paused = false;
    this._closed = false;
    this._state = "connecting";
    this._attempt = 0; // consecutive failures: the backoff exponent
    this._blocked = 0; // consecutive failed opens while HTTP worked
    this._retryTimer = null;
    this._retryAt = 0;
    this._driver = null;
    this._upgradeTimer = null;
    this.log = [];
    this._storage = this.options.cache ? safeStorage() : null;
    this._dirty = new Set();
    this._flushTimer = null;
    this._onOnline = () => this._reconnectNow("online");
    this._onOffline = () => this._lost("offline");
    this._onHide = () => this._flush();
    if (globalThis.addEventListener) {
      globalThis.addEventListener("online", this._onOnline);
      globalThis.addEventListener("offline", this._onOffline);
      globalThis.addEventListener("pagehide", this._onHide);
    }
    if (this._getToken && !this._token) {
      // No token yet: ask for one first (and connect anyway if that fails).
      this._refreshToken().finally(() => this._connect());
    } else {
      this._scheduleRefresh();
      this._connect();
    }
  }

  // ---- public API ----

  /** Subscribes to one KPI in one period; returns a handle. */
  subscribe(kpi, period, onMessage, options = {}) {
    if (!isValidTopic(kpi, period)) throw new TypeError(`invalid kpi or period: ${kpi} ${period}`);
    if (typeof onMessage !== "function") throw new TypeError("onMessage must be a function");
    const sub = new Subscription(this, kpi, period, onMessage, checkOptions(options));
    this._attach(sub);
    return sub;
  }

  /** Stops deliveries to every subscription until `resume()`; the gateway keeps only the latest value meanwhile. */
  pause() {
    if (this._paused) return;
    this._paused = true;
    this._driver?.pauseAll?.(true);
    this._status();
  }

  /** Delivers the latest value of every subscription and goes on live. */
  resume() {
    if (!this._paused) return;
    this._paused = false;
    this._driver?.pauseAll?.(false);
    for (const t of this._topics.values()) for (const s of t.subs) s._flushPending();
    this._status();
  }

  /** Registers a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    if (event === "status") fn(this.status);
    return () => this._listeners.get(event)?.delete(fn);
  }

  get status() {
    return {
      state: this._state,
      transport: this._mode,
      paused: this._paused,
      attempt: this._attempt,
      retryInMs: this._retryTimer ? Math.max(0, this._retryAt - Date.now()) : 0,
    };
  }

  get paused() {
    return this._paused;
  }

  /** The last message seen for a kpi+period (live or cached), or null. */
  latest(kpi, period) {
    return this._topics.get(keyOf(kpi, period))?.last ?? this._readCache(kpi, period);
  }

  /** `GET /api/kpis`: the codes with published updates. */
  async kpis() {
    return (await this._getJson("/api/kpis")).kpis ?? [];
  }

  /** `GET /api/kpi/<code>/history`: closed buckets, newest last. */
  async history(kpi, period, limit = 30) {
    if (!isValidTopic(kpi, period)) throw new TypeError("invalid kpi or period");
    const body = await this._getJson(`/api/kpi/${kpi}/history`, { period, limit });
    return body.buckets ?? [];
  }

  /** `GET /api/kpi/<code>`: the current snapshot. */
  async snapshot(kpi, period) {
    if (!isValidTopic(kpi, period)) throw new TypeError("invalid kpi or period");
    return this._getJson(`/api/kpi/${kpi}`, { period });
  }

  /** Closes the connection and forgets every subscription. */
  close() {
    this._closed = true;
    this._flush();
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    clearInterval(this._upgradeTimer);
    this._driver?.close();
    this._driver = null;
    this._topics.clear();
    if (globalThis.removeEventListener) {
      globalThis.removeEventListener("online", this._onOnline);
      globalThis.removeEventListener("offline", this._onOffline);
      globalThis.removeEventListener("pagehide", this._onHide);
    }
    this._setState("offline");
  }

  // ---- topics and subscriptions ----

  _attach(sub) {
    const key = keyOf(sub.kpi, sub.period);
    let topic = this._topics.get(key);
    const isNew = !topic;
    if (isNew) {
      const cached = this._readCache(sub.kpi, sub.period);
      // `fromCache`: shown, but not yet vouched for by a gateway in this session.
      topic = { kpi: sub.kpi, period: sub.period, key, last: cached, fromCache: !!cached, confirmed: false, subs: new Set() };
      this._topics.set(key, topic);
    }
    topic.subs.add(sub);
    sub._topic = topic;
    const changed = this._chooseMode(topic);
    if (topic.last) {
      sub._deliver(topic.last, { source: isNew ? "cache" : "memory", stale: !this._isFresh(topic) });
    }
    if (isNew) this._driver?.add(topic);
    else if (changed) this._resubscribe(topic);
  }

  /** Sets a topic's wire cadence/encoding from its handles; true when it changed. */
  _chooseMode(topic) {
    const subs = [...topic.subs];
    if (subs.length === 0) return false;
    const cadence = subs.map((s) => s.cadence).reduce((a, b) => (cadenceRank(b) < cadenceRank(a) ? b : a));
    // Patches only when every handle asked for them (they cost nothing to a full reader, but keep it explicit).
    const encoding = subs.every((s) => s.encoding === "delta") ? "delta" : "full";
    const changed = cadence !== topic.cadence || encoding !== topic.encoding;
    topic.cadence = cadence;
    topic.encoding = encoding;
    return changed;
  }

  /** Subscribes a topic again (its cadence changed, or a patch could not be applied). */
  _resubscribe(topic) {
    this._driver?.remove(topic);
    this._driver?.add(topic);
  }

  _detach(sub) {
    const topic = sub._topic;
    if (!topic) return;
    topic.subs.delete(sub);
    sub._topic = null;
    if (topic.subs.size === 0 && this._topics.get(topic.key) === topic) {
      this._topics.delete(topic.key);
      this._driver?.remove(topic);
    } else if (this._chooseMode(topic)) {
      this._resubscribe(topic);
    }
  }

  _isFresh(topic) {
    return topic.confirmed && this._state === "live";
  }

  /**
   * The gateway acknowledged a topic on the current connection. A value from
   * the cache is not confirmed by an acknowledgement: only a message at least
   * as new as it does that.
   */
  _confirm(topic) {
    if (topic && !topic.fromCache) topic.confirmed = true;
  }

  _unconfirmAll() {
    for (const t of this._topics.values()) t.confirmed = false;
  }

  /** One data message from any transport: ordered per topic, then delivered. */
  _receive(msg, source) {
    if (msg && msg.type === "patch") msg = this._unpatch(msg, source);
    if (!isData(msg)) return;
    const topic = this._topics.get(keyOf(msg.kpi, msg.period));
    if (!topic) return;
    const last = topic.last;
    if (last && msg.seq === last.seq) {
      // The same message again (a snapshot after a reconnect): it vouches for what is shown.
      topic.fromCache = false;
      topic.confirmed = true;
      this._log({ ev: "skipped", kpi: msg.kpi, period: msg.period, seq: msg.seq, type: msg.type, source, last: last.seq });
      return;
    }
    if (last && msg.seq < last.seq) {
      const reset =
        msg.type === "snapshot" &&
        msg.seq < last.seq &&
        msg.seq > 0 &&
        Date.parse(msg.updated_at) > Date.parse(last.updated_at);
      if (!reset) {
        this._log({ ev: "skipped", kpi: msg.kpi, period: msg.period, seq: msg.seq, type: msg.type, source, last: last.seq });
        return;
      }
      this._log({ ev: "reset", kpi: msg.kpi, period: msg.period, seq: msg.seq, source, last: last.seq });
    }
    topic.last = msg;
    topic.fromCache = false;
    topic.confirmed = true;
    this._log({ ev: "applied", kpi: msg.kpi, period: msg.period, seq: msg.seq, type: msg.type, source });
    this._markDirty(topic);
    const meta = { source, stale: false };
    for (const s of topic.subs) s._deliver(msg, meta);
    this._emit("message", msg, meta);
  }

  /**
   * The full message a patch makes of the one held, or null (and a fresh
   * subscription, which starts with a full message) when it holds another.
   */
  _unpatch(p, source) {
    const topic = this._topics.get(keyOf(p.kpi, p.period));
    if (!topic) return null;
    const last = topic.last;
    if (!last || topic.fromCache || last.seq !== p.base_seq || !Number.isSafeInteger(p.seq)) {
      this._log({ ev: "patch-miss", kpi: p.kpi, period: p.period, seq: p.seq, base: p.base_seq, source });
      if (!last || last.seq < p.seq) this._resubscribe(topic);
      return null;
    }
    const full = applyMergePatch(structuredClone(last), p.patch ?? {});
    full.type = "update";
    full.seq = p.seq;
    return full;
  }

  // ---- connection management ----

  _connect() {
    if (this._closed) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._driver?.close();
    const Driver = { ws: WsDriver, sse: SseDriver, poll: PollDriver }[this._mode];
    this._driver = new Driver(this);
    this._setState(this._attempt === 0 && this._state !== "reconnecting" ? "connecting" : "reconnecting");
    this._driver.start();
    this._scheduleUpgrade();
  }

  /** The current driver is connected and has (re)sent every subscription. */
  _opened(driver) {
    if (driver !== this._driver) return;
    this._attempt = 0;
    this._blocked = 0;
    this._setState("live");
  }

  /**
   * The current driver lost its connection (`opened`) or could not open one.
   * A failed open counts towards falling back only while plain HTTP to the
   * gateway works: a gateway that is down is waited for, not routed around.
   */
  async _closedBy(driver, { opened, code }) {
    if (driver !== this._driver || this._closed) return;
    this._unconfirmAll();
    this._log({ ev: "closed", transport: this._mode, opened, code });
    if (code === 4001 && this._getToken && (await this._refreshToken())) {
      // The token expired before it could be refreshed: come back with the new one.
      if (driver !== this._driver || this._closed) return;
      this._attempt = 0;
      return this._retryIn(0);
    }
    if (opened) {
      if (code === 1012) {
        // The gateway is draining: another one is ready, come back soon (spread out).
        this._attempt = 0;
        return this._retryIn(Math.random() * 1000);
      }
      return this._retryIn(this._backoff());
    }
    this._setState(navigator.onLine === false ? "offline" : "reconnecting");
    const reachable = await this._probeHttp();
    if (driver !== this._driver || this._closed) return;
    this._blocked = reachable ? this._blocked + 1 : 0;
    const next = this._transports[this._transports.indexOf(this._mode) + 1];
    if (reachable && next && this._blocked >= this.options.fallbackAfter) {
      this._switchTo(next, `${this._mode} failed ${this._blocked} times while HTTP works`);
      return;
    }
    this._retryIn(this._backoff());
  }

  _switchTo(mode, why) {
    this._log({ ev: "transport", from: this._mode, to: mode, why });
    this._mode = mode;
    this._blocked = 0;
    this._attempt = 0;
    this._connect();
  }

  _backoff() {
    const ceiling = Math.min(this.options.maxBackoffMs, this.options.baseBackoffMs * 2 ** Math.min(this._attempt, 20));
    this._attempt += 1;
    return Math.random() * ceiling;
  }

  _retryIn(ms) {
    clearTimeout(this._retryTimer);
    this._retryAt = Date.now() + ms;
    this._retryTimer = setTimeout(() => this._connect(), ms);
    this._setState(navigator.onLine === false ? "offline" : "reconnecting");
  }

  _reconnectNow(why) {
    if (this._closed || this._state === "live") return;
    this._log({ ev: "wake", why });
    this._attempt = 0;
    this._retryIn(Math.random() * 250);
  }

  /** The network went away: drop the connection now rather than wait for TCP to notice. */
  _lost(why) {
    if (this._closed) return;
    this._log({ ev: "lost", why });
    const d = this._driver;
    this._driver = null;
    d?.close();
    this._unconfirmAll();
    this._driver = { add() {}, remove() {}, close() {} };
    this._retryIn(this._backoff());
    this._setState("offline");
  }

  /** While on a fallback transport, tries WebSocket now and then and moves back when it opens. */
  _scheduleUpgrade() {
    clearInterval(this._upgradeTimer);
    this._upgradeTimer = null;
    const best = this._transports[0];
    if (this._mode === best || !this.options.upgradeEveryMs) return;
    this._upgradeTimer = setInterval(async () => {
      if (this._state !== "live") return;
      if (await this._tryWebSocket()) this._switchTo(best, "WebSocket works again");
    }, this.options.upgradeEveryMs);
  }

  _tryWebSocket() {
    return new Promise((resolve) => {
      let ws;
      try {
        ws = this._openWebSocket();
      } catch {
        return resolve(false);
      }
      const done = (ok) => {
        clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onclose = null;
        try {
          ws.close();
        } catch {
          /* already closed */
        }
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), this.options.openTimeoutMs);
      ws.onopen = () => done(true);
      ws.onerror = ws.onclose = () => done(false);
    });
  }

  async _probeHttp() {
    try {
      const res = await fetch(new URL("/healthz", this._base), {
        cache: "no-store",
        signal: AbortSignal.timeout(this.options.openTimeoutMs),
      });
      return res.status < 500;
    } catch {
      return false;
    }
  }

  // ---- URLs and HTTP ----

  _url(path, params = {}, withToken = false) {
    const u = new URL(path, this._base);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
    if (withToken && this._token) u.searchParams.set("token", this._token);
    return u;
  }

  _wsUrl() {
    const u = this._url("/ws");
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.toString();
  }

  /** `/ws` with the token as a subprotocol, never in the URL. */
  _openWebSocket() {
    const protocols = this._token ? ["kpistream", `bearer.${this._token}`] : undefined;
    return new WebSocket(this._wsUrl(), protocols);
  }

  // ---- token ----

  /** The token's claims (not verified: the gateway does that), or null. */
  _claims() {
    try {
      const b64 = this._token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    } catch {
      return null;
    }
  }

  /** Asks `getToken` for a new token some time before this one's `exp`. */
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const exp = this._getToken && this._token ? this._claims()?.exp : undefined;
    if (!Number.isFinite(exp) || this._closed) return;
    const left = exp * 1000 - Date.now();
    // A minute early, or halfway for a short-lived token.
    const ms = Math.max(0, left - Math.min(60000, left / 2));
    this._refreshTimer = setTimeout(() => this._refreshToken(), ms);
  }

  async _refreshToken() {
    if (!this._getToken || this._closed) return false;
    let token;
    try {
      token = await this._getToken();
    } catch (e) {
      this._log({ ev: "token-refresh-failed", error: String(e) });
    }
    if (typeof token !== "string" || !token) {
      this._refreshTimer = setTimeout(() => this._refreshToken(), 5000);
      return false;
    }
    const before = this._identity();
    this._token = token;
    this._log({ ev: "token-refreshed" });
    // Values read with another identity's token are not cached under this one.
    if (this._identity() !== before) this._dirty.clear();
    this._driver?.send?.({ type: "auth", token });
    this._scheduleRefresh();
    return true;
  }

  _headers() {
    return this._token ? { Authorization: `Bearer ${this._token}` } : {};
  }

  async _getJson(path, params = {}, signal) {
    const res = await fetch(this._url(path, params), { headers: this._headers(), cache: "no-store", signal });
    const body = await res.json().catch(() => ({}));
    if (res.status === 403 && body.code === "forbidden") this._clearCache();
    if (!res.ok) {
      const err = new Error(body.message || `HTTP ${res.status}`);
      err.status = res.status;
      err.body = body;
      throw err;
    }
    return body;
  }

  // ---- cache ----

  /** Whose values the cache holds: the gateway and the token's subject. */
  _identity() {
    const sub = this._token ? this._claims()?.sub : undefined;
    return `${this._base.origin}|${typeof sub === "string" ? sub : this._token ? "token" : "anonymous"}`;
  }

  _cacheKey(kpi, period) {
    return `${this.options.storagePrefix}${this._identity()}|${kpi}:${period}`;
  }

  /** Forgets every cached value of this identity: it may no longer read some of them. */
  _clearCache() {
    if (!this._storage) return;
    const prefix = `${this.options.storagePrefix}${this._identity()}|`;
    try {
      const keys = [];
      for (let i = 0; i < this._storage.length; i++) {
        const k = this._storage.key(i);
        if (k && k.startsWith(prefix)) keys.push(k);
      }
      keys.forEach((k) => this._storage.removeItem(k));
    } catch {
      /* storage gone: nothing to clear */
    }
    this._dirty.clear();
    this._log({ ev: "cache-cleared" });
  }

  _readCache(kpi, period) {
    if (!this._storage) return null;
    try {
      const m = JSON.parse(this._storage.getItem(this._cacheKey(kpi, period)) || "null");
      return isData(m) && m.kpi === kpi && m.period === period ? m : null;
    } catch {
      return null;
    }
  }

  /** Writes are batched: at most one localStorage write per topic per second. */
  _markDirty(topic) {
    if (!this._storage) return;
    this._dirty.add(topic);
    if (!this._flushTimer) this._flushTimer = setTimeout(() => this._flush(), 1000);
  }

  _flush() {
    clearTimeout(this._flushTimer);
    this._flushTimer = null;
    for (const t of this._dirty) {
      try {
        if (t.last) this._storage.setItem(this._cacheKey(t.kpi, t.period), JSON.stringify(t.last));
      } catch {
        /* full or forbidden storage: the cache is a nicety */
      }
    }
    this._dirty.clear();
  }

  // ---- events ----

  _setState(state) {
    if (state !== "live") this._unconfirmAll();
    const changed = state !== this._state;
    this._state = state;
    if (changed) this._log({ ev: "status", state, transport: this._mode });
    this._status();
  }

  _status() {
    this._emit("status", this.status);
  }

  _emit(event, ...args) {
    for (const fn of this._listeners.get(event) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        console.error("kpistream listener failed", e);
      }
    }
  }

  _log(entry) {
    entry.t = Date.now();
    this.log.push(entry);
    if (this.log.length > LOG_MAX) this.log.splice(0, this.log.length - LOG_MAX);
  }
}

/** A handle on one subscription; several handles may share a kpi+period. */
class Subscription {
  constructor(client, kpi, period, onMessage, { cadence, encoding }) {
    this._client = client;
    this.cadence = cadence;
    this.encoding = encoding;
    this.kpi = kpi;
    this.period = period;
    this._onMessage = onMessage;
    this._paused = false;
    this._pending = null;
    this._topic = null;
    this.closed = false;
  }

  /** The last message delivered (or held while paused). */
  get last() {
    return this._topic?.last ?? null;
  }

  /** True while the gateway confirms this subscription on a live connection. */
  get fresh() {
    return !!this._topic && this._client._isFresh(this._topic);
  }

  /** Moves this handle to another period: unsubscribe, then subscribe. */
  switchPeriod(period) {
    if (this.closed) throw new Error("subscription is closed");
    if (!PERIODS.includes(period)) throw new TypeError(`invalid period: ${period}`);
    if (period === this.period) return this;
    this._client._detach(this);
    this.period = period;
    this._pending = null;
    this._client._attach(this);
    return this;
  }

  /** Changes this handle's cadence and/or encoding (a resubscription when the wire mode changes). */
  setOptions(options = {}) {
    if (this.closed) throw new Error("subscription is closed");
    const o = checkOptions({ cadence: this.cadence, encoding: this.encoding, ...options });
    this.cadence = o.cadence;
    this.encoding = o.encoding;
    const topic = this._topic;
    if (topic && this._client._chooseMode(topic)) this._client._resubscribe(topic);
    return this;
  }

  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this._client._detach(this);
  }

  pause() {
    this._paused = true;
  }

  resume() {
    this._paused = false;
    this._flushPending();
  }

  _deliver(msg, meta) {
    if (this.closed) return;
    if (this._paused || this._client._paused) {
      this._pending = [msg, meta];
      return;
    }
    try {
      this._onMessage(msg, meta);
    } catch (e) {
      console.error("kpistream subscriber failed", e);
    }
  }

  _flushPending() {
    const p = this._pending;
    this._pending = null;
    if (p) this._deliver(p[0], p[1]);
  }
}

/** One multiplexed WebSocket to `/ws` for every subscription. */
class WsDriver {
  constructor(client) {
    this.c = client;
    this.ws = null;
    this.opened = false;
    this.done = false;
    this.timers = [];
    this.pingId = 0;
    this.awaitingPong = null;
  }

  start() {
    const c = this.c;
    try {
      this.ws = c._openWebSocket();
    } catch (e) {
      // A page or proxy that forbids WebSocket makes the constructor throw.
      c._log({ ev: "ws-construct-failed", error: String(e) });
      queueMicrotask(() => this.finish(undefined));
      return;
    }
    this.timers.push(
      setTimeout(() => {
        if (!this.opened) this.finish(undefined);
      }, c.options.openTimeoutMs),
    );
    this.ws.onopen = () => {
      this.opened = true;
      for (const t of c._topics.values()) this.add(t);
      if (c._paused) this.send({ type: "pause" });
      this.timers.push(setInterval(() => this.ping(), c.options.pingEveryMs));
      c._opened(this);
    };
    this.ws.onmessage = (e) => this.onMessage(e.data);
    this.ws.onclose = (e) => this.finish(e.code);
  }

  onMessage(data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return;
    }
    this.awaitingPong = null;
    const c = this.c;
    switch (m && m.type) {
      case "snapshot":
      case "update":
      case "patch":
        c._receive(m, "ws");
        break;
      case "subscribed":
        c._confirm(c._topics.get(keyOf(m.kpi, m.period)));
        c._status();
        break;
      case "error":
        c._emit("error", m);
        if (m.code === "forbidden") c._clearCache();
        // The hub could not subscribe upstream right now: ask again later.
        if (m.code === "unavailable" && m.kpi && m.period) {
          this.timers.push(
            setTimeout(() => {
              const t = c._topics.get(keyOf(m.kpi, m.period));
              if (t) this.add(t);
            }, 2000 + Math.random() * 3000),
          );
        }
        break;
      default:
        break;
    }
  }

  /** An application-level ping: a connection that went silent (Wi-Fi gone, no FIN) is dropped. */
  ping() {
    if (this.awaitingPong && Date.now() - this.awaitingPong > this.c.options.pongTimeoutMs) {
      this.finish(4000);
      return;
    }
    if (!this.awaitingPong) this.awaitingPong = Date.now();
    this.send({ type: "ping", id: ++this.pingId });
  }

  send(obj) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(obj));
  }

  add(topic) {
    if (!this.opened) return;
    const msg = { type: "subscribe", kpi: topic.kpi, period: topic.period, ...modeParams(topic) };
    const since = sinceOf(topic);
    if (since !== undefined) msg.since = since;
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
    for (const t of this.timers) clearTimeout(t), clearInterval(t);
    this.timers = [];
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      try {
        this.ws.close(1000);
      } catch {
        /* already closed */
      }
    }
  }
}

/**
 * Server-Sent Events, one stream per subscription (the first `maxStreams`;
 * the rest are polled). Any stream failing restarts the driver: with
 * `since`, nothing is lost and nothing repeats.
 */
class SseDriver {
  constructor(client) {
    this.c = client;
    this.streams = new Map();
    this.poller = new Poller(client, this, true);
    this.opened = false;
    this.done = false;
    this.timer = null;
  }

  start() {
    for (const t of this.c._topics.values()) this.add(t);
    this.timer = setTimeout(() => {
      if (!this.opened) this.finish(undefined);
    }, this.c.options.openTimeoutMs);
    this.check();
  }

  add(topic) {
    if (this.done || this.streams.has(topic.key) || this.poller.has(topic)) return;
    if (this.streams.size >= this.c.options.maxStreams) {
      this.poller.add(topic);
      return;
    }
    const params = { period: topic.period, since: sinceOf(topic), ...modeParams(topic) };
    let es;
    try {
      es = new EventSource(this.c._url(`/sse/kpi/${topic.kpi}`, params, true));
    } catch {
      queueMicrotask(() => this.finish(undefined));
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
      this.c._receive(m, "sse");
    };
    // The browser would retry by itself, but only we know when to give up on SSE.
    es.onerror = () => this.finish(undefined);
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
      clearTimeout(this.timer);
      this.c._opened(this);
    }
  }

  finish(code) {
    if (this.done) return;
    const opened = this.opened;
    this.close();
    this.c._closedBy(this, { opened, code });
  }

  close() {
    this.done = true;
    clearTimeout(this.timer);
    for (const s of this.streams.values()) s.es.close();
    this.streams.clear();
    this.poller.close();
  }
}

/** HTTP long-polling of `/api/kpi/<code>/updates`, the transport of last resort. */
class PollDriver {
  constructor(client) {
    this.c = client;
    this.poller = new Poller(client, this, false);
    this.opened = false;
    this.done = false;
  }

  start() {
    for (const t of this.c._topics.values()) this.add(t);
    if (this.c._topics.size === 0) this.ok();
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
    this.c._setState(navigator.onLine === false ? "offline" : "reconnecting");
  }

  close() {
    this.done = true;
    this.poller.close();
  }
}

/**
 * One polling loop per topic. Long polls while they fit in the browser's
 * connection budget; with more topics, short polls every `pollIntervalMs`
 * so that no request waits behind another's long wait.
 */
class Poller {
  constructor(client, owner, helper) {
    this.c = client;
    this.owner = owner;
    this.helper = helper; // polling the topics an SSE driver has no stream for
    this.loops = new Map();
  }

  has(topic) {
    return this.loops.has(topic.key);
  }

  add(topic) {
    if (this.loops.has(topic.key)) return;
    const loop = { abort: new AbortController(), failures: 0 };
    this.loops.set(topic.key, loop);
    this.run(topic, loop);
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

  async run(topic, loop) {
    const c = this.c;
    while (this.loops.get(topic.key) === loop) {
      const long = !this.helper && this.loops.size <= c.options.maxStreams;
      const params = { period: topic.period, wait: long ? c.options.pollWaitSecs : 0, since: sinceOf(topic) };
      // A poll holds a throttled answer up to its longest wait; beyond that
      // this loop keeps the rhythm itself. Polls never carry patches.
      const every = cadenceMs(topic.cadence);
      const spaced = every !== null && every > c.options.pollWaitSecs * 1000;
      if (topic.cadence && topic.cadence !== "live" && !spaced) params.cadence = topic.cadence;
      try {
        const timeout = AbortSignal.timeout((params.wait + 10) * 1000);
        const body = await c._getJson(
          `/api/kpi/${topic.kpi}/updates`,
          params,
          AbortSignal.any([loop.abort.signal, timeout]),
        );
        if (loop.abort.signal.aborted) return;
        loop.failures = 0;
        c._confirm(topic);
        if (!this.helper) this.owner.ok();
        for (const m of body.messages ?? []) c._receive(m, "poll");
        c._status();
        if (spaced) await sleep(every);
        else if (!long) await sleep(c.options.pollIntervalMs);
      } catch (e) {
        if (loop.abort.signal.aborted) return;
        loop.failures += 1;
        if (!this.helper) this.owner.failed();
        if (e && e.status >= 400 && e.status < 500) c._emit("error", e.body ?? { message: String(e) });
        const ceiling = Math.min(c.options.maxBackoffMs, c.options.baseBackoffMs * 2 ** Math.min(loop.failures, 20));
        await sleep(Math.random() * ceiling);
      }
    }
  }
}

function safeStorage() {
  try {
    const s = globalThis.localStorage;
    const probe = "kpistream:probe";
    s.setItem(probe, "1");
    s.removeItem(probe);
    return s;
  } catch {
    return null;
  }
}
