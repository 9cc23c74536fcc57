// Retry with exponential backoff and full jitter. Whether to retry is decided by
// the classification table in errors.ts; this file only decides when.
import { toApiError, type CallKind } from "./errors.js";

export interface RetryPolicy {
  /** Extra attempts after the first one. */
  retries: number;
  /** First backoff ceiling; doubles every attempt. */
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { retries: 3, baseDelayMs: 100, maxDelayMs: 2_000 };

/**
 * Delay before retry number `attempt` (0 for the first retry): a uniform draw in
 * [0, min(max, base·2^attempt)) — "full jitter", so many clients that failed
 * together do not come back together.
 */
export function backoffDelay(attempt: number, policy: RetryPolicy, random: () => number): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

export interface RetryDeps {
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
  /** Called before each retry; for logging or tests. */
  onRetry?: (info: { attempt: number; delayMs: number; error: Error }) => void;
}

const realSleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs `attempt` until it succeeds, fails with a non-retryable error, or retries run out. */
export async function withRetry<T>(
  what: string,
  kind: CallKind,
  policy: RetryPolicy,
  attempt: () => Promise<T>,
  deps: RetryDeps = {},
): Promise<T> {
  const sleep = deps.sleep ?? realSleep;
  const random = deps.random ?? Math.random;
  for (let n = 0; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      const err = toApiError(e, kind, what);
      if (!err.retryable || n >= policy.retries) throw err;
      const delayMs = backoffDelay(n, policy, random);
      deps.onRetry?.({ attempt: n + 1, delayMs, error: err });
      await sleep(delayMs);
    }
  }
}
