/**
 * The Server-Sent Events transport: one stream per subscription (the first
 * `maxStreams`; the rest are polled). Any stream failing restarts the
 * driver: with `since`, nothing is lost and nothing repeats.
 */

import type { EventSourceLike, TimerId } from "./env.js";
import type { ServerMessage } from "./messages.js";
import { Poller } from "./poll.js";
import { modeParams, sinceOf, type Topic } from "./topic.js";
import type { Driver, DriverHost } from "./driver.js";

interface Stream {
  es: EventSourceLike;
  open: boolean;
}

export class SseDriver implements Driver {
  private readonly streams = new Map<string, Stream>();
  private readonly poller: Poller;
  private opened = false;
  private done = false;
  private timer: TimerId | null = null;

  constructor(private readonly c: DriverHost) {
    this.poller = new Poller(c, null);
  }

  start(): void {
    for (const t of this.c._topicList()) this.add(t);
    this.timer = this.c.env.setTimeout(() => {
      if (!this.opened) this.finish();
    }, this.c._opts.openTimeoutMs);
    this.check();
  }

  add(topic: Topic): void {
    if (this.done || this.streams.has(topic.key) || this.poller.has(topic)) return;
    if (this.streams.size >= this.c._opts.maxStreams) {
      this.poller.add(topic);
      return;
    }
    const params = { period: topic.period, since: sinceOf(topic), ...modeParams(topic) };
    let es: EventSourceLike;
    try {
      const EventSource = this.c.env.EventSource;
      if (!EventSource) throw new Error("no EventSource");
      es = new EventSource(this.c._url(`/sse/kpi/${topic.kpi}`, params, true));
    } catch {
      queueMicrotask(() => this.finish());
      return;
    }
    const s: Stream = { es, open: false };
    this.streams.set(topic.key, s);
    es.onopen = () => {
      s.open = true;
      this.c._confirm(topic);
      this.check();
    };
    es.onmessage = (e) => {
      let m: ServerMessage;
      try {
        m = JSON.parse(e.data) as ServerMessage;
      } catch {
        return;
      }
      if (m === null || typeof m !== "object") return;
      if (m.type === "system") this.c._system(m);
      else if (m.type === "error") this.c._gatewayError(m);
      else this.c._receive(m, "sse");
    };
    // The browser would retry by itself, but only the client knows when to give up on SSE.
    es.onerror = () => this.finish();
  }

  remove(topic: Topic): void {
    const s = this.streams.get(topic.key);
    if (s) {
      s.es.close();
      this.streams.delete(topic.key);
    }
    this.poller.remove(topic);
  }

  /** Live once every stream is open. */
  private check(): void {
    if (this.done || this.opened) return;
    if ([...this.streams.values()].every((s) => s.open)) {
      this.opened = true;
      if (this.timer !== null) this.c.env.clearTimeout(this.timer);
      this.c._opened(this);
    }
  }

  private finish(): void {
    if (this.done) return;
    const opened = this.opened;
    this.close();
    this.c._closedBy(this, { opened, code: undefined });
  }

  close(): void {
    this.done = true;
    if (this.timer !== null) this.c.env.clearTimeout(this.timer);
    for (const s of this.streams.values()) s.es.close();
    this.streams.clear();
    this.poller.close();
  }
}
