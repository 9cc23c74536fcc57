// The coordinator's metrics registry and its pure gauges.
import { describe, expect, it } from "vitest";
import { register as globalRegistry } from "prom-client";
import { Host, HostState } from "../../gen/noid/v1/host.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { CoordinatorMetrics, InstrumentedStore, PHASES, codeName, hostsByState, quotaUse, vmsByPhase } from "../../coordinator/metrics.js";
import { MemoryStore } from "../../coordinator/store/memory-store.js";
import { parseExposition, sampleValue } from "../helpers/exposition.js";

const vm = (owner: string, phase: VmPhase, vcpus = 1, memoryMb = 256): Vm => Vm.fromPartial({ owner, spec: { vcpus, memoryMb }, status: { phase } });

describe("pure gauges", () => {
  it("counts VMs per phase with every phase present", () => {
    const m = vmsByPhase([vm("a", VmPhase.VM_PHASE_RUNNING), vm("b", VmPhase.VM_PHASE_RUNNING), vm("a", VmPhase.VM_PHASE_FAILED)]);
    expect([...m.keys()]).toEqual(PHASES);
    expect(m.get("running")).toBe(2);
    expect(m.get("failed")).toBe(1);
    expect(m.get("pending")).toBe(0);
  });

  it("counts hosts per state and cordoned ones", () => {
    const r = hostsByState([
      Host.fromPartial({ state: HostState.HOST_STATE_READY }),
      Host.fromPartial({ state: HostState.HOST_STATE_UNREACHABLE, cordoned: true }),
      Host.fromPartial({ state: HostState.HOST_STATE_READY, cordoned: true }),
    ]);
    expect(Object.fromEntries(r.byState)).toEqual({ ready: 2, unreachable: 1 });
    expect(r.cordoned).toBe(2);
  });

  it("sums quota use per user", () => {
    const q = quotaUse([vm("a", VmPhase.VM_PHASE_RUNNING, 2, 512), vm("a", VmPhase.VM_PHASE_PENDING, 1, 128), vm("b", VmPhase.VM_PHASE_RUNNING)]);
    expect(q.get("a")).toEqual({ vms: 2, vcpus: 3, memoryMb: 640 });
    expect(q.get("b")).toEqual({ vms: 1, vcpus: 1, memoryMb: 256 });
  });

  it("names gRPC codes", () => {
    expect(codeName(0)).toBe("OK");
    expect(codeName(16)).toBe("UNAUTHENTICATED");
    expect(codeName(99)).toBe("99");
  });
});

describe("registry", () => {
  it("is one per instance and never the global default", async () => {
    const a = new CoordinatorMetrics({ defaultMetrics: false });
    const b = new CoordinatorMetrics({ defaultMetrics: false });
    a.onCall("ListVms", 0, 12);
    a.onCall("ListVms", 5, 3);
    const ea = parseExposition(await a.registry.metrics());
    expect(sampleValue(ea, "noid_api_requests_total", { method: "ListVms", code: "OK" })).toBe(1);
    expect(sampleValue(ea, "noid_api_requests_total", { method: "ListVms", code: "NOT_FOUND" })).toBe(1);
    expect(sampleValue(ea, "noid_api_request_duration_seconds_count", { method: "ListVms" })).toBe(2);
    expect(sampleValue(ea, "noid_api_request_duration_seconds_bucket", { method: "ListVms", le: "0.005" })).toBe(1);
    expect(sampleValue(parseExposition(await b.registry.metrics()), "noid_api_requests_total", { method: "ListVms", code: "OK" })).toBeUndefined();
    expect(globalRegistry.getSingleMetric("noid_api_requests_total")).toBeUndefined();
  });

  it("times every store request by operation and counts failures", async () => {
    const m = new CoordinatorMetrics({ defaultMetrics: false });
    const store = new InstrumentedStore(new MemoryStore(), m);
    await store.put("a", new Uint8Array([1]));
    await store.get("a");
    await store.txn([], [{ type: "delete", key: "a" }]);
    await store.list("");
    const lease = await store.grantLease(5);
    await lease.keepAliveOnce();
    await lease.revoke();
    const e = parseExposition(await m.registry.metrics());
    for (const op of ["put", "get", "txn", "list", "lease_grant", "lease_keepalive"]) {
      expect(sampleValue(e, "noid_etcd_request_duration_seconds_count", { op }), op).toBe(1);
    }
    // A failing request is timed and counted as an error.
    const down = new MemoryStore();
    down.get = () => Promise.reject(new Error("etcd down"));
    const failing = new InstrumentedStore(down, m);
    await expect(failing.get("x")).rejects.toThrow("etcd down");
    const e2 = parseExposition(await m.registry.metrics());
    expect(sampleValue(e2, "noid_etcd_request_errors_total", { op: "get" })).toBe(1);
    expect(sampleValue(e2, "noid_etcd_request_duration_seconds_count", { op: "get" })).toBe(2);
  });
});

describe("metrics and events configuration", async () => {
  const { envLayer, resolveConfig } = await import("../../coordinator/config.js");
  const { serveMetrics } = await import("../../common/metrics-http.js");
  it("serves no metrics by default, validates the address and reads NOID_METRICS_LISTEN", () => {
    const c = resolveConfig({});
    expect(c.server.metrics_listen).toBe("");
    expect(c.events).toEqual({ retention_count: 10_000, retention_seconds: 604_800 });
    expect(() => resolveConfig({ server: { metrics_listen: "9654" } })).toThrow(/server\.metrics_listen/);
    expect(() => resolveConfig({ events: { retention_count: 0 } })).toThrow(/events\.retention_count/);
    expect(resolveConfig(envLayer({ NOID_METRICS_LISTEN: "127.0.0.1:9654" })).server.metrics_listen).toBe("127.0.0.1:9654");
  });

  it("fails clearly when the metrics address is taken", async () => {
    const m = new CoordinatorMetrics({ defaultMetrics: false });
    const a = await serveMetrics(m.registry, "127.0.0.1:0");
    try {
      await expect(serveMetrics(m.registry, a.address)).rejects.toThrow(new RegExp(`metrics: listening on ${a.address}: .*EADDRINUSE`));
    } finally {
      await a.close();
    }
  });
});
