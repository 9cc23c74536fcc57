// VNI picking: pure. The store makes the choice unique (vni/<vni> is created
// only if absent); this only proposes a candidate.

export interface VniRange {
  min: number;
  max: number;
}

/**
 * The lowest free VNI in the range, or, with `skip` > 0, the skip-th free one
 * after it. Concurrent creators that all lost a race on the lowest spread out
 * over the next few instead of colliding again on the same one.
 */
export function pickVni(taken: ReadonlySet<number>, range: VniRange, skip = 0): number | undefined {
  let left = skip;
  let firstFree: number | undefined;
  // At most |taken| + skip + 1 steps: every step passes a taken or a skipped VNI.
  for (let v = range.min; v <= range.max; v++) {
    if (taken.has(v)) continue;
    firstFree ??= v;
    if (left === 0) return v;
    left--;
  }
  return firstFree; // fewer free VNIs than skip: fall back to the lowest
}
