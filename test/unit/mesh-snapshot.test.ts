import { describe, expect, it } from "vitest";
import { meshSnapshotFor, type MeshInputs } from "../../coordinator/mesh/snapshot.js";
import { Host } from "../../gen/noid/v1/host.js";
import { Network } from "../../gen/noid/v1/network.js";
import { Vm, VmDesiredState } from "../../gen/noid/v1/vm.js";

const host = (id: string, meshIp: string): Host => ({ ...Host.fromPartial({ id, name: `h${id}`, address: `10.99.0.${id}`, meshIp, wireguardPort: 51820 }) });
const net = (id: string, vni: number): Network => Network.fromPartial({ id, name: id, owner: id, cidr: "10.0.0.0/24", vni, gateway: "10.0.0.1" });
const vm = (id: string, hostId: string, networkId: string, extra: Partial<Vm> = {}): Vm =>
  Vm.fromPartial({
    id,
    name: id,
    owner: "o",
    desiredState: VmDesiredState.VM_DESIRED_STATE_RUNNING,
    spec: { vcpus: 1, memoryMb: 64 },
    status: { hostId, networkId, mac: `02:00:00:00:00:${id}`, ip: `10.0.0.${Number.parseInt(id, 16)}` },
    ...extra,
  });

const inputs = (): MeshInputs => ({
  hosts: [
    { host: host("1", "100.64.0.1"), alive: true },
    { host: host("2", "100.64.0.2"), alive: true },
    { host: host("3", "100.64.0.3"), alive: true },
    { host: host("4", "100.64.0.4"), alive: false },
  ],
  networks: [net("a", 5000), net("b", 5001)],
  vms: [vm("11", "1", "a"), vm("12", "2", "a"), vm("13", "3", "a"), vm("21", "1", "b"), vm("22", "2", "b"), vm("41", "4", "a")],
  meshPrefixLen: 16,
});

describe("mesh snapshot", () => {
  it("lists every live host as a member, and drops unreachable ones", () => {
    const s = meshSnapshotFor("1", inputs());
    expect(s.members.map((m) => m.hostId)).toEqual(["1", "2", "3"]);
    expect(s.meshPrefixLen).toBe(16);
  });

  it("tells a host only the networks it carries, with every host's VMs in them", () => {
    const s3 = meshSnapshotFor("3", inputs()); // host 3 carries only network a
    expect(s3.members.flatMap((m) => m.networks.map((n) => n.networkId))).toEqual(["a", "a", "a"]);
    const s1 = meshSnapshotFor("1", inputs());
    const h2 = s1.members.find((m) => m.hostId === "2")!;
    expect(h2.networks.map((n) => [n.networkId, n.vni, n.vms.map((v) => v.vmId)])).toEqual([
      ["a", 5000, ["12"]],
      ["b", 5001, ["22"]],
    ]);
  });

  it("forgets VMs being destroyed and VMs without an address", () => {
    const inp = inputs();
    inp.vms = inp.vms.map((v) => (v.id === "12" ? { ...v, desiredState: VmDesiredState.VM_DESIRED_STATE_DELETED } : v));
    inp.vms.push(vm("99", "2", "a", { status: { hostId: "2", networkId: "a", mac: "", ip: "" } as Vm["status"] }));
    const h2 = meshSnapshotFor("1", inp).members.find((m) => m.hostId === "2")!;
    expect(h2.networks.find((n) => n.networkId === "a")).toBeUndefined();
  });
});
