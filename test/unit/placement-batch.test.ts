// Property tests for the pure part of batched placement (planPlacementTxns):
// whatever the scheduler decided, the planned transactions place each VM
// exactly once, stay within etcd's operation limit, guard every VM and
// allocation they read (a host's first chunk by the revision read, each later
// chunk by the exact allocation its predecessor writes, sent after it), and
// write allocations that add up and stay within capacity.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { planPlacementTxns, requestOf, type PlacementItem } from "../../coordinator/controllers/placement.js";
import { scheduleBatch, type HostView } from "../../coordinator/scheduler/index.js";
import { keys } from "../../coordinator/state/keys.js";

const hostArb = (i: number): fc.Arbitrary<{ view: HostView; allocRev: number }> =>
  fc
    .record({
      vcpus: fc.integer({ min: 0, max: 32 }),
      memoryMb: fc.integer({ min: 0, max: 32768 }),
      used: fc.integer({ min: 0, max: 4 }),
      allocRev: fc.integer({ min: 0, max: 1000 }),
    })
    // No allocation record (revision 0) means nothing allocated yet.
    .map(({ vcpus, memoryMb, used: u, allocRev }) => ({ vcpus, memoryMb, used: allocRev === 0 ? 0 : u, allocRev }))
    .map(({ vcpus, memoryMb, used, allocRev }) => ({
      allocRev,
      view: {
        id: `host${i}`,
        name: `h${i}`,
        labels: {},
        drivers: ["sandbox"],
        capacity: { vcpus, memoryMb, diskGb: 1000 },
        allocated: { vcpus: Math.min(used, vcpus), memoryMb: Math.min(used * 256, memoryMb), diskGb: 0 },
        vmCount: used,
        cordoned: false,
        ready: true,
        groups: {},
        networks: {},
      },
    }));

const vmArb = (i: number): fc.Arbitrary<{ vm: Vm; modRevision: number }> =>
  fc
    .record({ vcpus: fc.integer({ min: 1, max: 4 }), memoryMb: fc.constantFrom(128, 256, 1024), group: fc.constantFrom("", "web"), rev: fc.integer({ min: 1, max: 5000 }) })
    .map(({ vcpus, memoryMb, group, rev }) => ({
      modRevision: rev,
      vm: Vm.fromPartial({
        id: `vm${i}`,
        name: `vm${i}`,
        owner: "t1",
        spec: { vcpus, memoryMb, diskGb: 1, driver: "sandbox", antiAffinityGroup: group, network: "" },
        status: { phase: VmPhase.VM_PHASE_PENDING },
      }),
    }));

const caseArb = fc.record({
  hosts: fc.integer({ min: 1, max: 8 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => hostArb(i)))),
  vms: fc.integer({ min: 1, max: 40 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => vmArb(i)))),
  maxOps: fc.integer({ min: 3, max: 64 }),
  policy: fc.constantFrom<"spread" | "binpack">("spread", "binpack"),
});

