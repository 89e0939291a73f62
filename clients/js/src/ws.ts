/** The WebSocket transport: one multiplexed `/ws` connection for every subscription. */

import type { TimerId, WebSocketLike } from "./env.js";
import type { ClientMessage, ServerMessage } from "./messages.js";
import { modeParams, sinceOf, type Topic } from "./topic.js";
import type { Driver, DriverHost } from "./driver.js";

/** WebSocket.OPEN */
const OPEN = 1;
/** Our own close code for a connection that stopped answering pings. */
const SILENT = 4000;

export class WsDriver implements Driver {
  private ws: WebSocketLike | null = null;
  private opened = false;
  private done = false;
  private timeouts: TimerId[] = [];
  private pinger: TimerId | null = null;
  private pingId = 0;
  /** When the oldest unanswered ping was sent; any message answers it. */
  private awaitingPong: number | null = null;

  constructor(private readonly c: DriverHost) {}

  start(): void {
    const c = this.c;
    let ws: WebSocketLike;
    try {
      ws = c._openWebSocket();
    } catch (e) {
      // A page or proxy that forbids WebSocket makes the constructor throw.
      c._log({ ev: "ws-construct-failed", error: String(e) });
      queueMicrotask(() => this.finish(undefined));
      return;
    }
    this.ws = ws;
    this.later(() => {
      if (!this.opened) this.finish(undefined);
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

  private later(fn: () => void, ms: number): void {
    this.timeouts.push(this.c.env.setTimeout(fn, ms));
  }

  private onMessage(data: unknown): void {
    let m: ServerMessage;
    try {
      m = JSON.parse(String(data)) as ServerMessage;
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
        // The hub could not subscribe upstream right now: ask again later.
        const { kpi, period } = m;
        if (m.code === "unavailable" && kpi && period) {
          this.later(
            () => {
              const t = c._topic(kpi, period);
              if (t) this.add(t);
            },
            2000 + c.env.random() * 3000,
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
  private ping(): void {
    const now = this.c.env.now();
    if (this.awaitingPong !== null && now - this.awaitingPong > this.c._opts.pongTimeoutMs) {
      this.finish(SILENT);
      return;
    }
    if (this.awaitingPong === null) this.awaitingPong = now;
    this.send({ type: "ping", id: ++this.pingId });
  }

  send(msg: ClientMessage): void {
    if (this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify(msg));
  }

  add(topic: Topic): void {
    if (!this.opened) return;
    const msg: ClientMessage = { type: "subscribe", kpi: topic.kpi, period: topic.period, ...modeParams(topic) };
    const since = sinceOf(topic);
    if (since !== undefined) msg.since = since;
    this.send(msg);
  }

  remove(topic: Topic): void {
    if (this.opened) this.send({ type: "unsubscribe", kpi: topic.kpi, period: topic.period });
  }

  pauseAll(paused: boolean): void {
    this.send({ type: paused ? "pause" : "resume" });
  }

  private finish(code: number | undefined): void {
    if (this.done) return;
    const opened = this.opened;
    this.close();
    this.c._closedBy(this, { opened, code });
  }

  close(): void {
    this.done = true;
    for (const t of this.timeouts) this.c.env.clearTimeout(t);
    this.timeouts = [];
    if (this.pinger !== null) this.c.env.clearInterval(this.pinger);
    this.pinger = null;
    const ws = this.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
    }
  }
}
