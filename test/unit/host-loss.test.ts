import { describe, expect, it } from "vitest";
import { Host } from "../../gen/noid/v1/host.js";
import { HostLossPolicy, Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import { effectiveHostLoss, planHostLoss, withEffectiveHostLoss } from "../../coordinator/controllers/host-loss.js";
import { vmsToFence } from "../../agent/reconcile/fence.js";
import { desiredFromVm } from "../../agent/reconcile/desired.js";
import type { DesiredVm } from "../../agent/reconcile/types.js";

const KEEP = { policy: "keep" as const, graceSeconds: 30 };
const T0 = Date.parse("2026-01-01T00:00:00Z");

function host(id: string, since?: number): Host {
  return Host.fromPartial({ id, name: `h-${id}`, ...(since !== undefined ? { unreachableSince: new Date(since) } : {}) });
}
function vm(id: string, hostId: string, o: { policy?: HostLossPolicy; grace?: number; phase?: VmPhase; desired?: VmDesiredState } = {}): Vm {
  return Vm.fromPartial({
    id,
    name: id,
    spec: { vcpus: 1, memoryMb: 64, diskGb: 1, ...(o.policy !== undefined ? { hostLoss: { policy: o.policy, graceSeconds: o.grace ?? 0 } } : {}) },
    desiredState: o.desired ?? VmDesiredState.VM_DESIRED_STATE_RUNNING,
    status: { phase: o.phase ?? VmPhase.VM_PHASE_RUNNING, hostId, hostName: `h-${hostId}` },
  });
}

describe("effective host-loss policy", () => {
  it("the VM's own policy and grace win; unset ones come from the cluster", () => {
    expect(effectiveHostLoss(undefined, KEEP)).toEqual({ policy: HostLossPolicy.HOST_LOSS_POLICY_KEEP, graceSeconds: 30 });
    expect(effectiveHostLoss(vm("a", "").spec, { policy: "reschedule", graceSeconds: 5 }).policy).toBe(HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE);
    expect(effectiveHostLoss(vm("a", "", { policy: HostLossPolicy.HOST_LOSS_POLICY_KEEP }).spec, { policy: "reschedule", graceSeconds: 5 })).toEqual({
      policy: HostLossPolicy.HOST_LOSS_POLICY_KEEP,
      graceSeconds: 5,
    });
    expect(effectiveHostLoss(vm("a", "", { policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, grace: 7 }).spec, KEEP)).toEqual({
      policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE,
      graceSeconds: 7,
    });
  });

  it("agents get the effective values, and turn them into a fencing deadline", () => {
    const sent = withEffectiveHostLoss(vm("a", "h", { policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE }), KEEP);
    expect(desiredFromVm(sent).hostLoss).toEqual({ reschedule: true, graceMs: 30_000 });
    expect(desiredFromVm(withEffectiveHostLoss(vm("b", "h"), KEEP)).hostLoss).toEqual({ reschedule: false, graceMs: 30_000 });
  });
});

describe("planHostLoss", () => {
  it("a host without a lease is marked unreachable and its VMs UNKNOWN; nothing moves yet", () => {
    const { actions } = planHostLoss({ hosts: [host("a"), host("b")], alive: new Set(["b"]), vms: [vm("v1", "a"), vm("v2", "b")], now: T0, defaults: KEEP });
    expect(actions).toEqual([
      { kind: "markUnreachable", hostId: "a" },
      { kind: "markUnknown", hostId: "a", vmId: "v1" },
    ]);
  });

  it("keep: the VM stays UNKNOWN on its host however long the host is lost", () => {
    const { actions, nextDueAt } = planHostLoss({
      hosts: [host("a", T0)],
      alive: new Set(),
      vms: [vm("v1", "a", { phase: VmPhase.VM_PHASE_UNKNOWN })],
      now: T0 + 86_400_000,
      defaults: KEEP,
    });
    expect(actions).toEqual([]);
    expect(nextDueAt).toBeUndefined();
  });

  it("reschedule: only once the grace since unreachable_since has passed; the next due time is given", () => {
    const vms = [vm("v1", "a", { policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, grace: 10, phase: VmPhase.VM_PHASE_UNKNOWN }), vm("v2", "a", { phase: VmPhase.VM_PHASE_UNKNOWN })];
    const early = planHostLoss({ hosts: [host("a", T0)], alive: new Set(), vms, now: T0 + 9_999, defaults: KEEP });
    expect(early.actions).toEqual([]);
    expect(early.nextDueAt).toBe(T0 + 10_000);
    const due = planHostLoss({ hosts: [host("a", T0)], alive: new Set(), vms, now: T0 + 10_000, defaults: KEEP });
    expect(due.actions).toEqual([{ kind: "reschedule", hostId: "a", vmId: "v1", lostForMs: 10_000 }]);
  });

  it("a host not yet marked unreachable starts no grace period", () => {
    const vms = [vm("v1", "a", { policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, grace: 1 })];
    const { actions } = planHostLoss({ hosts: [host("a")], alive: new Set(), vms, now: T0, defaults: KEEP });
    expect(actions.map((a) => a.kind)).toEqual(["markUnreachable", "markUnknown"]);
  });

  it("VMs being destroyed are left alone; a host back with a lease is cleared", () => {
    const vms = [vm("v1", "a", { desired: VmDesiredState.VM_DESIRED_STATE_DELETED, policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, grace: 1 })];
    expect(planHostLoss({ hosts: [host("a", T0)], alive: new Set(), vms, now: T0 + 60_000, defaults: KEEP }).actions).toEqual([]);
    expect(planHostLoss({ hosts: [host("a", T0)], alive: new Set(["a"]), vms, now: T0, defaults: KEEP }).actions).toEqual([{ kind: "clearUnreachable", hostId: "a" }]);
  });
});

describe("vmsToFence", () => {
  const d = (id: string, reschedule: boolean, state: DesiredVm["state"] = "running"): DesiredVm => ({
    id,
    state,
    driver: "",
    spec: { id, vcpus: 1, memoryMb: 64, diskGb: 1, image: "", net: { mac: "", ip: "" } },
    hostLoss: { reschedule, graceMs: 5000 },
  });
  it("stops reschedule-policy VMs once the lease went unrenewed for their grace; keep-policy VMs run on", () => {
    const desired = [d("r", true), d("k", false), d("s", true, "stopped")];
    expect(vmsToFence(desired, T0, T0 + 4999)).toEqual([]);
    expect(vmsToFence(desired, T0, T0 + 5000)).toEqual(["r"]);
    expect(vmsToFence(desired, undefined, T0 + 60_000)).toEqual([]);
  });

  it("never fences before the floor (two heartbeat intervals without a renewal), however short the grace", () => {
    const short = [{ ...d("r", true), hostLoss: { reschedule: true, graceMs: 1000 } }];
    // Heartbeats every 2 s: a healthy agent is 2 s past its last renewal just before the next ack.
    expect(vmsToFence(short, T0, T0 + 2100, 4000)).toEqual([]);
    expect(vmsToFence(short, T0, T0 + 3999, 4000)).toEqual([]);
    expect(vmsToFence(short, T0, T0 + 4000, 4000)).toEqual(["r"]);
    // A grace longer than the floor is the grace.
    expect(vmsToFence([d("r", true)], T0, T0 + 4999, 4000)).toEqual([]);
    expect(vmsToFence([d("r", true)], T0, T0 + 5000, 4000)).toEqual(["r"]);
  });
});

describe("agents' lease and heartbeat config", async () => {
  const { resolveConfig } = await import("../../coordinator/config.js");
  it("refuses a heartbeat interval above a third of the lease TTL (a lease could expire between heartbeats), naming both", () => {
    expect(resolveConfig({}).agents).toMatchObject({ lease_ttl_seconds: 10, heartbeat_interval_ms: 2000 });
    expect(resolveConfig({ agents: { lease_ttl_seconds: 3, heartbeat_interval_ms: 1000 } }).agents.heartbeat_interval_ms).toBe(1000);
    expect(() => resolveConfig({ agents: { lease_ttl_seconds: 3, heartbeat_interval_ms: 1001 } })).toThrow(
      /agents\.heartbeat_interval_ms \(1001\) must be at most a third of agents\.lease_ttl_seconds \(3 s\)/,
    );
    expect(() => resolveConfig({ agents: { heartbeat_interval_ms: 60_000 } })).toThrow(/INVALID|heartbeat_interval_ms/);
  });

  it("the example coordinator.toml in deploy/config passes", async () => {
    const { readConfigFile } = await import("../../coordinator/config.js");
    const example = readConfigFile(new URL("../../deploy/config/coordinator.toml", import.meta.url).pathname, true);
    expect(resolveConfig(example).agents).toMatchObject({ lease_ttl_seconds: 10, heartbeat_interval_ms: 2000 });
  });
});

describe("spec.host_loss validation", () => {
  it("an unknown policy or a grace over a day is INVALID_ARGUMENT naming the field; unset stays unset", async () => {
    const { normalizeVmSpec } = await import("../../coordinator/validate.js");
    expect(() => normalizeVmSpec({ ...vm("a", "").spec!, hostLoss: { policy: 7 as HostLossPolicy, graceSeconds: 0 } })).toThrow(/spec\.host_loss\.policy/);
    expect(() => normalizeVmSpec({ ...vm("a", "").spec!, hostLoss: { policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, graceSeconds: 86_401 } })).toThrow(/spec\.host_loss\.grace_seconds/);
    expect(normalizeVmSpec({ ...vm("a", "").spec!, hostLoss: undefined }).hostLoss).toBeUndefined();
    expect(normalizeVmSpec({ ...vm("a", "").spec!, hostLoss: { policy: HostLossPolicy.HOST_LOSS_POLICY_KEEP, graceSeconds: 30 } }).hostLoss?.graceSeconds).toBe(30);
  });
});
