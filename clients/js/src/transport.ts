/**
 * Transport selection: what a transport driver is, what it may ask of the
 * client, and which transport to use (WebSocket first; SSE, then long
 * polling, only while the better one keeps failing and plain HTTP works).
 */

import type { Environment, WebSocketLike } from "./env.js";
import type { ClientMessage, DataMessage, ErrorMessage, PatchMessage, SystemMessage, TransportName } from "./messages.js";
import type { Topic } from "./topic.js";
import { PollDriver, type KpiHttpError } from "./poll.js";
import { SseDriver } from "./sse.js";
import { WsDriver } from "./ws.js";

export const TRANSPORTS: readonly TransportName[] = ["ws", "sse", "poll"];

/** The connection as a dashboard shows it. */
export type ConnectionState = "connecting" | "live" | "reconnecting" | "offline";

/** Where a delivered message came from. */
export type MessageSource = TransportName | "cache" | "memory";

/** The client settings drivers read. */
export interface DriverOptions {
  openTimeoutMs: number;
  pingEveryMs: number;
  pongTimeoutMs: number;
  maxStreams: number;
  pollWaitSecs: number;
  pollIntervalMs: number;
  baseBackoffMs: number;
  maxBackoffMs: number;
}

/** An entry of the client's debug log. */
export interface LogEntry {
  ev: string;
  t?: number;
  [field: string]: unknown;
}

/** How a driver ended: whether it had opened, and the WebSocket close code if any. */
export interface DriverEnd {
  opened: boolean;
  code: number | undefined;
}

/** What a driver may ask of the client that owns it. */
export interface DriverHost {
  readonly env: Environment;
  readonly _opts: DriverOptions;
  readonly paused: boolean;
  _state: ConnectionState;
  _topicList(): Topic[];
  _topic(kpi: string | undefined, period: string | undefined): Topic | undefined;
  _receive(msg: DataMessage | PatchMessage | unknown, source: TransportName): void;
  _confirm(topic: Topic | undefined): void;
  _unconfirmAll(): void;
  _status(): void;
  _setState(state: ConnectionState): void;
  _gatewayError(m: ErrorMessage): void;
  _httpError(e: KpiHttpError): void;
  _system(m: SystemMessage): void;
  _log(entry: LogEntry): void;
  _opened(driver: Driver): void;
  _closedBy(driver: Driver, end: DriverEnd): void;
  _getJson(path: string, params: Record<string, unknown>, signal?: AbortSignal): Promise<unknown>;
  _url(path: string, params?: Record<string, unknown>, withToken?: boolean): string;
  _openWebSocket(): WebSocketLike;
}

/** One transport's connection(s), carrying every topic of the client. */
export interface Driver {
  start(): void;
  /** Subscribes a topic (again, with its current mode and `since`). */
  add(topic: Topic): void;
  remove(topic: Topic): void;
  close(): void;
  send?(msg: ClientMessage): void;
  pauseAll?(paused: boolean): void;
}

export function createDriver(mode: TransportName, host: DriverHost): Driver {
  switch (mode) {
    case "ws":
      return new WsDriver(host);
    case "sse":
      return new SseDriver(host);
    case "poll":
      return new PollDriver(host);
  }
}

/** The transport in use, and when to move to another one. */
export class TransportSelector {
  readonly order: readonly TransportName[];
  mode: TransportName;
  /** Consecutive failed opens while plain HTTP to the gateway worked. */
  blocked = 0;

  constructor(order: readonly TransportName[]) {
    this.order = order.filter((t) => TRANSPORTS.includes(t));
    const first = this.order[0];
    if (first === undefined) throw new TypeError("no usable transport");
    this.mode = first;
  }

  /** The preferred transport, which a fallback keeps trying to return to. */
  get best(): TransportName {
    return this.order[0] as TransportName;
  }

  /**
   * Counts a failed open; returns the transport to fall back to now, or
   * null to retry this one. A gateway that is down (HTTP fails too) is waited
   * for, not routed around.
   */
  failedOpen(httpWorks: boolean, fallbackAfter: number): TransportName | null {
    this.blocked = httpWorks ? this.blocked + 1 : 0;
    const next = this.order[this.order.indexOf(this.mode) + 1];
    return httpWorks && next !== undefined && this.blocked >= fallbackAfter ? next : null;
  }

  opened(): void {
    this.blocked = 0;
  }

  switchTo(mode: TransportName): void {
    this.mode = mode;
    this.blocked = 0;
  }
}
