/**
 * kpistream: the browser client of the kpistream gateway.
 *
 *     import { KpiStream } from "kpistream";
 *     const c = new KpiStream({ url: "https://gateway.example", token });
 *     const sub = c.subscribe("revenue_eur", "minute", (msg, meta) => render(msg.stats.last, meta.stale),
 *       { cadence: "5s", encoding: "delta" });
 *     sub.switchPeriod("hour"); sub.setOptions({ cadence: "live" }); sub.unsubscribe();
 *
 * React: `import { useKpi } from "kpistream/react"`.
 */

export { KpiStream } from "./client.js";
export type { ConnectionStatus, KpiStreamEvents, KpiStreamOptions, ResolvedOptions } from "./client.js";
export { Subscription } from "./subscription.js";
export type { MessageCallback, MessageMeta } from "./subscription.js";
export { isValidTopic, cadenceMs } from "./options.js";
export type { SubscribeOptions } from "./options.js";
export { applyMergePatch } from "./merge-patch.js";
export { KpiHttpError } from "./http-error.js";
export type { ConnectionState, LogEntry } from "./driver.js";
export type { MessageSource } from "./subscription.js";
export type {
  Environment,
  EventSourceFactory,
  EventSourceLike,
  EventTargetLike,
  FetchLike,
  ResponseLike,
  StorageLike,
  TimerId,
  WebSocketFactory,
  WebSocketLike,
} from "./env.js";
export type * from "./messages.js";
