/**
 * What a transport driver is and what it may ask of the client that owns it:
 * the contract between `KpiStream` and the WebSocket, SSE and polling drivers.
 */

import type { Environment, WebSocketLike } from "./env.js";
import type { KpiHttpError } from "./http-error.js";
import type { ClientMessage, DataMessage, ErrorMessage, PatchMessage, SystemMessage, TransportName } from "./messages.js";
import type { Topic } from "./topic.js";

/** The connection as a dashboard shows it. */
export type ConnectionState = "connecting" | "live" | "reconnecting" | "offline";

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
