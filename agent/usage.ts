// The host's NAT/firewall usage counters, shipped to the coordinator: what each tenant
// network carried (private, or egress: what the host NATs), what the port guards dropped
// and what the monitor detected. Read from the agent's own metrics registry (so the
// numbers are the ones /metrics shows) every usage interval and sent over the session.
import type { Registry } from "prom-client";
import type { HostUsage, UsageSample } from "../gen/noid/v1/host.js";

/** The agent metric families shipped, without their "noid_agent_" prefix. */
export const USAGE_METRICS = [
  "network_traffic_bytes_total",
  "network_traffic_packets_total",
  "guard_drops_total",
  "security_detections_total",
] as const;

const PREFIX = "noid_agent_";

interface MetricJson {
  name: string;
  values: { labels: Record<string, string | number>; value: number }[];
}

/** Pure: the usage samples of the shipped families in a registry's JSON (zeros included). */
export function usageSamples(metrics: readonly MetricJson[]): UsageSample[] {
  const wanted = new Set<string>(USAGE_METRICS.map((m) => PREFIX + m));
  const out: UsageSample[] = [];
  for (const m of metrics) {
    if (!wanted.has(m.name)) continue;
    for (const v of m.values) {
      out.push({ metric: m.name.slice(PREFIX.length), labels: Object.fromEntries(Object.entries(v.labels).map(([k, l]) => [k, String(l)])), value: v.value });
    }
  }
  return out;
}

/** Sends the host's usage every `intervalMs` (and once at start) while `send` accepts it. */
export class UsageReporter {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly o: {
      registry: Registry;
      intervalMs: number;
      send: (u: HostUsage) => void;
      logger: { warn(obj: object, msg: string): void };
    },
  ) {}

  start(): void {
    const tick = (): void => void this.report();
    this.timer = setInterval(tick, this.o.intervalMs);
    this.timer.unref();
    setTimeout(tick, 1_000).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  async report(): Promise<void> {
    try {
      const metrics = (await this.o.registry.getMetricsAsJSON()) as unknown as MetricJson[];
      this.o.send({ samples: usageSamples(metrics), sentAt: new Date() });
    } catch (e) {
      this.o.logger.warn({ err: e instanceof Error ? e.message : String(e) }, "reading usage counters failed; sent at the next interval");
    }
  }
}
