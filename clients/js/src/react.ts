/**
 * `kpistream/react`: `useKpi(code, period, options)` for React 18 and 19.
 *
 * Every component under one `<KpiProvider client={..}>` (or, without a
 * provider, on one gateway URL) shares one `KpiStream` and so one connection.
 * Components watching the same KPI, period, cadence and encoding share one
 * subscription, reference-counted: the first mount subscribes, the last
 * unmount unsubscribes. The release waits a microtask, so StrictMode's
 * mount-unmount-mount of effects keeps the one subscription it already has.
 */

import { createContext, createElement, useCallback, useContext, useSyncExternalStore, type ReactNode } from "react";

import { KpiStream, type KpiStreamOptions } from "./client.js";
import type { Cadence, DataMessage, Encoding, Period } from "./messages.js";
import { checkOptions } from "./options.js";
import type { MessageMeta, Subscription } from "./subscription.js";
import type { ConnectionState } from "./driver.js";

/** What `useKpi` returns; a new object only when something in it changed. */
export interface KpiState {
  /** The newest message (live, or from the offline cache), or null before the first one. */
  message: DataMessage | null;
  /** How `message` arrived, or null before the first one. */
  meta: MessageMeta | null;
  /** The shared connection's state. */
  status: ConnectionState;
  /** True while no live connection confirms this subscription: `message` may be out of date. */
  stale: boolean;
}

export interface UseKpiOptions {
  /** `live` (default), `<N>s`, `<N>m` or `close`. */
  cadence?: Cadence | undefined;
  /** `full` (default) or `delta`. */
  encoding?: Encoding | undefined;
  /** A client to use instead of the provider's or the shared one. */
  client?: KpiStream | undefined;
}

const KpiContext = createContext<KpiStream | null>(null);

export interface KpiProviderProps {
  /** The client every `useKpi` below uses; its owner creates and closes it. */
  client: KpiStream;
  children?: ReactNode;
}

/** Makes `client` the connection of every `useKpi` below it. */
export function KpiProvider({ client, children }: KpiProviderProps): ReactNode {
  return createElement(KpiContext.Provider, { value: client }, children);
}

const sharedClients = new Map<string, KpiStream>();

/**
 * The page-wide client of a gateway URL (default: the page's origin), created
 * on first use with `options` and kept for the page's life; later calls with
 * the same URL get the same client whatever their other options.
 */
export function sharedClient(options: KpiStreamOptions = {}): KpiStream {
  const key = options.url ?? "";
  let c = sharedClients.get(key);
  if (!c) sharedClients.set(key, (c = new KpiStream(options)));
  return c;
}

const SERVER_STATE: KpiState = Object.freeze({ message: null, meta: null, status: "connecting", stale: true });

interface Entry {
  refs: number;
  sub: Subscription | null;
  state: KpiState;
  readonly listeners: Set<() => void>;
  /** A release is pending (at the next microtask), cancelled by a new watcher. */
  releasing: boolean;
}

/** One client's hook subscriptions: shared per kpi+period+mode, reference-counted. */
class KpiStore {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly client: KpiStream) {
    client.on("status", () => {
      for (const e of this.entries.values()) this.refresh(e, e.state.message, e.state.meta);
    });
  }

  private entry(key: string, kpi: string, period: Period): Entry {
    let e = this.entries.get(key);
    if (!e) {
      const message = this.client.latest(kpi, period);
      e = {
        refs: 0,
        sub: null,
        listeners: new Set(),
        releasing: false,
        state: { message, meta: message ? { source: "cache", stale: true } : null, status: this.client.status.state, stale: true },
      };
      this.entries.set(key, e);
    }
    return e;
  }

  /** The current state; the same object until it changes (as useSyncExternalStore needs). */
  snapshot(key: string, kpi: string, period: Period): KpiState {
    return this.entry(key, kpi, period).state;
  }

  /** Adds a watcher; returns its removal. */
  watch(key: string, kpi: string, period: Period, mode: { cadence: Cadence; encoding: Encoding }, onChange: () => void): () => void {
    const e = this.entry(key, kpi, period);
    e.listeners.add(onChange);
    e.refs += 1;
    e.releasing = false;
    if (!e.sub) {
      e.sub = this.client.subscribe(kpi, period, (m, meta) => this.refresh(e, m, meta), mode);
      this.refresh(e, e.state.message, e.state.meta);
    }
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      e.listeners.delete(onChange);
      e.refs -= 1;
      if (e.refs > 0) return;
      e.releasing = true;
      queueMicrotask(() => {
        if (!e.releasing || e.refs > 0) return;
        e.sub?.unsubscribe();
        e.sub = null;
        if (this.entries.get(key) === e) this.entries.delete(key);
      });
    };
  }

  private refresh(e: Entry, message: DataMessage | null, meta: MessageMeta | null): void {
    const status = this.client.status.state;
    const stale = !(e.sub?.fresh ?? false);
    const s = e.state;
    if (s.message === message && s.meta === meta && s.status === status && s.stale === stale) return;
    e.state = { message, meta, status, stale };
    for (const l of [...e.listeners]) l();
  }
}

const stores = new WeakMap<KpiStream, KpiStore>();

function storeOf(client: KpiStream): KpiStore {
  let s = stores.get(client);
  if (!s) stores.set(client, (s = new KpiStore(client)));
  return s;
}

/**
 * The live value of one KPI in one period: `{ message, meta, status, stale }`,
 * re-rendering on every new message and connection change.
 *
 *     const { message, stale } = useKpi("revenue_eur", "minute", { cadence: "5s" });
 *
 * The client is `options.client`, else the nearest `<KpiProvider>`'s, else
 * `sharedClient()` (the page's origin). A bad code, period or option throws
 * a TypeError, as `KpiStream.subscribe` does.
 */
export function useKpi(code: string, period: Period, options: UseKpiOptions = {}): KpiState {
  const fromContext = useContext(KpiContext);
  const mode = checkOptions(options);
  const explicit = options.client ?? fromContext;
  const key = `${code}\u0000${period}\u0000${mode.cadence}\u0000${mode.encoding}`;
  // The shared client is looked up in the callbacks, never while rendering on a server.
  const client = useCallback(() => explicit ?? sharedClient(), [explicit]);
  const subscribe = useCallback(
    (onChange: () => void) => storeOf(client()).watch(key, code, period, mode, onChange),
    // `mode` is in `key`.
    [client, key],
  );
  const getSnapshot = useCallback(() => storeOf(client()).snapshot(key, code, period), [client, key, code, period]);
  return useSyncExternalStore(subscribe, getSnapshot, () => SERVER_STATE);
}
