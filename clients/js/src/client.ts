/**
 * `KpiStream`: the public client. It owns the topics, orders every message
 * per topic, and reconnects, falls back and upgrades between transports;
 * drivers (ws.ts, sse.ts, poll.ts) only carry messages.
 */

import { backoffDelay } from "./backoff.js";
import { OfflineCache } from "./cache.js";
import { resolveEnvironment, type Environment, type TimerId, type WebSocketLike } from "./env.js";
import { unpatch } from "./merge-patch.js";
import type {
  DataMessage,
  ErrorMessage,
  HistoryBucket,
  HistoryBody,
  KpiList,
  PatchMessage,
  Period,
  SystemMessage,
  TransportName,
} from "./messages.js";
import { cadenceRank, checkOptions, isValidTopic, type SubscribeOptions } from "./options.js";
import { KpiHttpError } from "./http-error.js";
import { Subscription, type MessageCallback, type MessageMeta } from "./subscription.js";
import { claimsOf, refreshDelayMs } from "./token.js";
import { isData, keyOf, type Topic } from "./topic.js";
import type { ConnectionState, Driver, DriverEnd, DriverOptions, LogEntry } from "./driver.js";
import { TransportSelector, createDriver } from "./transport.js";

const LOG_MAX = 5000;
/** Close code of a gateway that drains: another one is ready. */
const CLOSE_DRAINING = 1012;
/** Close code of a connection whose token expired. */
const CLOSE_TOKEN_EXPIRED = 4001;
/** How soon to ask `getToken` again after it failed. */
const TOKEN_RETRY_MS = 5000;

export interface KpiStreamOptions {
  /** Gateway base URL (default: the page's origin). */
  url?: string | undefined;
  /**
   * JWT; sent as `Authorization: Bearer` on fetches, as the `bearer.<jwt>`
   * subprotocol on WebSockets (so it stays out of URLs and logs), and as
   * `?token=` on SSE (EventSource can send nothing else).
   */
  token?: string | undefined;
  /**
   * Returns a fresh JWT; called before the token expires (and when the
   * gateway closes for an expired one), and the new token is handed to the
   * open connection (`{"type":"auth"}`).
   */
  getToken?: (() => Promise<string | null | undefined> | string | null | undefined) | undefined;
  /** Order to try (default `["ws", "sse", "poll"]`). */
  transports?: TransportName[] | undefined;
  /** A connection not open within this counts as failed (5000). */
  openTimeoutMs?: number | undefined;
  /** Failed opens, while plain HTTP to the gateway works, before falling back to the next transport (2). */
  fallbackAfter?: number | undefined;
  /** While on a fallback, how often to try WebSocket again (60000; 0: never). */
  upgradeEveryMs?: number | undefined;
  /** Reconnect delay: full jitter, random(0, min(max, base * 2^n)), never giving up (500). */
  baseBackoffMs?: number | undefined;
  /** (30000) */
  maxBackoffMs?: number | undefined;
  /** Long-poll wait in seconds (25). */
  pollWaitSecs?: number | undefined;
  /** Short-poll interval when there are more topics than `maxStreams` (2000). */
  pollIntervalMs?: number | undefined;
  /** SSE streams (and long polls) at once (4): a browser opens only 6 HTTP/1.1 connections per host. */
  maxStreams?: number | undefined;
  /** WebSocket application-level ping interval (25000). */
  pingEveryMs?: number | undefined;
  /** A WebSocket that answers nothing for this long after a ping is dropped (10000). */
  pongTimeoutMs?: number | undefined;
  /**
   * Keep the last message of every subscription in localStorage and show it
   * (stale) on the next start (true); kept per gateway and identity (the
   * token's `sub`), and cleared when the gateway answers `forbidden`.
   */
  cache?: boolean | undefined;
  /** localStorage key prefix ("kpistream:last:"). */
  storagePrefix?: string | undefined;
  /** The runtime (timers, clock, sockets, fetch, storage): for tests and non-browser hosts. */
  env?: Partial<Environment> | undefined;
}

