/**
 * A topic: one KPI and period as the client holds it, shared by every handle
 * that watches it, with the last message seen and how it resumes.
 */

import type { Cadence, DataMessage } from "./messages.js";
import type { Topic } from "./subscription.js";

export type { Topic };

export const keyOf = (kpi: string, period: string): string => `${kpi}\u0000${period}`;

/**
 * Where to resume a topic: after the last seq seen live in this session. A
 * cached value asks for a fresh snapshot instead, since the gateway sends
 * nothing for a `since` at or past its latest seq, and so could never show
 * that the cached value is current (or that the gateway was wiped since).
 */
export function sinceOf(topic: Topic): number | undefined {
  return topic.last && !topic.fromCache && topic.last.seq > 0 ? topic.last.seq : undefined;
}

/** The wire parameters of a topic's cadence and encoding (defaults left out). */
export function modeParams(topic: Topic): { cadence?: Exclude<Cadence, "live">; encoding?: "delta" } {
  const p: { cadence?: Exclude<Cadence, "live">; encoding?: "delta" } = {};
  if (topic.cadence !== "live") p.cadence = topic.cadence;
  if (topic.encoding === "delta") p.encoding = "delta";
  return p;
}

/** A full data message with a usable seq (anything else from the wire is ignored). */
export function isData(m: unknown): m is DataMessage {
  if (m === null || typeof m !== "object") return false;
  const o = m as { type?: unknown; seq?: unknown; kpi?: unknown; period?: unknown };
  return (
    (o.type === "snapshot" || o.type === "update") &&
    typeof o.seq === "number" &&
    Number.isSafeInteger(o.seq) &&
    o.seq >= 0 &&
    typeof o.kpi === "string" &&
    typeof o.period === "string"
  );
}
