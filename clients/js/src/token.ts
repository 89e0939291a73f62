/** Reading a JWT's claims (unverified: the gateway verifies) for its subject and expiry. */

export interface Claims {
  sub?: unknown;
  exp?: unknown;
  [claim: string]: unknown;
}

/** The token's claims, or null when it is not a readable JWT. */
export function claimsOf(token: string | null): Claims | null {
  if (!token) return null;
  try {
    const part = token.split(".")[1];
    if (part === undefined) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims: unknown = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return claims !== null && typeof claims === "object" ? (claims as Claims) : null;
  } catch {
    return null;
  }
}

/** When to ask for a new token: a minute before `exp`, or halfway for a short-lived token; null without `exp`. */
export function refreshDelayMs(claims: Claims | null, now: number): number | null {
  const exp = claims?.exp;
  if (typeof exp !== "number" || !Number.isFinite(exp)) return null;
  const left = exp * 1000 - now;
  return Math.max(0, left - Math.min(60000, left / 2));
}
