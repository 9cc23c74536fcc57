// Where a user's lazily created default network goes. Pure.
import { overlaps, size, within, type Cidr } from "./cidr.js";
import { PRIVATE_RANGES } from "./validate.js";

/**
 * The configured default CIDR, unless the user already has a network that
 * overlaps it (created before their first VM); then the next block of the
 * same size in the same private range that overlaps nothing (wrapping around).
 * Undefined when the whole range is taken.
 */
export function pickDefaultCidr(preferred: Cidr, taken: readonly Cidr[]): Cidr | undefined {
  const range = PRIVATE_RANGES.find((r) => within(preferred, r));
  if (!range) return undefined;
  const step = size(preferred);
  const blocks = size(range) / step;
  const start = (preferred.base - range.base) / step;
  for (let i = 0; i < blocks; i++) {
    const c: Cidr = { base: range.base + ((start + i) % blocks) * step, prefix: preferred.prefix };
    if (!taken.some((t) => overlaps(c, t))) return c;
  }
  return undefined;
}
