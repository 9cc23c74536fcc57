// The usage counters hosts' agents send over their sessions (agent/usage.ts), kept in memory
// per coordinator: the latest report per host, never written to etcd (they change every few
// seconds and are worth nothing after a restart: the next report brings them back).
import type { HostUsage, UsageSample } from "../../gen/noid/v1/host.js";
import { invalid } from "../../common/errors.js";

/** The label names a usage sample may carry (those of the shipped agent metrics). */
export const USAGE_LABELS = ["network", "scope", "direction", "vm", "kind"] as const;
const METRICS = new Set(["network_traffic_bytes_total", "network_traffic_packets_total", "guard_drops_total", "security_detections_total"]);
const MAX_SAMPLES = 10_000;

/** Pure: the report checked (known metrics and labels, finite non-negative values, bounded), or INVALID_ARGUMENT. */
export function checkUsage(u: HostUsage): HostUsage {
  if (u.samples.length > MAX_SAMPLES) throw invalid("usage.samples", `at most ${MAX_SAMPLES}`);
  for (const s of u.samples) {
    if (!METRICS.has(s.metric)) throw invalid("usage.samples.metric", `unknown metric "${s.metric.slice(0, 64)}"`);
    for (const [k, v] of Object.entries(s.labels)) {
      if (!(USAGE_LABELS as readonly string[]).includes(k)) throw invalid("usage.samples.labels", `unknown label "${k.slice(0, 64)}"`);
      if (v.length > 128) throw invalid("usage.samples.labels", "values are at most 128 characters");
    }
    if (!Number.isFinite(s.value) || s.value < 0) throw invalid("usage.samples.value", "must be a finite, non-negative number");
  }
  return u;
}

export class HostUsageStore {
  private readonly byHost = new Map<string, HostUsage>();

  set(hostId: string, u: HostUsage): void {
    this.byHost.set(hostId, checkUsage(u));
  }

  get(hostId: string): HostUsage | undefined {
    return this.byHost.get(hostId);
  }

  forget(hostId: string): void {
    this.byHost.delete(hostId);
  }

  /** Every sample of every host: what the coordinator's noid_host_usage gauge exports. */
  *samples(): Iterable<{ hostId: string; sample: UsageSample }> {
    for (const [hostId, u] of this.byHost) for (const sample of u.samples) yield { hostId, sample };
  }
}
