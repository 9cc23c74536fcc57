// Column sets for each kind of thing noidctl shows; render.ts draws them.
import {
  AuditEvent,
  Host,
  HostState,
  Network,
  phaseName,
  phaseOf,
  Token,
  Vm,
  WhoAmIResponse,
  type Resources,
} from "../sdk/index.js";
import { roleName } from "./parse.js";
import type { View } from "./render.js";

const dash = (s: string | undefined): string => (s ? s : "-");

/** Coarse age like kubectl: 45s, 12m, 5h, 3d. */
export function age(from: Date | undefined, now: Date): string {
  if (!from) return "-";
  const s = Math.max(0, Math.floor((now.getTime() - from.getTime()) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 2 * 3600) return `${Math.floor(s / 60)}m`;
  if (s < 2 * 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

const mib = (n: number | undefined): string => `${n ?? 0}Mi`;
const labels = (m: Record<string, string> | undefined): string =>
  Object.entries(m ?? {}).map(([k, v]) => `${k}=${v}`).join(",") || "-";

export const vmView: View<Vm> = {
  toJSON: (v) => Vm.toJSON(v),
  columns: [
    { header: "NAME", value: (v) => v.name },
    { header: "STATE", value: (v) => phaseName(phaseOf(v)) },
    { header: "HOST", value: (v) => dash(v.status?.hostName) },
    { header: "VCPUS", value: (v) => String(v.spec?.vcpus ?? 0) },
    { header: "MEMORY", value: (v) => mib(v.spec?.memoryMb) },
    { header: "IP", value: (v) => dash(v.status?.ip) },
    { header: "OWNER", value: (v) => v.owner },
    { header: "ID", value: (v) => v.id, wide: true },
    { header: "DRIVER", value: (v) => dash(v.spec?.driver), wide: true },
    { header: "REASON", value: (v) => dash(v.status?.reason), wide: true },
    { header: "LABELS", value: (v) => labels(v.spec?.labels), wide: true },
    { header: "AGE", value: (v, now) => age(v.createdAt, now), wide: true },
  ],
};

export function hostState(h: Host): string {
  const ready = h.degradedReason ? "DEGRADED" : "READY";
  const base = h.state === HostState.HOST_STATE_READY ? ready : h.state === HostState.HOST_STATE_UNREACHABLE ? "UNREACHABLE" : "UNKNOWN";
  return h.cordoned ? `${base},CORDONED` : base;
}

const used = (a: Resources | undefined, c: Resources | undefined, k: keyof Resources): string => `${a?.[k] ?? 0}/${c?.[k] ?? 0}`;

/** "ok", "fail: firewall,auto-updates" or "-" when the agent has not reported. */
export function postureSummary(h: Host): string {
  const p = h.posture;
  if (!p || p.checks.length === 0) return "-";
  if (p.ok) return "ok";
  return `fail: ${p.checks.filter((c) => !c.ok && !c.optional).map((c) => c.name).join(",")}`;
}

export const hostView: View<Host> = {
  toJSON: (h) => Host.toJSON(h),
  columns: [
    { header: "NAME", value: (h) => h.name },
    { header: "STATE", value: hostState },
    { header: "ADDRESS", value: (h) => dash(h.address) },
    { header: "VMS", value: (h) => String(h.vmCount) },
    { header: "CPU", value: (h) => used(h.allocated, h.capacity, "vcpus") },
    { header: "MEMORY", value: (h) => `${used(h.allocated, h.capacity, "memoryMb")}Mi` },
    { header: "DRIVERS", value: (h) => h.drivers.join(",") || "-" },
    { header: "POSTURE", value: (h) => postureSummary(h) },
    { header: "ID", value: (h) => h.id, wide: true },
    { header: "DISK", value: (h) => `${used(h.allocated, h.capacity, "diskGb")}Gi`, wide: true },
    { header: "LABELS", value: (h) => labels(h.labels), wide: true },
    { header: "DEGRADED", value: (h) => dash(h.degradedReason), wide: true },
    { header: "VERSION", value: (h) => dash(h.agentVersion), wide: true },
    { header: "LAST SEEN", value: (h, now) => age(h.lastSeenAt, now), wide: true },
  ],
};

/** "nat", "none", or the lists: "allow 192.0.2.0/24; deny 192.0.2.9/32". */
export function egressSummary(n: Network): string {
  const e = n.egress;
  if (!e) return "nat";
  if (e.denyAll) return "none";
  const parts = [...(e.allow.length ? [`allow ${e.allow.join(",")}`] : []), ...(e.deny.length ? [`deny ${e.deny.join(",")}`] : [])];
  return parts.length ? parts.join("; ") : "nat";
}

export const networkView: View<Network> = {
  toJSON: (n) => Network.toJSON(n),
  columns: [
    { header: "NAME", value: (n) => n.name },
    { header: "CIDR", value: (n) => n.cidr },
    { header: "VNI", value: (n) => String(n.vni) },
    { header: "EGRESS", value: (n) => egressSummary(n) },
    { header: "OWNER", value: (n) => n.owner },
    { header: "MODE", value: (n) => n.mode || "wireguard", wide: true },
    { header: "ID", value: (n) => n.id, wide: true },
    { header: "AGE", value: (n, now) => age(n.createdAt, now), wide: true },
  ],
};

export const tokenView: View<Token> = {
  toJSON: (t) => Token.toJSON(t),
  columns: [
    { header: "NAME", value: (t) => t.name },
    { header: "ID", value: (t) => t.id },
    { header: "USER", value: (t) => t.user },
    { header: "ROLE", value: (t) => roleName(t.role) },
    { header: "EXPIRES", value: (t) => (t.expiresAt ? t.expiresAt.toISOString() : "never") },
    { header: "AGE", value: (t, now) => age(t.createdAt, now), wide: true },
  ],
};

export const auditView: View<AuditEvent> = {
  toJSON: (a) => AuditEvent.toJSON(a),
  columns: [
    { header: "TIME", value: (a) => (a.time ? a.time.toISOString() : "-") },
    { header: "EVENT", value: (a) => a.event },
    { header: "USER", value: (a) => dash(a.user) },
    { header: "VM", value: (a) => dash(a.vm) },
    { header: "RESULT", value: (a) => (a.success ? "ok" : "FAILED") },
    { header: "DETAIL", value: (a) => dash(a.detail) },
    { header: "HOST", value: (a) => dash(a.host), wide: true },
    { header: "PEER", value: (a) => dash(a.peer), wide: true },
    { header: "ID", value: (a) => a.id, wide: true },
  ],
};

export const whoAmIView: View<WhoAmIResponse> = {
  toJSON: (w) => WhoAmIResponse.toJSON(w),
  columns: [
    { header: "USER", value: (w) => w.user },
    { header: "ROLE", value: (w) => roleName(w.role) },
    { header: "TOKEN", value: (w) => dash(w.tokenName) },
  ],
};

/** A context as `context list` shows it: never its token. */
export interface ContextRow {
  name: string;
  current: boolean;
  server: string;
  insecure: boolean;
  caFile: string;
  /** Fingerprint of the CA pinned by auth setup, when there is one. */
  caFingerprint?: string;
  hasToken: boolean;
}

export const contextView: View<ContextRow> = {
  toJSON: (c) => ({ ...c }),
  columns: [
    { header: "CURRENT", value: (c) => (c.current ? "*" : "") },
    { header: "NAME", value: (c) => c.name },
    { header: "SERVER", value: (c) => c.server },
    {
      header: "TLS",
      value: (c) => (c.insecure ? "off" : c.caFile ? `ca=${c.caFile}` : c.caFingerprint ? `pinned=${c.caFingerprint.slice(0, 23)}…` : "system"),
    },
    { header: "TOKEN", value: (c) => (c.hasToken ? "set" : "-") },
  ],
};
