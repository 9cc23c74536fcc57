import { describe, expect, it } from "vitest";
import { Vm, VmDesiredState } from "../../gen/noid/v1/vm.js";
import { desiredFromVm, macFromId } from "../../agent/reconcile/desired.js";

describe("desired VMs from coordinator messages", () => {
  it("derives a stable, locally administered unicast MAC from the id", () => {
    const m = macFromId("vm-123");
    expect(m).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(m).toBe(macFromId("vm-123"));
    expect(m).not.toBe(macFromId("vm-124"));
    const first = parseInt(m.slice(0, 2), 16);
    expect(first & 0x02).toBe(2);
    expect(first & 0x01).toBe(0);
  });

  it("uses status ip/mac when set, else derives the MAC and leaves the IP empty", () => {
    const base = Vm.fromPartial({ id: "v1", spec: { vcpus: 2, memoryMb: 512, diskGb: 3 }, desiredState: VmDesiredState.VM_DESIRED_STATE_RUNNING });
    const d = desiredFromVm(base);
    expect(d).toMatchObject({ id: "v1", state: "running", spec: { vcpus: 2, memoryMb: 512, diskGb: 3 } });
    expect(d.spec.net).toEqual({ mac: macFromId("v1"), ip: "", prefixLen: 24 });

    const withNet = desiredFromVm({ ...base, status: { ...base.status!, ip: "10.1.2.3/16", mac: "02:AA:00:00:00:01" } } as Vm);
    expect(withNet.spec.net).toEqual({ mac: "02:aa:00:00:00:01", ip: "10.1.2.3", prefixLen: 16 });
  });

  it("maps desired states", () => {
    const s = (desiredState: VmDesiredState): string => desiredFromVm(Vm.fromPartial({ id: "x", desiredState })).state;
    expect(s(VmDesiredState.VM_DESIRED_STATE_STOPPED)).toBe("stopped");
    expect(s(VmDesiredState.VM_DESIRED_STATE_DELETED)).toBe("deleted");
    expect(s(VmDesiredState.VM_DESIRED_STATE_RUNNING)).toBe("running");
  });
});
