// Network request validation: pure, field-naming INVALID_ARGUMENT errors,
// applied before anything touches the store.
import { invalid } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import type { EgressPolicy } from "../../gen/noid/v1/network.js";
import { formatCidr, overlaps, parseCidr, within, type Cidr } from "./cidr.js";

/** spec.network keyword for VMs without peers; never a network's name. */
export const ISOLATED = "isolated";
/** Every user's lazily created network. */
export const DEFAULT_NETWORK = "default";

export const MODES = ["wireguard", "vxlan"] as const;
export type NetworkMode = (typeof MODES)[number];

/** Tenant networks live in RFC 1918 space: never routable, never someone's public address. */
export const PRIVATE_RANGES: readonly Cidr[] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"].map((s) => {
  const p = parseCidr(s);
  if (!p.ok) throw new Error(p.why);
  return p.cidr;
});

/** Biggest and smallest networks: a /16 is 65533 VMs; a /29 still leaves 5. */
export const MIN_PREFIX = 16;
export const MAX_PREFIX = 29;
const MAX_EGRESS_RULES = 64;

export function checkNetworkName(field: string, name: string): string {
  checkName(field, name);
  if (name === ISOLATED) throw invalid(field, `"${ISOLATED}" is reserved (spec.network "${ISOLATED}" means a VM without peers)`);
  return name;
}

/** A parsed CIDR a tenant may use: private, /16 to /29. */
export function checkTenantCidr(field: string, c: Cidr, raw: string): Cidr {
  if (!PRIVATE_RANGES.some((r) => within(c, r))) {
    throw invalid(field, `${raw} is not a private range (use 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)`);
  }
  if (c.prefix < MIN_PREFIX) throw invalid(field, `${raw} is too large (at most /${MIN_PREFIX})`);
  if (c.prefix > MAX_PREFIX) throw invalid(field, `${raw} is too small (at least /${MAX_PREFIX})`);
  return c;
}

export function parseTenantCidr(field: string, raw: string): Cidr {
  if (raw === "") throw invalid(field, "is required (e.g. 10.20.0.0/24)");
  const p = parseCidr(raw);
  if (!p.ok) throw invalid(field, p.why);
  return checkTenantCidr(field, p.cidr, raw);
}

export function checkMode(field: string, mode: string): NetworkMode {
  if (mode === "") return "wireguard";
  if (!(MODES as readonly string[]).includes(mode)) throw invalid(field, `unknown mode "${mode}" (known: ${MODES.join(", ")})`);
  return mode as NetworkMode;
}

/** Egress destinations may be anything (the internet), so any valid IPv4 CIDR. */
export function checkEgress(field: string, e: EgressPolicy | undefined): EgressPolicy {
  const out: EgressPolicy = { denyAll: e?.denyAll ?? false, allow: [...(e?.allow ?? [])], deny: [...(e?.deny ?? [])] };
  if (out.denyAll && (out.allow.length > 0 || out.deny.length > 0)) {
    throw invalid(field, "deny_all (no egress) takes no allow or deny list");
  }
  for (const [list, name] of [
    [out.allow, "allow"],
    [out.deny, "deny"],
  ] as const) {
    if (list.length > MAX_EGRESS_RULES) throw invalid(`${field}.${name}`, `at most ${MAX_EGRESS_RULES} entries (got ${list.length})`);
    list.forEach((s, i) => {
      const p = parseCidr(s);
      if (!p.ok) throw invalid(`${field}.${name}[${i}]`, p.why);
      list[i] = formatCidr(p.cidr);
    });
  }
  return out;
}

/** The id of an existing network whose CIDR overlaps `c`, if any. */
export function findOverlap(c: Cidr, existing: Record<string, string>): string | undefined {
  for (const [id, s] of Object.entries(existing)) {
    const p = parseCidr(s);
    if (p.ok && overlaps(c, p.cidr)) return id;
  }
  return undefined;
}

export interface NetworkInput {
  name: string;
  cidr: Cidr;
  egress: EgressPolicy;
  mode: NetworkMode;
}

/** Everything about a create request that needs no store. */
export function validateCreate(req: { name: string; cidr: string; egress: EgressPolicy | undefined; mode: string }): NetworkInput {
  return {
    name: checkNetworkName("name", req.name),
    cidr: parseTenantCidr("cidr", req.cidr),
    egress: checkEgress("egress", req.egress),
    mode: checkMode("mode", req.mode ?? ""),
  };
}
