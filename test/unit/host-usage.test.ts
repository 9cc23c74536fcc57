// The usage counters an agent ships (agent/usage.ts) and what the coordinator accepts of them
// (coordinator/agents/usage-store.ts).
import { describe, expect, it } from "vitest";
import { Counter, Registry } from "prom-client";
import { UsageReporter, usageSamples } from "../../agent/usage.js";
import { AgentMetrics } from "../../agent/metrics.js";
import { HostUsageStore, checkUsage } from "../../coordinator/agents/usage-store.js";
import type { HostUsage } from "../../gen/noid/v1/host.js";

describe("agent usage samples", () => {
  it("ships the traffic, guard and detection families with their labels, and nothing else", async () => {
    const registry = new Registry();
    const traffic = new Counter({ name: "noid_agent_network_traffic_bytes_total", help: "t", labelNames: ["network", "scope", "direction"], registers: [registry] });
    const drops = new Counter({ name: "noid_agent_guard_drops_total", help: "d", labelNames: ["vm", "kind"], registers: [registry] });
    new Counter({ name: "noid_agent_reconcile_runs_total", help: "r", registers: [registry] }).inc(5);
    traffic.inc({ network: "n1", scope: "egress", direction: "sent" }, 1500);
    drops.inc({ vm: "v1", kind: "mac" }, 2);
    const samples = usageSamples((await registry.getMetricsAsJSON()) as never);
    expect(samples).toEqual([
      { metric: "network_traffic_bytes_total", labels: { network: "n1", scope: "egress", direction: "sent" }, value: 1500 },
      { metric: "guard_drops_total", labels: { vm: "v1", kind: "mac" }, value: 2 },
    ]);
    // Every label the agent's shipped families have is one the coordinator takes.
    expect(checkUsage({ samples, sentAt: undefined }).samples).toHaveLength(2);
    const sent: HostUsage[] = [];
    await new UsageReporter({ registry, intervalMs: 60_000, send: (u) => sent.push(u), logger: { warn: () => undefined } }).report();
    expect(sent[0]!.samples).toEqual(samples);
    expect(sent[0]!.sentAt).toBeInstanceOf(Date);
  });
});

describe("agent usage against the coordinator's checks", () => {
  it("every sample the real agent registry ships is one the coordinator keeps", async () => {
    const m = new AgentMetrics({ defaultMetrics: false });
    m.setGuardReader(async () => [{ vm: "v1", kind: "mac", packets: 3, bytes: 180 }]);
    m.setMonitorReader(async () => ({ vms: [], networks: [{ networkId: "n1", scope: "egress", direction: "sent", packets: 2, bytes: 3000 }] }));
    m.detected("arp-spoof");
    const sent: HostUsage[] = [];
    await new UsageReporter({ registry: m.registry, intervalMs: 60_000, send: (u) => sent.push(u), logger: { warn: () => undefined } }).report();
    const metrics = new Set(sent[0]!.samples.map((s) => s.metric));
    expect(metrics).toEqual(new Set(["network_traffic_bytes_total", "network_traffic_packets_total", "guard_drops_total", "security_detections_total"]));
    expect(sent[0]!.samples).toContainEqual({ metric: "network_traffic_bytes_total", labels: { network: "n1", scope: "egress", direction: "sent" }, value: 3000 });
    const store = new HostUsageStore();
    store.set("h1", sent[0]!);
    expect([...store.samples()]).toHaveLength(sent[0]!.samples.length);
  });
});

describe("coordinator usage store", () => {
  const ok: HostUsage = { samples: [{ metric: "guard_drops_total", labels: { kind: "ip" }, value: 3 }], sentAt: undefined };

  it("keeps the latest report per host and forgets removed hosts", () => {
    const s = new HostUsageStore();
    s.set("h1", ok);
    s.set("h1", { ...ok, samples: [{ metric: "guard_drops_total", labels: { kind: "ip" }, value: 4 }] });
    expect(s.get("h1")!.samples[0]!.value).toBe(4);
    expect([...s.samples()]).toHaveLength(1);
    s.forget("h1");
    expect(s.get("h1")).toBeUndefined();
  });

  it("refuses unknown metrics and labels, bad values and floods: INVALID_ARGUMENT, nothing kept", () => {
    const s = new HostUsageStore();
    const bad: HostUsage[] = [
      { samples: [{ metric: "process_cpu_seconds_total", labels: {}, value: 1 }], sentAt: undefined },
      { samples: [{ metric: "guard_drops_total", labels: { owner: "alice" }, value: 1 }], sentAt: undefined },
      { samples: [{ metric: "guard_drops_total", labels: { kind: "x".repeat(200) }, value: 1 }], sentAt: undefined },
      { samples: [{ metric: "guard_drops_total", labels: {}, value: Number.NaN }], sentAt: undefined },
      { samples: [{ metric: "guard_drops_total", labels: {}, value: -1 }], sentAt: undefined },
      { samples: Array.from({ length: 10_001 }, () => ok.samples[0]!), sentAt: undefined },
    ];
    for (const u of bad) {
      expect(() => s.set("h1", u)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    }
    expect(s.get("h1")).toBeUndefined();
    expect(checkUsage(ok)).toBe(ok);
  });
});
