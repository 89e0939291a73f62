// Fakes of everything the client touches (clock and timers, WebSocket, EventSource, fetch, storage), so tests drive time by hand.
import type { Environment, FetchLike, ResponseLike, StorageLike, TimerId } from "../src/env.js";

interface Timer {
  id: number;
  at: number;
  fn: () => void;
  every: number | null;
}

/** A manual clock: timers run only when `advance` passes their time. */
export class FakeClock {
  now = 1_700_000_000_000;
  private timers = new Map<number, Timer>();
  private nextId = 1;

  set(fn: () => void, ms: number, every: number | null): TimerId {
    const id = this.nextId++;
    this.timers.set(id, { id, at: this.now + Math.max(0, ms), fn, every });
    return id;
  }

  clear(id: TimerId): void {
    this.timers.delete(id as number);
  }

  /** Pending timers' delays from now, soonest first. */
  pending(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }

  /** Moves time forward by `ms`, running each timer that falls due (in order) and settling promises after each. */
  async advance(ms: number): Promise<void> {
    const end = this.now + ms;
    for (;;) {
      await settle();
      const due = [...this.timers.values()].filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.now = due.at;
      if (due.every !== null) due.at += Math.max(1, due.every);
      else this.timers.delete(due.id);
      due.fn();
    }
    this.now = end;
    await settle();
  }
}

/** Lets every pending promise and microtask run (a few macrotask turns of the real loop, no real time). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  readonly sent: Record<string, unknown>[] = [];
  closedWith: number | undefined;

  constructor(
    readonly url: string,
    readonly protocols?: string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  static reset(): void {
    FakeWebSocket.instances = [];
  }

  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances.at(-1);
    if (!ws) throw new Error("no WebSocket was opened");
    return ws;
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number): void {
    this.readyState = 3;
    this.closedWith = code;
  }

  // ---- the server's side ----
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(msg: unknown): void {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }

  drop(code = 1006): void {
    this.readyState = 3;
    this.onclose?.({ code });
  }

  /** The client's messages of one type. */
  sentOf(type: string): Record<string, unknown>[] {
    return this.sent.filter((m) => m.type === type);
  }
}

export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closed = false;

  constructor(readonly url: string) {
    FakeEventSource.instances.push(this);
  }

  static reset(): void {
    FakeEventSource.instances = [];
  }

  close(): void {
    this.closed = true;
  }

  open(): void {
    this.onopen?.({});
  }

  receive(msg: unknown): void {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
}

export class MemoryStorage implements StorageLike {
  readonly map = new Map<string, string>();
  get length(): number {
    return this.map.size;
  }
  key(i: number): string | null {
    return [...this.map.keys()][i] ?? null;
  }
  getItem(k: string): string | null {
    return this.map.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    this.map.set(k, v);
  }
  removeItem(k: string): void {
    this.map.delete(k);
  }
}

/** A fetch answering from `route(url)`: a status and body, or a rejection (network down). */
export function fakeFetch(route: (url: URL) => { status: number; body?: unknown } | "down"): FetchLike & { urls: URL[] } {
  const urls: URL[] = [];
  const f = async (url: string, init: { signal?: AbortSignal }): Promise<ResponseLike> => {
    const u = new URL(url);
    urls.push(u);
    const r = route(u);
    if (r === "down") throw new TypeError("network down");
    if (r.status === 0) {
      // A long poll that never answers until aborted.
      return new Promise((_, reject) => init.signal?.addEventListener("abort", () => reject(new Error("aborted"))));
    }
    return { status: r.status, ok: r.status >= 200 && r.status < 300, json: async () => r.body ?? {} };
  };
  return Object.assign(f, { urls });
}

export interface TestEnv {
  clock: FakeClock;
  env: Partial<Environment>;
  storage: MemoryStorage;
  errors: unknown[];
}

/** An environment of fakes; `random` is fixed so delays are exact. */
export function testEnv(overrides: Partial<Environment> = {}): TestEnv {
  FakeWebSocket.reset();
  FakeEventSource.reset();
  const clock = new FakeClock();
  const storage = new MemoryStorage();
  const errors: unknown[] = [];
  const env: Partial<Environment> = {
    now: () => clock.now,
    random: () => 0.5,
    setTimeout: (fn, ms) => clock.set(fn, ms, null),
    clearTimeout: (id) => clock.clear(id),
    setInterval: (fn, ms) => clock.set(fn, ms, ms),
    clearInterval: (id) => clock.clear(id),
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    fetch: fakeFetch(() => ({ status: 200, body: {} })),
    storage,
    events: null,
    online: () => true,
    origin: "http://gateway.test",
    reportError: (_what, e) => errors.push(e),
    ...overrides,
  };
  return { clock, env, storage, errors };
}

/** A data message as the gateway sends it. */
export function data(seq: number, last: number | null, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "update",
    kpi: "sales",
    period: "minute",
    seq,
    bucket_start: "2026-12-01T10:00:00Z",
    stats: { count: seq, sum: 10 * seq, avg: last, min: last, max: last, last },
    previous: null,
    event_time: last === null ? null : "2026-12-01T10:00:05Z",
    updated_at: `2026-12-01T10:00:${String(10 + (seq % 50)).padStart(2, "0")}Z`,
    ...extra,
  };
}
