/** RFC 7386 JSON merge patches, and turning a `patch` message into the full message it stands for. */

import type { BucketView, DataMessage, JsonValue, PatchMessage, Stats } from "./messages.js";

const isObject = (v: unknown): v is { [key: string]: JsonValue } =>
  v !== null && typeof v === "object" && !Array.isArray(v);

/** RFC 7386: applies a merge patch to `target` (mutated when an object) and returns the result. */
export function applyMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: { [key: string]: unknown } = isObject(target) ? target : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}

const STAT_FIELDS = ["avg", "min", "max", "last"] as const;

function restoreStats(stats: Partial<Stats> | undefined): void {
  if (!stats) return;
  for (const f of STAT_FIELDS) stats[f] ??= null;
}

/**
 * A merge patch cannot set a member to `null` (null means "remove"), so the
 * gateway removes a member that became null: put those nulls back, so that a
 * patched message has the same shape as a full one.
 */
export function restoreNulls(m: DataMessage): DataMessage {
  const loose = m as { previous?: BucketView | null; event_time?: string | null; stats: Stats };
  loose.previous ??= null;
  loose.event_time ??= null;
  restoreStats(loose.stats);
  if (loose.previous) restoreStats(loose.previous.stats);
  return m;
}

/** The full message that `p` makes of `base` (which is left untouched). */
export function unpatch(base: DataMessage, p: PatchMessage): DataMessage {
  const copy = JSON.parse(JSON.stringify(base)) as DataMessage;
  const full = applyMergePatch(copy, p.patch) as DataMessage;
  full.type = "update";
  full.seq = p.seq;
  return restoreNulls(full);
}