const DEFAULTS = {
  transports: ["ws", "sse", "poll"] as TransportName[],
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

/** The options in force: the defaults, overridden by what the caller set. */
export type ResolvedOptions = typeof DEFAULTS & Pick<KpiStreamOptions, "url" | "token" | "getToken">;

/** The connection as `status` and the `status` event report it. */
export interface ConnectionStatus {
  state: ConnectionState;
  transport: TransportName;
  paused: boolean;
  /** Consecutive failures: the backoff exponent. */
  attempt: number;
  /** Until the next reconnect attempt, while one is scheduled. */
  retryInMs: number;
}

/** The events of `on(name, fn)`. */
export interface KpiStreamEvents {
  status: (status: ConnectionStatus) => void;
  /** An error message from the gateway (over any transport, or an HTTP 4xx body). */
  error: (error: ErrorMessage) => void;
  /** Every applied data message. */
  message: (msg: DataMessage, meta: MessageMeta) => void;
  /** An admin broadcast. */
  system: (msg: SystemMessage) => void;
}

/** A driver that carries nothing: in place while the network is known to be gone. */
const NO_DRIVER: Driver = { start() {}, add() {}, remove() {}, close() {} };

export class KpiStream {
  readonly options: ResolvedOptions;
  /** The last 5000 events (applied/skipped seqs, transport changes) for debugging and tests. */
  readonly log: LogEntry[] = [];
  /** @internal */
  readonly env: Environment;
  /** @internal */
  _state: ConnectionState = "connecting";
  private readonly base: URL;
  private token: string | null;
  private readonly getToken: (() => Promise<string | null | undefined> | string | null | undefined) | null;
  private refreshTimer: TimerId | null = null;
  private readonly selector: TransportSelector;
  private readonly topics = new Map<string, Topic>();
  private readonly listeners = new Map<keyof KpiStreamEvents, Set<(...args: never[]) => void>>();
  private isPaused = false;
  private closed = false;
  /** Consecutive failures: the backoff exponent. */
  private attempt = 0;
  private retryTimer: TimerId | null = null;
  private retryAt = 0;
  private driver: Driver | null = null;
  private upgradeTimer: TimerId | null = null;
  private readonly cache: OfflineCache;
  private readonly onOnline = (): void => this.reconnectNow("online");
  private readonly onOffline = (): void => this.lost("offline");
  private readonly onHide = (): void => this.cache.flush();

  constructor(options: KpiStreamOptions = {}) {
    const { env, ...rest } = options;
    const defined = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
    this.options = { ...DEFAULTS, ...defined } as ResolvedOptions;
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
      // No token yet: ask for one first (and connect anyway if that fails).
      void this.refreshToken().finally(() => this.connect());
    } else {
      this.scheduleRefresh();
      this.connect();
    }
  }

  // ---- public API ----

  /** Subscribes to one KPI in one period; returns a handle. */
  subscribe(kpi: string, period: Period, onMessage: MessageCallback, options: SubscribeOptions = {}): Subscription {
    if (!isValidTopic(kpi, period)) throw new TypeError(`invalid kpi or period: ${String(kpi)} ${String(period)}`);
    if (typeof onMessage !== "function") throw new TypeError("onMessage must be a function");
    const sub = new Subscription(this, kpi, period, onMessage, checkOptions(options));
    this._attach(sub);
    return sub;
  }

  /** Stops deliveries to every subscription until `resume()`; the gateway keeps only the latest value meanwhile. */
  pause(): void {
    if (this.isPaused) return;
    this.isPaused = true;
    this.driver?.pauseAll?.(true);
    this._status();
  }

  /** Delivers the latest value of every subscription and goes on live. */
  resume(): void {
    if (!this.isPaused) return;
    this.isPaused = false;
    this.driver?.pauseAll?.(false);
    for (const t of this.topics.values()) for (const s of t.subs) s._flushPending();
    this._status();
  }

  /** Registers a listener; returns a function that removes it. A `status` listener hears the current status at once. */
  on<E extends keyof KpiStreamEvents>(event: E, fn: KpiStreamEvents[E]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    if (event === "status") (fn as KpiStreamEvents["status"])(this.status);
    return () => {
      this.listeners.get(event)?.delete(fn);
    };
  }

  get status(): ConnectionStatus {
    return {
      state: this._state,
      transport: this.selector.mode,
      paused: this.isPaused,
      attempt: this.attempt,
      retryInMs: this.retryTimer !== null ? Math.max(0, this.retryAt - this.env.now()) : 0,
    };
  }

  get paused(): boolean {
    return this.isPaused;
  }

  /** The last message seen for a kpi+period (live or cached), or null. */
  latest(kpi: string, period: Period): DataMessage | null {
    return this.topics.get(keyOf(kpi, period))?.last ?? this.cache.read(kpi, period);
  }

  /** `GET /api/kpis`: the codes with published updates. */
  async kpis(): Promise<string[]> {
    return ((await this._getJson("/api/kpis")) as Partial<KpiList>).kpis ?? [];
  }

  /** `GET /api/kpi/<code>/history`: closed buckets, oldest first. */
  async history(kpi: string, period: Period, limit = 30): Promise<HistoryBucket[]> {
    if (!isValidTopic(kpi, period)) throw new TypeError("invalid kpi or period");
    const body = (await this._getJson(`/api/kpi/${kpi}/history`, { period, limit })) as Partial<HistoryBody>;
    return body.buckets ?? [];
  }

  /** `GET /api/kpi/<code>`: the current snapshot. */
  async snapshot(kpi: string, period: Period): Promise<DataMessage> {
    if (!isValidTopic(kpi, period)) throw new TypeError("invalid kpi or period");
    return (await this._getJson(`/api/kpi/${kpi}`, { period })) as DataMessage;
  }

  /** Closes the connection and forgets every subscription. */
  close(): void {
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
  get _opts(): DriverOptions {
    return this.options;
  }

  /** @internal */
  _topicList(): Topic[] {
    return [...this.topics.values()];
  }

  /** @internal */
  _topic(kpi: string | undefined, period: string | undefined): Topic | undefined {
    return kpi === undefined || period === undefined ? undefined : this.topics.get(keyOf(kpi, period));
  }

  /** @internal */
  _attach(sub: Subscription): void {
    const key = keyOf(sub.kpi, sub.period);
    let topic = this.topics.get(key);
    const isNew = !topic;
    if (!topic) {
      const cached = this.cache.read(sub.kpi, sub.period);
      // `fromCache`: shown, but not yet vouched for by a gateway in this session.
      topic = {
        kpi: sub.kpi,
        period: sub.period,
        key,
        last: cached,
        fromCache: cached !== null,
        confirmed: false,
        subs: new Set(),
        cadence: sub.cadence,
        encoding: sub.encoding,
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
  _detach(sub: Subscription): void {
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
  _modeChanged(topic: Topic): void {
    if (this.chooseMode(topic)) this.resubscribe(topic);
  }

  /** Sets a topic's wire cadence/encoding from its handles; true when it changed. */
  private chooseMode(topic: Topic): boolean {
    const subs = [...topic.subs];
    const first = subs[0];
    if (!first) return false;
    const cadence = subs.map((s) => s.cadence).reduce((a, b) => (cadenceRank(b) < cadenceRank(a) ? b : a), first.cadence);
    // Patches only when every handle asked for them (they cost nothing to a full reader, but keep it explicit).
    const encoding = subs.every((s) => s.encoding === "delta") ? "delta" : "full";
    const changed = cadence !== topic.cadence || encoding !== topic.encoding;
    topic.cadence = cadence;
    topic.encoding = encoding;
    return changed;
  }

  /** Subscribes a topic again (its cadence changed, or a patch could not be applied). */
  private resubscribe(topic: Topic): void {
    this.driver?.remove(topic);
    this.driver?.add(topic);
  }

  /** @internal */
  _isFresh(topic: Topic): boolean {
    return topic.confirmed && this._state === "live";
  }

  /**
   * @internal The gateway acknowledged a topic on the current connection. A
   * value from the cache is not confirmed by an acknowledgement: only a
   * message at least as new as it does that.
   */
  _confirm(topic: Topic | undefined): void {
    if (topic && !topic.fromCache) topic.confirmed = true;
  }

  /** @internal */
  _unconfirmAll(): void {
    for (const t of this.topics.values()) t.confirmed = false;
  }

  /** @internal One data or patch message from any transport: ordered per topic, then delivered. */
  _receive(raw: unknown, source: TransportName): void {
    const msg = isPatch(raw) ? this.unpatch(raw, source) : raw;
    if (!isData(msg)) return;
    const topic = this.topics.get(keyOf(msg.kpi, msg.period));
    if (!topic) return;
    const last = topic.last;
    const entry = { kpi: msg.kpi, period: msg.period, seq: msg.seq, type: msg.type, source };
    if (last && msg.seq === last.seq) {
      // The same message again (a snapshot after a reconnect): it vouches for what is shown.
      topic.fromCache = false;
      topic.confirmed = true;
      this._log({ ev: "skipped", ...entry, last: last.seq });
      return;
    }
    if (last && msg.seq < last.seq) {
      // A gateway whose history was wiped restarts its counter: a newer snapshot is the new truth.
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
    const meta: MessageMeta = { source, stale: false };
    for (const s of topic.subs) s._deliver(msg, meta);
    this.emit("message", msg, meta);
  }

  /**
   * The full message a patch makes of the one held, or null (and a fresh
   * subscription, which starts with a full message) when it holds another.
   */
  private unpatch(p: PatchMessage, source: TransportName): DataMessage | null {
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

  private clear(timer: TimerId | null): void {
    if (timer !== null) this.env.clearTimeout(timer);
  }

  private connect(): void {
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
  _opened(driver: Driver): void {
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
  async _closedBy(driver: Driver, { opened, code }: DriverEnd): Promise<void> {
    if (driver !== this.driver || this.closed) return;
    this._unconfirmAll();
    this._log({ ev: "closed", transport: this.selector.mode, opened, code });
    if (code === CLOSE_TOKEN_EXPIRED && this.getToken && (await this.refreshToken())) {
      // The token expired before it could be refreshed: come back with the new one.
      if (driver !== this.driver || this.closed) return;
      this.attempt = 0;
      return this.retryIn(0);
    }
    if (opened) {
      if (code === CLOSE_DRAINING) {
        // The gateway is draining: another one is ready, come back soon (spread out).
        this.attempt = 0;
        return this.retryIn(this.env.random() * 1000);
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

  private switchTo(mode: TransportName, why: string): void {
    this._log({ ev: "transport", from: this.selector.mode, to: mode, why });
    this.selector.switchTo(mode);
    this.attempt = 0;
    this.connect();
  }

  private backoff(): number {
    const delay = backoffDelay(this.attempt, this.options, () => this.env.random());
    this.attempt += 1;
    return delay;
  }

  private retryIn(ms: number): void {
    this.clear(this.retryTimer);
    this.retryAt = this.env.now() + ms;
    this.retryTimer = this.env.setTimeout(() => this.connect(), ms);
    this._setState(this.env.online() ? "reconnecting" : "offline");
  }

  private reconnectNow(why: string): void {
    if (this.closed || this._state === "live") return;
    this._log({ ev: "wake", why });
    this.attempt = 0;
    this.retryIn(this.env.random() * 250);
  }

  /** The network went away: drop the connection now rather than wait for TCP to notice. */
  private lost(why: string): void {
    if (this.closed) return;
    this._log({ ev: "lost", why });
    const d = this.driver;
    this.driver = NO_DRIVER;
    d?.close();
    this._unconfirmAll();
    this.retryIn(this.backoff());
    this._setState("offline");
  }

  private stopUpgrades(): void {
    if (this.upgradeTimer !== null) this.env.clearInterval(this.upgradeTimer);
    this.upgradeTimer = null;
  }

  /** While on a fallback transport, tries the best one now and then and moves back when it opens. */
  private scheduleUpgrade(): void {
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

  private tryWebSocket(): Promise<boolean> {
    return new Promise((resolve) => {
      let ws: WebSocketLike;
      try {
        ws = this._openWebSocket();
      } catch {
        resolve(false);
        return;
      }
      const done = (ok: boolean): void => {
        this.env.clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onclose = null;
        try {
          ws.close();
        } catch {
          /* already closed */
        }
        resolve(ok);
      };
      const timer = this.env.setTimeout(() => done(false), this.options.openTimeoutMs);
      ws.onopen = () => done(true);
      ws.onerror = ws.onclose = () => done(false);
    });
  }

  /** Whether plain HTTP to the gateway works (any answer below 500). */
  private async probeHttp(): Promise<boolean> {
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
  _url(path: string, params: Record<string, unknown> = {}, withToken = false): string {
    const u = new URL(path, this.base);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
    if (withToken && this.token) u.searchParams.set("token", this.token);
    return u.toString();
  }

  /** @internal `/ws` with the token as a subprotocol, never in the URL. */
  _openWebSocket(): WebSocketLike {
    const WebSocket = this.env.WebSocket;
    if (!WebSocket) throw new Error("WebSocket is not available");
    const u = new URL(this._url("/ws"));
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return this.token ? new WebSocket(u.toString(), ["kpistream", `bearer.${this.token}`]) : new WebSocket(u.toString());
  }

  /** @internal */
  async _getJson(path: string, params: Record<string, unknown> = {}, signal?: AbortSignal): Promise<unknown> {
    const fetch = this.env.fetch;
    if (!fetch) throw new Error("fetch is not available");
    const headers: Record<string, string> = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const res = await fetch(this._url(path, params), signal ? { headers, cache: "no-store", signal } : { headers, cache: "no-store" });
    const body: unknown = await res.json().catch(() => ({}));
    const err = asError(body);
    if (res.status === 403 && err?.code === "forbidden") this.cache.clear();
    if (!res.ok) throw new KpiHttpError(err?.message ?? `HTTP ${res.status}`, res.status, body);
    return body;
  }

  // ---- token ----

  /** Whose values the cache holds: the gateway and the token's subject. */
  private identity(): string {
    const sub = this.token ? claimsOf(this.token)?.sub : undefined;
    return `${this.base.origin}|${typeof sub === "string" ? sub : this.token ? "token" : "anonymous"}`;
  }

  /** Asks `getToken` for a new token some time before this one's `exp`. */
  private scheduleRefresh(): void {
    this.clear(this.refreshTimer);
    this.refreshTimer = null;
    if (!this.getToken || !this.token || this.closed) return;
    const ms = refreshDelayMs(claimsOf(this.token), this.env.now());
    if (ms !== null) this.refreshTimer = this.env.setTimeout(() => void this.refreshToken(), ms);
  }

  private async refreshToken(): Promise<boolean> {
    if (!this.getToken || this.closed) return false;
    let token: unknown;
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
    // Values read with another identity's token are not cached under this one.
    if (this.identity() !== before) this.cache.dropPending();
    this.driver?.send?.({ type: "auth", token });
    this.scheduleRefresh();
    return true;
  }

  // ---- events ----

  /** @internal */
  _setState(state: ConnectionState): void {
    if (state !== "live") this._unconfirmAll();
    const changed = state !== this._state;
    this._state = state;
    if (changed) this._log({ ev: "status", state, transport: this.selector.mode });
    this._status();
  }

  /** @internal */
  _status(): void {
    this.emit("status", this.status);
  }

  /** @internal An error message from the gateway. */
  _gatewayError(m: ErrorMessage): void {
    this.emit("error", m);
    if (m.code === "forbidden") this.cache.clear();
  }

  /** @internal A 4xx answer to a poll. */
  _httpError(e: KpiHttpError): void {
    this.emit("error", asError(e.body) ?? { type: "error", code: `http_${e.status}`, message: e.message });
  }

  /** @internal */
  _system(m: SystemMessage): void {
    this.emit("system", m);
  }

  /** @internal */
  _reportError(what: string, error: unknown): void {
    this.env.reportError(what, error);
  }

  private emit<E extends keyof KpiStreamEvents>(event: E, ...args: Parameters<KpiStreamEvents[E]>): void {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        (fn as unknown as (...a: Parameters<KpiStreamEvents[E]>) => void)(...args);
      } catch (e) {
        this.env.reportError("kpistream listener failed", e);
      }
    }
  }

  /** @internal */
  _log(entry: LogEntry): void {
    entry.t = this.env.now();
    this.log.push(entry);
    if (this.log.length > LOG_MAX) this.log.splice(0, this.log.length - LOG_MAX);
  }
}

function isPatch(m: unknown): m is PatchMessage {
  return m !== null && typeof m === "object" && (m as { type?: unknown }).type === "patch";
}

/** A gateway error body, or null when `body` is not one. */
function asError(body: unknown): ErrorMessage | null {
  if (body === null || typeof body !== "object") return null;
  const o = body as Partial<ErrorMessage>;
  return typeof o.message === "string" || typeof o.code === "string"
    ? { type: "error", code: o.code ?? "error", message: o.message ?? "", ...pick(o) }
    : null;
}

function pick(o: Partial<ErrorMessage>): Pick<ErrorMessage, "kpi" | "period"> {
  const out: Pick<ErrorMessage, "kpi" | "period"> = {};
  if (typeof o.kpi === "string") out.kpi = o.kpi;
  if (typeof o.period === "string") out.period = o.period;
  return out;
}
