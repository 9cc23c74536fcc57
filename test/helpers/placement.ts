// Hosts seeded straight into a store, and what every placement must leave
// true there: each VM on at most one host with exactly one assignment key,
// each host's allocation record equal to the VMs on it, within capacity.
// Shared by the placement tests (controller passes, placement at create).
import { expect } from "vitest";
import { keys } from "../../coordinator/state/keys.js";
import type { Store } from "../../coordinator/store/store.js";
import { Host } from "../../gen/noid/v1/host.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm } from "../../gen/noid/v1/vm.js";

/** `hosts` alive hosts of `vcpusEach` vCPUs (memory and disk plenty); their ids. */
export async function seedHosts(store: Store, hosts: number, vcpusEach: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < hosts; i++) {
    const id = `h${String(i).padStart(15, "0")}`;
    ids.push(id);
    const host = Host.fromPartial({ id, name: `host-${i}`, drivers: ["sandbox"], capacity: { vcpus: vcpusEach, memoryMb: 1 << 20, diskGb: 1 << 20 } });
    await store.put(keys.host(id), Host.encode(host).finish());
    await store.put(keys.hostName(host.name), Buffer.from(id));
    await store.put(keys.alive(id), Buffer.from("1"));
  }
  return ids;
}

/** Every VM (of 1 vCPU) on at most one host, with exactly one assignment key; allocations add up and fit. */
export async function checkPlacementInvariants(store: Store, hostIds: string[], vcpusEach: number): Promise<{ placed: number; unplaced: number }> {
  const vms = (await store.list(keys.vmsPrefix)).kvs.map((kv) => Vm.decode(kv.value));
  const assigned = new Map<string, string[]>();
  for (const h of hostIds) {
    for (const kv of (await store.list(keys.assignPrefix(h))).kvs) {
      const vmId = Buffer.from(kv.value).toString();
      assigned.set(vmId, [...(assigned.get(vmId) ?? []), h]);
    }
  }
  let placed = 0;
  for (const vm of vms) {
    const hs = assigned.get(vm.id) ?? [];
    if (vm.status?.hostId) {
      placed++;
      expect(hs).toEqual([vm.status.hostId]);
    } else expect(hs).toEqual([]);
  }
  for (const h of hostIds) {
    const kv = await store.get(keys.alloc(h));
    const onHost = vms.filter((v) => v.status?.hostId === h).length;
    const rec = kv ? AllocationRecord.decode(kv.value) : undefined;
    expect(rec?.vmCount ?? 0).toBe(onHost);
    expect(rec?.allocated?.vcpus ?? 0).toBe(onHost);
    expect(onHost).toBeLessThanOrEqual(vcpusEach);
  }
  return { placed, unplaced: vms.length - placed };
}
