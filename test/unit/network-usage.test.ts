import { describe, expect, it } from "vitest";
import { Network } from "../../gen/noid/v1/network.js";
import { Vm } from "../../gen/noid/v1/vm.js";
import { assignable, networkUsage } from "../../coordinator/networks/usage.js";

const net = (id: string, cidr: string) => Network.fromPartial({ id, name: `n-${id}`, owner: "alice", cidr });
const vm = (i: number, networkId: string) => Vm.fromPartial({ id: `v${i}`, status: { networkId, ip: `10.0.0.${i + 2}` } });

describe("IPAM usage and the exhaustion alert", () => {
  it("counts assignable addresses without network, gateway and broadcast", () => {
    expect(assignable("10.0.0.0/24")).toBe(253);
    expect(assignable("10.0.0.0/29")).toBe(5);
    expect(assignable("bogus")).toBe(0);
  });
  it("flags a network at 90% of its addresses, not before", () => {
    const vms = [...Array.from({ length: 4 }, (_, i) => vm(i, "a")), vm(9, "b"), Vm.fromPartial({ id: "pending", status: { networkId: "a", ip: "" } })];
    const [a, b] = networkUsage([net("a", "10.0.0.0/29"), net("b", "10.1.0.0/24")], vms);
    expect(a).toMatchObject({ used: 4, total: 5, nearlyExhausted: false });
    expect(b).toMatchObject({ used: 1, total: 253, nearlyExhausted: false });
    const [full] = networkUsage([net("a", "10.0.0.0/29")], [...vms, vm(5, "a")]);
    expect(full).toMatchObject({ used: 5, nearlyExhausted: true });
  });
});
