// Reconnect delays: exponential, capped, with jitter so that agents disconnected by one
// coordinator restart do not all reconnect in the same millisecond. Pure.
export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 250, maxMs: 10_000 };

/** Delay before reconnect attempt `attempt` (0-based); `random` in [0, 1). Between half and all of the capped exponential. */
export function backoffDelay(attempt: number, policy: BackoffPolicy = DEFAULT_BACKOFF, random: number = Math.random()): number {
  const exp = Math.min(policy.maxMs, policy.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(exp / 2 + (exp / 2) * random);
}
