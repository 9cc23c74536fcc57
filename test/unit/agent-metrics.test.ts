// The agent's metrics: pure parsers of kernel counters, the driver wrapper,
// and the registry (one per instance, never the global default).
import { describe, expect, it } from "vitest";
import { register as globalRegistry } from "prom-client";
import { AgentMetrics, handshakeAges, instrumentDriver, networkTraffic, parseLinkStats, vmTraffic } from "../../agent/metrics.js";
import type { HypervisorDriver, VmRuntime } from "../../agent/drivers/driver.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import { parseExposition, sampleValue } from "../helpers/exposition.js";

const IP_S_J = JSON.stringify([
  { ifindex: 1, ifname: "lo", stats64: { rx: { bytes: 100, packets: 2 }, tx: { bytes: 100, packets: 2 } } },
  { ifindex: 7, ifname: "nv-abc", stats64: { rx: { bytes: 1500, packets: 10, errors: 0 }, tx: { bytes: 900, packets: 6 } } },
  { ifindex: 8, ifname: "nostats" },
]);

describe("kernel counter parsing", () => {
  it("reads `ip -s -j link show` per interface", () => {
    const s = parseLinkStats(IP_S_J);
    expect(s.get("nv-abc")).toEqual({ rxBytes: 1500, rxPackets: 10, txBytes: 900, txPackets: 6 });
    expect(s.has("nostats")).toBe(false);
  });

  it("turns host-port counters into the VM's view: its port's rx is what it sent", () => {
    const t = vmTraffic([{ id: "vm1", hostPort: "nv-abc" }, { id: "gone", hostPort: "nv-zzz" }], parseLinkStats(IP_S_J));
    expect(t).toEqual([{ vm: "vm1", sentBytes: 1500, sentPackets: 10, receivedBytes: 900, receivedPackets: 6 }]);
  });

  it("splits a network's traffic: VXLAN device = mesh, bridge interface = gateway; out = leaving the network", () => {
    const stats = new Map([
      ["vx7", { rxBytes: 10, rxPackets: 1, txBytes: 20, txPackets: 2 }],
      ["vmnet7", { rxBytes: 30, rxPackets: 3, txBytes: 40, txPackets: 4 }],
    ]);
    expect(networkTraffic([{ networkId: "n", vxlan: "vx7", bridge: "vmnet7" }, { networkId: "gone", vxlan: "vx9", bridge: "vmnet9" }], stats)).toEqual([
      { network: "n", path: "mesh", direction: "out", bytes: 20, packets: 2 },
      { network: "n", path: "mesh", direction: "in", bytes: 10, packets: 1 },
      { network: "n", path: "gateway", direction: "out", bytes: 30, packets: 3 },
      { network: "n", path: "gateway", direction: "in", bytes: 40, packets: 4 },
    ]);
  });

  it("ages handshakes, leaving out peers that never shook hands", () => {
    const ages = handshakeAges(
      {
        listenPort: 51820,
        peers: [
          { publicKey: "A=", endpoint: "10.0.0.2:51820", allowedIps: [], latestHandshake: 1000, rxBytes: 5, txBytes: 6 },
          { publicKey: "B=", allowedIps: [], latestHandshake: 0, rxBytes: 0, txBytes: 0 },
        ],
      },
      1042,
    );
    expect(ages).toEqual([
      { peer: "A=", endpoint: "10.0.0.2:51820", ageSeconds: 42, rxBytes: 5, txBytes: 6 },
      { peer: "B=", endpoint: "", rxBytes: 0, txBytes: 0 },
    ]);
  });
});

