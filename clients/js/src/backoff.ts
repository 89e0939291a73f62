/** Reconnect delays: exponential backoff with full jitter, never giving up. */

export interface BackoffOptions {
  baseBackoffMs: number;
  maxBackoffMs: number;
}

/** The largest delay after `failures` failures: min(max, base * 2^failures). */
export function backoffCeiling(failures: number, o: BackoffOptions): number {
  return Math.min(o.maxBackoffMs, o.baseBackoffMs * 2 ** Math.min(failures, 20));
}

/** Full jitter: random(0, ceiling), so that clients cut off together do not return together. */
export function backoffDelay(failures: number, o: BackoffOptions, random: () => number): number {
  return random() * backoffCeiling(failures, o);
}
