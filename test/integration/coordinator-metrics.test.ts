// The coordinator's /metrics, scraped over HTTP from a real coordinator on
// real etcd after real API calls and a (simulated) agent running a VM.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { register as globalRegistry } from "prom-client";
import { NoidApiError, VmPhase, type NoidClient } from "../../sdk/index.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { sampleValue, scrape } from "../helpers/exposition.js";

describe("coordinator metrics", () => {
  let c: TestCluster;
  let admin: NoidClient;
  let agent: SimAgent;
  let addr: string;

  beforeAll(async () => {
    c = await startTestCoordinator({ server: { metrics_listen: "127.0.0.1:0" } });
    admin = c.client();
    addr = c.handle.metricsServer!.address;
  });
  afterAll(async () => {
    agent?.close();
    await c?.stop();
  });

  it("counts API calls by method and code, with latency histograms", async () => {
    const before = await scrape(addr);
    const okBefore = sampleValue(before, "noid_api_requests_total", { method: "ListVms", code: "OK" }) ?? 0;
    await admin.listVms();
    await admin.listVms();
    const bad = c.client("0".repeat(64), { retries: 0 });
    await expect(bad.listVms()).rejects.toBeInstanceOf(NoidApiError);
    const after = await scrape(addr);
    expect(sampleValue(after, "noid_api_requests_total", { method: "ListVms", code: "OK" })).toBe(okBefore + 2);
    expect(sampleValue(after, "noid_api_requests_total", { method: "ListVms", code: "UNAUTHENTICATED" })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(after, "noid_api_request_duration_seconds_count", { method: "ListVms" })).toBeGreaterThanOrEqual(okBefore + 3);
    expect(after.types.get("noid_api_request_duration_seconds")).toBe("histogram");
    expect(sampleValue(after, "noid_auth_failures_total", { reason: "unknown" })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(after, "noid_coordinator_leader")).toBe(1);
    // etcd requests are timed per operation.
    expect(sampleValue(after, "noid_etcd_request_duration_seconds_count", { op: "txn" })).toBeGreaterThan(0);
    // Only this process's registry is used, never prom-client's global one.
    expect(await globalRegistry.getSingleMetric("noid_api_requests_total")).toBeUndefined();
  });

  it("reports VMs by phase, hosts by state, scheduling and quota use", async () => {
    agent = new SimAgent({ address: c.address, token: c.adminToken, name: "hv-m", autoRun: true });
    await agent.connect();
    await admin.createVm("m1", { vcpus: 2, memoryMb: 256 });
    await eventually(async () => (await admin.getVm("m1")).status?.phase === VmPhase.VM_PHASE_RUNNING);
    const m = await eventually(async () => {
      const s = await scrape(addr);
      // Events are group-written (up to 100 ms later): wait for the VM's first one too.
      return sampleValue(s, "noid_vms", { phase: "running" }) === 1 && (sampleValue(s, "noid_events_recorded_total", { kind: "vm.created" }) ?? 0) >= 1 ? s : undefined;
    });
    expect(sampleValue(m, "noid_vms", { phase: "pending" })).toBe(0);
    expect(sampleValue(m, "noid_hosts", { state: "ready" })).toBe(1);
    expect(sampleValue(m, "noid_hosts", { state: "unreachable" })).toBe(0);
    expect(sampleValue(m, "noid_scheduling_attempts_total")).toBeGreaterThanOrEqual(1);
    expect(sampleValue(m, "noid_scheduling_placements_total")).toBe(1);
    expect(sampleValue(m, "noid_scheduling_latency_seconds_count")).toBe(1);
    expect(sampleValue(m, "noid_quota_used", { user: "admin", resource: "vms" })).toBe(1);
    expect(sampleValue(m, "noid_quota_used", { user: "admin", resource: "vcpus" })).toBe(2);
    expect(sampleValue(m, "noid_events_recorded_total", { kind: "vm.created" })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(m, "noid_coordinator_process_cpu_user_seconds_total")).toBeGreaterThan(0);
  });

  it("serves only GET /metrics", async () => {
    expect((await fetch(`http://${addr}/`)).status).toBe(404);
    expect((await fetch(`http://${addr}/metrics`, { method: "POST" })).status).toBe(404);
    const res = await fetch(`http://${addr}/metrics`);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
  });
});

describe("coordinator metrics off by default", () => {
  it("binds no metrics listener unless server.metrics_listen is set", async () => {
    const c = await startTestCoordinator();
    try {
      expect(c.handle.metricsServer).toBeUndefined();
      // The registry still exists (the API hook feeds it); it is just not served.
      await c.client().listVms();
      expect(await c.handle.metrics.registry.getSingleMetricAsString("noid_api_requests_total")).toMatch(/method="ListVms",code="OK"} 1/);
    } finally {
      await c.stop();
    }
  });
});
