/**
 * The offline cache: the last message of every topic in localStorage, shown
 * (marked stale) on the next start before any gateway answers. Kept per
 * gateway and identity, so another user of the same browser never sees it.
 */

import type { Environment, StorageLike, TimerId } from "./env.js";
import type { DataMessage } from "./messages.js";
import { isData, type Topic } from "./topic.js";

/** At most one localStorage write per topic per this interval. */
const FLUSH_MS = 1000;

export class OfflineCache {
  private readonly storage: StorageLike | null;
  private readonly dirty = new Set<Topic>();
  private flushTimer: TimerId | null = null;

  /**
   * @param identity whose values these are: the gateway's origin and the
   *   token's subject, asked anew each time (the token may change).
   */
  constructor(
    private readonly env: Environment,
    enabled: boolean,
    private readonly prefix: string,
    private readonly identity: () => string,
  ) {
    this.storage = enabled ? env.storage : null;
  }

  get enabled(): boolean {
    return this.storage !== null;
  }

  private keyOf(kpi: string, period: string): string {
    return `${this.prefix}${this.identity()}|${kpi}:${period}`;
  }

  /** The cached message of a kpi+period for the current identity, or null. */
  read(kpi: string, period: string): DataMessage | null {
    if (!this.storage) return null;
    try {
      const m: unknown = JSON.parse(this.storage.getItem(this.keyOf(kpi, period)) ?? "null");
      return isData(m) && m.kpi === kpi && m.period === period ? m : null;
    } catch {
      return null;
    }
  }

  /** Writes are batched: the topic's `last` is written at the next flush. */
  markDirty(topic: Topic): void {
    if (!this.storage) return;
    this.dirty.add(topic);
    if (this.flushTimer === null) this.flushTimer = this.env.setTimeout(() => this.flush(), FLUSH_MS);
  }

  flush(): void {
    if (this.flushTimer !== null) this.env.clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const storage = this.storage;
    if (storage) {
      for (const t of this.dirty) {
        try {
          if (t.last) storage.setItem(this.keyOf(t.kpi, t.period), JSON.stringify(t.last));
        } catch {
          /* full or forbidden storage: the cache is a nicety */
        }
      }
    }
    this.dirty.clear();
  }

  /** Drops unwritten values: they were read with another identity's token. */
  dropPending(): void {
    this.dirty.clear();
  }

  /** Forgets every cached value of the current identity: it may no longer read some of them. */
  clear(): void {
    const storage = this.storage;
    if (!storage) return;
    const prefix = `${this.prefix}${this.identity()}|`;
    try {
      const keys: string[] = [];
      for (let i = 0; i < storage.length; i++) {
        const k = storage.key(i);
        if (k && k.startsWith(prefix)) keys.push(k);
      }
      for (const k of keys) storage.removeItem(k);
    } catch {
      /* storage gone: nothing to clear */
    }
    this.dirty.clear();
  }
}
