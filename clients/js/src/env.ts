/**
 * What the client needs from its runtime (clock, timers, randomness, sockets,
 * fetch, storage, the page's online/offline events), in one injectable
 * object: a browser gets its globals, a test gets fakes and a manual clock.
 */

/** An opaque timer handle. */
export type TimerId = unknown;

/** The part of a browser `WebSocket` the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number): void;
}
export type WebSocketFactory = new (url: string, protocols?: string[]) => WebSocketLike;

/** The part of a browser `EventSource` the client uses. */
export interface EventSourceLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(): void;
}
export type EventSourceFactory = new (url: string) => EventSourceLike;

/** The part of a `fetch` response the client reads. */
export interface ResponseLike {
  readonly status: number;
  readonly ok: boolean;
  json(): Promise<unknown>;
}
export type FetchLike = (
  url: string,
  init: { headers?: Record<string, string>; cache?: "no-store"; signal?: AbortSignal },
) => Promise<ResponseLike>;

/** The part of `localStorage` the cache uses. */
export interface StorageLike {
  readonly length: number;
  key(index: number): string | null;
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Where `online`, `offline` and `pagehide` events come from (the window). */
export interface EventTargetLike {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

export interface Environment {
  now(): number;
  /** In [0, 1): the jitter of every backoff. */
  random(): number;
  setTimeout(fn: () => void, ms: number): TimerId;
  clearTimeout(id: TimerId): void;
  setInterval(fn: () => void, ms: number): TimerId;
  clearInterval(id: TimerId): void;
  WebSocket: WebSocketFactory | null;
  EventSource: EventSourceFactory | null;
  fetch: FetchLike | null;
  /** `null`: no offline cache (storage missing or forbidden). */
  storage: StorageLike | null;
  events: EventTargetLike | null;
  /** False only when the browser knows it is offline. */
  online(): boolean;
  /** The default gateway: the page's origin. */
  origin: string;
  /** Reports a failure inside a user callback (which never breaks the client). */
  reportError(what: string, error: unknown): void;
}

/** localStorage when it can be written (private modes and sandboxed frames may refuse). */
function probeStorage(): StorageLike | null {
  try {
    const s = (globalThis as { localStorage?: StorageLike }).localStorage;
    if (!s) return null;
    const probe = "kpistream:probe";
    s.setItem(probe, "1");
    s.removeItem(probe);
    return s;
  } catch {
    return null;
  }
}

/** The browser's globals, with `overrides` in their place. */
export function resolveEnvironment(overrides: Partial<Environment> = {}): Environment {
  const g = globalThis as unknown as {
    WebSocket?: WebSocketFactory;
    EventSource?: EventSourceFactory;
    fetch?: FetchLike;
    location?: { origin: string };
    navigator?: { onLine?: boolean };
    addEventListener?: unknown;
  };
  const base: Environment = {
    now: () => Date.now(),
    random: () => Math.random(),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (id) => globalThis.clearTimeout(id as Parameters<typeof clearTimeout>[0]),
    setInterval: (fn, ms) => globalThis.setInterval(fn, ms),
    clearInterval: (id) => globalThis.clearInterval(id as Parameters<typeof clearInterval>[0]),
    WebSocket: g.WebSocket ?? null,
    EventSource: g.EventSource ?? null,
    fetch: g.fetch ? (url, init) => (g.fetch as FetchLike)(url, init) : null,
    storage: "storage" in overrides ? null : probeStorage(),
    events: typeof g.addEventListener === "function" ? (globalThis as unknown as EventTargetLike) : null,
    online: () => g.navigator?.onLine !== false,
    origin: g.location?.origin ?? "http://127.0.0.1:8080",
    reportError: (what, error) => console.error(what, error),
  };
  return { ...base, ...overrides };
}