describe("planPlacementTxns", () => {
  it("places each VM once, chains a host's chunks, within the op limit, guarded, within capacity", () => {
    fc.assert(
      fc.property(caseArb, ({ hosts, vms, maxOps, policy }) => {
        const views = hosts.map((h) => h.view);
        const { decisions } = scheduleBatch(views, vms.map((v) => requestOf(v.vm)), policy);
        const items: PlacementItem[] = [];
        decisions.forEach((d, i) => {
          if (d.placed) items.push({ entry: { value: vms[i]!.vm, modRevision: vms[i]!.modRevision }, hostId: d.hostId, hostName: `n-${d.hostId}` });
        });
        const allocRecord = (h: HostView): AllocationRecord => ({ allocated: { ...h.allocated }, vmCount: h.vmCount, groups: {}, networks: {} });
        const byHost = new Map(hosts.map((h) => [h.view.id, h]));
        const allocOf = (id: string) => {
          const h = byHost.get(id)!;
          return { record: h.allocRev === 0 ? undefined : allocRecord(h.view), modRevision: h.allocRev };
        };
        const { txns } = planPlacementTxns(items, allocOf, new Date(0), maxOps);

        const seenVm = new Set<string>();
        const planned = new Map<string, string>(); // vm -> host
        /** Per host: the allocation its latest chunk writes (bytes, record) and that chunk's transaction. */
        const lastChunk = new Map<string, { bytes: Uint8Array; rec: AllocationRecord; txn: number }>();
        for (const [ti, t] of txns.entries()) {
          expect(t.ops.length).toBeLessThanOrEqual(maxOps);
          expect(t.compares.length).toBeLessThanOrEqual(maxOps);
          expect(t.vmIds.length).toBeGreaterThan(0);
          // Sent only after transactions planned before it.
          for (const j of t.after) expect(j).toBeLessThan(ti);
          for (const id of t.vmIds) {
            expect(seenVm.has(id)).toBe(false);
            seenVm.add(id);
            const entry = items.find((it) => it.entry.value.id === id)!;
            // Guarded: the VM is unchanged since it was read.
            expect(t.compares).toContainEqual({ key: keys.vm(id), target: "mod", op: "==", value: entry.entry.modRevision });
            const put = t.ops.find((o) => o.type === "put" && o.key === keys.vm(id));
            expect(put).toBeDefined();
            const written = Vm.decode(put!.type === "put" ? put!.value : new Uint8Array());
            expect(written.status?.hostId).toBe(entry.hostId);
            expect(t.ops).toContainEqual({ type: "put", key: keys.assign(entry.hostId, id), value: Buffer.from(id) });
            planned.set(id, entry.hostId);
          }
          for (const [hostId, rec] of t.allocs) {
            const prev = lastChunk.get(hostId);
            if (!prev) {
              // A host's first chunk: its allocation unchanged since read.
              expect(t.compares).toContainEqual({ key: keys.alloc(hostId), target: "mod", op: "==", value: byHost.get(hostId)!.allocRev });
            } else {
              // A later chunk: the allocation is exactly what the chunk before wrote, and that one goes first.
              expect(t.compares).toContainEqual({ key: keys.alloc(hostId), target: "value", op: "==", value: prev.bytes });
              expect(t.after).toContain(prev.txn);
            }
            expect(t.compares.filter((c) => c.key === keys.alloc(hostId))).toHaveLength(1);
            expect(t.compares).toContainEqual({ key: keys.host(hostId), target: "create", op: ">", value: 0 });
            const put = t.ops.find((o) => o.type === "put" && o.key === keys.alloc(hostId));
            expect(put?.type === "put" && AllocationRecord.decode(put.value)).toEqual(rec);
            // Read allocation + exactly this host's VMs of this and the earlier chunks, never over capacity.
            const h = byHost.get(hostId)!.view;
            const mine = [...planned].filter(([, host]) => host === hostId).map(([id]) => vms.find((v) => v.vm.id === id)!.vm.spec!);
            const base = h.allocated;
            expect(rec.vmCount).toBe(h.vmCount + mine.length);
            expect(rec.allocated!.vcpus).toBe(base.vcpus + mine.reduce((s, x) => s + x.vcpus, 0));
            expect(rec.allocated!.memoryMb).toBe(base.memoryMb + mine.reduce((s, x) => s + x.memoryMb, 0));
            expect(rec.allocated!.vcpus).toBeLessThanOrEqual(h.capacity.vcpus);
            expect(rec.allocated!.memoryMb).toBeLessThanOrEqual(h.capacity.memoryMb);
            lastChunk.set(hostId, { bytes: put!.type === "put" ? put!.value : new Uint8Array(), rec, txn: ti });
          }
        }
        // Nothing lost or left over: every placed decision is planned, on its host in the order decided.
        expect(seenVm.size).toBe(items.length);
        for (const hostId of lastChunk.keys()) {
          const order = items.filter((it) => it.hostId === hostId).map((it) => it.entry.value.id);
          const inPlan = txns.flatMap((t) => t.vmIds).filter((id) => planned.get(id) === hostId);
          expect(inPlan).toEqual(order);
        }
      }),
      { numRuns: 100 },
    );
  });

  it("fits a large pass into few transactions", () => {
    const items: PlacementItem[] = Array.from({ length: 1000 }, (_, i) => ({
      entry: { value: Vm.fromPartial({ id: `vm${i}`, owner: "t", spec: { vcpus: 1, memoryMb: 1, diskGb: 1 }, status: {} }), modRevision: i + 1 },
      hostId: `host${i % 500}`,
      hostName: `h${i % 500}`,
    }));
    const { txns } = planPlacementTxns(items, () => ({ record: undefined, modRevision: 0 }), new Date(0));
    expect(txns.reduce((s, t) => s + t.vmIds.length, 0)).toBe(1000);
    expect(txns.length).toBeLessThanOrEqual(Math.ceil((1000 * 2 + 500) / 100) + 1);
    expect(txns.every((t) => t.after.length === 0)).toBe(true);
  });

  it("chains a host's VMs beyond one transaction instead of leaving them for the next pass", () => {
    const items: PlacementItem[] = Array.from({ length: 200 }, (_, i) => ({
      entry: { value: Vm.fromPartial({ id: `vm${i}`, owner: "t", spec: { vcpus: 1, memoryMb: 1, diskGb: 1 }, status: {} }), modRevision: i + 1 },
      hostId: "host0",
      hostName: "h0",
    }));
    const { txns } = planPlacementTxns(items, () => ({ record: undefined, modRevision: 0 }), new Date(0));
    // 49 VMs per transaction (1 + 2 x 49 puts <= 100): 5 transactions, each after the one before.
    expect(txns.map((t) => t.vmIds.length)).toEqual([49, 49, 49, 49, 4]);
    expect(txns.map((t) => t.after)).toEqual([[], [0], [1], [2], [3]]);
    expect(txns.flatMap((t) => t.vmIds)).toEqual(items.map((it) => it.entry.value.id));
    expect(txns.at(-1)!.allocs.get("host0")?.vmCount).toBe(200);
  });
});