describe("agent registry", () => {
  const rt = (id: string): VmRuntime => ({ id, driver: "fake", state: "running", reason: "", hostPort: "p", spec: { id, vcpus: 1, memoryMb: 1, diskGb: 1, image: "", net: { mac: "", ip: "" } } });
  const fake = (): HypervisorDriver => ({
    name: "fake",
    capabilities: () => ({ exec: false, checkpoint: false, restore: false, resourceLimits: true }),
    create: async (s) => rt(s.id),
    start: async (id) => (id === "bad" ? Promise.reject(new Error("no")) : rt(id)),
    stop: async (id) => rt(id),
    destroy: async () => undefined,
    inspect: async () => undefined,
    list: async () => [],
    recover: async () => [],
  });

  it("counts and times driver calls by op and result, keeping optional operations absent", async () => {
    const m = new AgentMetrics({ defaultMetrics: false });
    const d = instrumentDriver(fake(), m);
    expect(d.exec).toBeUndefined();
    expect(d.capabilities().resourceLimits).toBe(true);
    await d.start("ok");
    await expect(d.start("bad")).rejects.toThrow("no");
    const e = parseExposition(await m.registry.metrics());
    expect(sampleValue(e, "noid_agent_driver_operations_total", { driver: "fake", op: "start", result: "ok" })).toBe(1);
    expect(sampleValue(e, "noid_agent_driver_operations_total", { driver: "fake", op: "start", result: "error" })).toBe(1);
    expect(sampleValue(e, "noid_agent_driver_operation_duration_seconds_count", { driver: "fake", op: "start" })).toBe(2);
    expect(globalRegistry.getSingleMetric("noid_agent_driver_operations_total")).toBeUndefined();
  });

  it("reports VMs by last phase (destroyed ones gone), reconcile passes and failed actions", async () => {
    const m = new AgentMetrics({ defaultMetrics: false });
    const base = { reason: "", ip: "", mac: "" };
    m.setSources({
      reports: () => [
        { vmId: "a", phase: VmPhase.VM_PHASE_RUNNING, destroyed: false, ...base },
        { vmId: "b", phase: VmPhase.VM_PHASE_FAILED, destroyed: false, ...base },
        { vmId: "c", phase: VmPhase.VM_PHASE_STOPPED, destroyed: true, ...base },
      ],
    });
    m.reconcile.pass(20, { converged: true, rounds: 1, applied: [] });
    m.reconcile.pass(5, undefined);
    m.reconcile.actionFailed("create");
    const e = parseExposition(await m.registry.metrics());
    expect(sampleValue(e, "noid_agent_vms", { phase: "running" })).toBe(1);
    expect(sampleValue(e, "noid_agent_vms", { phase: "failed" })).toBe(1);
    expect(sampleValue(e, "noid_agent_vms", { phase: "stopped" })).toBe(0);
    expect(sampleValue(e, "noid_agent_reconcile_runs_total", { result: "converged" })).toBe(1);
    expect(sampleValue(e, "noid_agent_reconcile_runs_total", { result: "error" })).toBe(1);
    expect(sampleValue(e, "noid_agent_reconcile_errors_total", { action: "create" })).toBe(1);
    // No mesh hooks set: no peers reported rather than a made-up zero.
    expect(sampleValue(e, "noid_agent_wireguard_peers")).toBeUndefined();
  });

  it("counts a failing kernel read instead of failing the scrape", async () => {
    const m = new AgentMetrics({ defaultMetrics: false });
    m.setSources({ vmPorts: async () => [{ id: "v", hostPort: "p" }], linkStats: () => Promise.reject(new Error("ip: not found")) });
    m.setWireguardReader("wg-noid", () => Promise.reject(new Error("wg: no such device")));
    await m.registry.metrics();
    // Collectors run concurrently, so a failure shows in the error counter from the next scrape on.
    const e = parseExposition(await m.registry.metrics());
    expect(sampleValue(e, "noid_agent_metrics_read_errors_total", { source: "links" })).toBe(1);
    expect(sampleValue(e, "noid_agent_metrics_read_errors_total", { source: "wireguard" })).toBe(1);
  });
});

describe("dashboard query checking (test helper)", async () => {
  const { selectors, selects } = await import("../helpers/promql.js");
  it("finds selectors inside functions and aggregations, skipping grouping labels and ranges", () => {
    expect(selectors('histogram_quantile(0.99, sum by (le, method) (rate(noid_api_request_duration_seconds_bucket{code!="OK"}[5m])))')).toEqual([
      { name: "noid_api_request_duration_seconds_bucket", matchers: [{ label: "code", op: "!=", value: "OK" }] },
    ]);
    expect(selectors("sum(noid_a) / max without (x) (noid_b)").map((s) => s.name)).toEqual(["noid_a", "noid_b"]);
  });

  it("matches selectors against a scrape with Prometheus' anchored regexes", () => {
    const e = parseExposition('noid_x{kind="security.arp"} 1\nnoid_x{kind="vm.phase"} 2\n');
    expect(selects(e, { name: "noid_x", matchers: [{ label: "kind", op: "=~", value: "security.*" }] })).toBe(true);
    expect(selects(e, { name: "noid_x", matchers: [{ label: "kind", op: "=~", value: "security" }] })).toBe(false);
    expect(selects(e, { name: "noid_y", matchers: [] })).toBe(false);
  });
});
