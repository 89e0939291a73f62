/** Validation of what callers pass: KPI codes, periods, cadences and encodings. */

import type { Cadence, Encoding, Period } from "./messages.js";

export const PERIODS: readonly Period[] = ["minute", "hour", "day"];
const CODE_RE = /^[A-Za-z0-9_-]{1,64}$/;
const CADENCE_RE = /^(live|close|[1-9][0-9]{0,5}[sm])$/;
/** The longest throttle the gateway accepts. */
const MAX_CADENCE_MS = 86_400_000;

/** A subscription's wire mode. */
export interface SubscribeOptions {
  /** `live` (default), `<N>s`, `<N>m` or `close`. */
  cadence?: Cadence | undefined;
  /** `full` (default) or `delta` (merge patches, applied by the client). */
  encoding?: Encoding | undefined;
}

export interface Mode {
  cadence: Cadence;
  encoding: Encoding;
}

export function isPeriod(period: unknown): period is Period {
  return typeof period === "string" && (PERIODS as readonly string[]).includes(period);
}

/** True when `kpi` is a valid KPI code and `period` a valid period. */
export function isValidTopic(kpi: unknown, period: unknown): kpi is string {
  return typeof kpi === "string" && CODE_RE.test(kpi) && isPeriod(period);
}

/** The interval of a `<N>s`/`<N>m` cadence in ms, else null. */
export function cadenceMs(cadence: string | null | undefined): number | null {
  const m = /^([0-9]+)([sm])$/.exec(cadence ?? "");
  return m ? Number(m[1]) * (m[2] === "m" ? 60000 : 1000) : null;
}

/** How often a cadence hears (lower is more often): live, then by N, then close. */
export function cadenceRank(cadence: Cadence): number {
  return cadence === "live" ? 0 : cadence === "close" ? Infinity : (cadenceMs(cadence) ?? Infinity);
}

/** The options with their defaults; a TypeError naming a bad value (callers may be untyped JavaScript). */
export function checkOptions(options: SubscribeOptions = {}): Mode {
  const cadence: unknown = options.cadence ?? "live";
  const encoding: unknown = options.encoding ?? "full";
  if (typeof cadence !== "string" || !CADENCE_RE.test(cadence) || (cadenceMs(cadence) ?? 0) > MAX_CADENCE_MS) {
    throw new TypeError(`invalid cadence: ${String(cadence)} (live, close, <N>s or <N>m)`);
  }
  if (encoding !== "full" && encoding !== "delta") throw new TypeError(`invalid encoding: ${String(encoding)}`);
  return { cadence: cadence as Cadence, encoding };
}
