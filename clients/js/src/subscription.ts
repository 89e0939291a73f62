/** A handle on one subscription; several handles may share a kpi+period (a topic). */

import type { Cadence, DataMessage, Encoding, Period, TransportName } from "./messages.js";
import { checkOptions, isPeriod, type SubscribeOptions } from "./options.js";

/** Where a delivered message came from. */
export type MessageSource = TransportName | "cache" | "memory";

/**
 * A topic: one KPI and period as the client holds it, shared by every handle
 * that watches it, with the last message seen and how it resumes. (Beside
 * the handle because each refers to the other.)
 */
export interface Topic {
  readonly kpi: string;
  readonly period: Period;
  readonly key: string;
  /** The newest message applied (or read from the cache). */
  last: DataMessage | null;
  /** `last` came from the cache and no gateway has vouched for it in this session. */
  fromCache: boolean;
  /** The gateway acknowledged this topic on the current connection. */
  confirmed: boolean;
  readonly subs: Set<Subscription>;
  /** The wire mode: the most frequent cadence of its handles, delta only when all ask for it. */
  cadence: Cadence;
  encoding: Encoding;
}

/** How a delivered message reached the callback. */
export interface MessageMeta {
  /** The transport that brought it, or `cache` (the offline cache) / `memory` (another handle's last value). */
  source: MessageSource;
  /** True when the value is not confirmed by a live connection and may be out of date. */
  stale: boolean;
}

export type MessageCallback = (msg: DataMessage, meta: MessageMeta) => void;

/** What a handle needs from its client. */
export interface SubscriptionOwner {
  readonly paused: boolean;
  _attach(sub: Subscription): void;
  _detach(sub: Subscription): void;
  _isFresh(topic: Topic): boolean;
  _modeChanged(topic: Topic): void;
  _reportError(what: string, error: unknown): void;
}

export class Subscription {
  kpi: string;
  period: Period;
  cadence: Cadence;
  encoding: Encoding;
  closed = false;
  /** @internal */
  _topic: Topic | null = null;
  private paused = false;
  private pending: [DataMessage, MessageMeta] | null = null;

  /** @internal Created by `KpiStream.subscribe`. */
  constructor(
    private readonly client: SubscriptionOwner,
    kpi: string,
    period: Period,
    private readonly onMessage: MessageCallback,
    mode: { cadence: Cadence; encoding: Encoding },
  ) {
    this.kpi = kpi;
    this.period = period;
    this.cadence = mode.cadence;
    this.encoding = mode.encoding;
  }

  /** The last message delivered (or held while paused). */
  get last(): DataMessage | null {
    return this._topic?.last ?? null;
  }

  /** True while the gateway confirms this subscription on a live connection. */
  get fresh(): boolean {
    return this._topic !== null && this.client._isFresh(this._topic);
  }

  /** Moves this handle to another period: unsubscribe, then subscribe, same callback. */
  switchPeriod(period: Period): this {
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
  setOptions(options: SubscribeOptions = {}): this {
    if (this.closed) throw new Error("subscription is closed");
    const o = checkOptions({ cadence: this.cadence, encoding: this.encoding, ...options });
    this.cadence = o.cadence;
    this.encoding = o.encoding;
    if (this._topic) this.client._modeChanged(this._topic);
    return this;
  }

  unsubscribe(): void {
    if (this.closed) return;
    this.closed = true;
    this.client._detach(this);
  }

  /** Holds deliveries to this handle (the newest is kept) until `resume()`. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this._flushPending();
  }

  /** @internal */
  _deliver(msg: DataMessage, meta: MessageMeta): void {
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
  _flushPending(): void {
    const p = this.pending;
    this.pending = null;
    if (p) this._deliver(p[0], p[1]);
  }
}
