// Pure parsers for command-line values. They throw UsageError, which main
// turns into exit code 2 like commander's own usage errors.
import { Role } from "../sdk/index.js";

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3_600, d: 86_400, w: 604_800 };

/** "90m", "12h", "30d", "1w", "45s" → seconds. A bare number is not accepted: the unit is the point. */
export function parseDuration(text: string): number {
  const m = /^(\d+)([smhdw])$/.exec(text.trim());
  const unit = m ? UNIT_SECONDS[m[2] ?? ""] : undefined;
  const n = m ? Number(m[1]) : NaN;
  if (!m || unit === undefined || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`invalid duration "${text}": use a positive number with a unit s, m, h, d or w (e.g. 90m, 12h, 30d)`);
  }
  return n * unit;
}

/** Positive integer option values ("--vcpus 2"). */
export function parsePositiveInt(flag: string, text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`${flag} must be a positive integer (got "${text}")`);
  }
  return n;
}

/** Repeated "k=v" options into a map; a later duplicate key wins. */
export function parseKeyValues(flag: string, pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    if (i <= 0) throw new UsageError(`${flag} expects key=value (got "${p}")`);
    out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}

const ROLES: Record<string, Role> = { admin: Role.ROLE_ADMIN, user: Role.ROLE_USER, "read-only": Role.ROLE_READ_ONLY };

export function parseRole(text: string): Role {
  const r = ROLES[text];
  if (r === undefined) throw new UsageError(`--role must be one of ${Object.keys(ROLES).join(", ")} (got "${text}")`);
  return r;
}

export function roleName(role: Role): string {
  return Object.entries(ROLES).find(([, r]) => r === role)?.[0] ?? "unknown";
}

/** Seconds as a timeout flag → milliseconds. */
export function parseTimeoutSeconds(text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--timeout must be a positive number of seconds (got "${text}")`);
  return Math.round(n * 1000);
}
