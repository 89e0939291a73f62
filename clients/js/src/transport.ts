/**
 * Transport selection: which transport to use (WebSocket first; SSE, then
 * long polling, only while the better one keeps failing and plain HTTP
 * works), and the driver for each.
 */

import type { Driver, DriverHost } from "./driver.js";
import type { TransportName } from "./messages.js";
import { PollDriver } from "./poll.js";
import { SseDriver } from "./sse.js";
import { WsDriver } from "./ws.js";

export const TRANSPORTS: readonly TransportName[] = ["ws", "sse", "poll"];

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
