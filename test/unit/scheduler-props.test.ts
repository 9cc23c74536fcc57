// Property tests for the pure scheduler: invariants that must hold for any
// cluster and any batch, not just the hand-picked tables.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  anyHostFits,
  applyPlacement,
  BatchScheduler,
  filterHosts,
  releasePlacement,
  scheduleBatch,
  scheduleOne,
  type Decision,
  type HostView,
  type Policy,
  type Res,
  type VmRequest,
} from "../../coordinator/scheduler/index.js";

const DRIVERS = ["firecracker", "qemu", "sandbox"];
const NAMES = ["h0", "h1", "h2", "h3", "h4", "h5"];
const GROUPS = ["", "web", "db"];
const NETWORKS = ["", "net-a", "net-b"];

const countMap = (keys: string[]): fc.Arbitrary<Record<string, number>> =>
  fc.dictionary(fc.constantFrom(...keys.filter((k) => k !== "")), fc.integer({ min: 1, max: 3 }), { maxKeys: 2 });

/** True with probability 1 - 1/(odds+1): most hosts are usable, so multi-host choices are common. */
const mostly = (value: boolean, odds = 5): fc.Arbitrary<boolean> =>
  fc.oneof({ weight: odds, arbitrary: fc.constant(value) }, { weight: 1, arbitrary: fc.constant(!value) });

const labelsArb = fc.dictionary(fc.constantFrom("zone", "gpu"), fc.constantFrom("1", "2"), { maxKeys: 2 });

/** A host whose allocation never exceeds its capacity (the scheduler's starting assumption). */
const hostArb = (name: string): fc.Arbitrary<HostView> =>
  fc
    .record({
      capacity: fc.record({
        vcpus: fc.integer({ min: 0, max: 16 }),
        memoryMb: fc.integer({ min: 0, max: 16384 }),
        diskGb: fc.integer({ min: 0, max: 200 }),
      }),
      used: fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true })),
      labels: labelsArb,
      drivers: fc.subarray(DRIVERS),
      vmCount: fc.integer({ min: 0, max: 5 }),
      cordoned: mostly(false),
      ready: mostly(true),
      groups: countMap(GROUPS),
      networks: countMap(NETWORKS),
    })
    .map(({ capacity, used, ...rest }) => ({
      id: `id-${name}`,
      name,
      capacity,
      allocated: {
        vcpus: Math.floor(capacity.vcpus * used[0]),
        memoryMb: Math.floor(capacity.memoryMb * used[1]),
        diskGb: Math.floor(capacity.diskGb * used[2]),
      },
      ...rest,
    }));

const mixedHostsArb: fc.Arbitrary<HostView[]> = fc
  .subarray(NAMES)
  .chain((names) => (names.length === 0 ? fc.constant([]) : fc.tuple(...names.map(hostArb))));

/** Identical hosts but for name and id: every choice is a tie, so tie-breaking is exercised. */
const uniformHostsArb: fc.Arbitrary<HostView[]> = fc
  .tuple(fc.subarray(NAMES, { minLength: 1 }), hostArb("tmpl"))
  .map(([names, t]) => names.map((name) => ({ ...structuredClone(t), id: `id-${name}`, name })));

const hostsArb = fc.oneof(mixedHostsArb, uniformHostsArb);

const resArb: fc.Arbitrary<Res> = fc.record({
  vcpus: fc.integer({ min: 0, max: 8 }),
  memoryMb: fc.integer({ min: 0, max: 8192 }),
  diskGb: fc.integer({ min: 0, max: 100 }),
});

const vmArb = (id: string): fc.Arbitrary<VmRequest> =>
  fc.record({
    id: fc.constant(id),
    resources: resArb,
    driver: fc.constantFrom("", ...DRIVERS),
    hostSelector: fc.oneof({ weight: 3, arbitrary: fc.constant({}) }, { weight: 1, arbitrary: labelsArb }),
    host: fc.oneof({ weight: 3, arbitrary: fc.constant("") }, { weight: 1, arbitrary: fc.constantFrom(...NAMES, "ghost") }),
    antiAffinityGroup: fc.constantFrom(...GROUPS),
    networkId: fc.constantFrom(...NETWORKS),
  });

const vmsArb: fc.Arbitrary<VmRequest[]> = fc
  .integer({ min: 0, max: 12 })
  .chain((n) => (n === 0 ? fc.constant([]) : fc.tuple(...Array.from({ length: n }, (_, i) => vmArb(`vm-${i}`)))));

const policyArb = fc.constantFrom<Policy>("spread", "binpack");

const caseArb = fc.record({ hosts: hostsArb, vms: vmsArb, policy: policyArb });

const byId = (hosts: HostView[]): Map<string, HostView> => new Map(hosts.map((h) => [h.id, h]));

function placedPairs(decisions: Decision[], vms: VmRequest[]): { vm: VmRequest; hostId: string }[] {
  const out: { vm: VmRequest; hostId: string }[] = [];
  decisions.forEach((d, i) => {
    const vm = vms[i];
    if (d.placed && vm !== undefined) out.push({ vm, hostId: d.hostId });
  });
  return out;
}

function deepFreeze<T>(x: T): T {
  if (x !== null && typeof x === "object") {
    for (const v of Object.values(x)) deepFreeze(v);
    Object.freeze(x);
  }
  return x;
}

const RUNS = { numRuns: 300 };

describe("scheduler properties", () => {
  it("(a) no host is over-committed after a batch", () => {
    fc.assert(
      fc.property(caseArb, ({ hosts, vms, policy }) => {
        const { decisions, hosts: after } = scheduleBatch(hosts, vms, policy);
        // Recount from the decisions so an implementation that forgets to
        // record placements cannot pass by leaving every host empty.
        const expected = new Map(hosts.map((h) => [h.id, { ...h.allocated }]));
        for (const { vm, hostId } of placedPairs(decisions, vms)) {
          const a = expected.get(hostId)!;
          a.vcpus += vm.resources.vcpus;
          a.memoryMb += vm.resources.memoryMb;
          a.diskGb += vm.resources.diskGb;
        }
        for (const h of after) {
          expect(h.allocated).toEqual(expected.get(h.id));
          expect(h.allocated.vcpus).toBeLessThanOrEqual(h.capacity.vcpus);
          expect(h.allocated.memoryMb).toBeLessThanOrEqual(h.capacity.memoryMb);
          expect(h.allocated.diskGb).toBeLessThanOrEqual(h.capacity.diskGb);
        }
      }),
      RUNS,
    );
  });

  it("(b) every unplaced VM fits no host, even in the final state", () => {
    // Allocations only grow during a batch, so a host that fits at the end
    // would also have fitted when the VM was considered.
    fc.assert(
      fc.property(caseArb, ({ hosts, vms, policy }) => {
        const { decisions, hosts: after } = scheduleBatch(hosts, vms, policy);
        decisions.forEach((d, i) => {
          if (!d.placed) {
            expect(filterHosts(after, vms[i]!).fit).toEqual([]);
            expect(d.reason.length).toBeGreaterThan(0);
            expect(d.reason).not.toContain("\n");
          }
        });
      }),
      RUNS,
    );
  });

  it("(b) with one eligible host big enough for the whole batch, everything is placed", () => {
    const bigArb = fc.record({ hosts: hostsArb, vms: vmsArb, policy: policyArb }).map(({ hosts, vms, policy }) => {
      const need = vms.reduce(
        (s, v) => ({
          vcpus: s.vcpus + v.resources.vcpus,
          memoryMb: s.memoryMb + v.resources.memoryMb,
          diskGb: s.diskGb + v.resources.diskGb,
        }),
        { vcpus: 0, memoryMb: 0, diskGb: 0 },
      );
      const big: HostView = {
        id: "id-big",
        name: "big",
        labels: {},
        drivers: [...DRIVERS],
        capacity: need,
        allocated: { vcpus: 0, memoryMb: 0, diskGb: 0 },
        vmCount: 0,
        cordoned: false,
        ready: true,
        groups: {},
        networks: {},
      };
      // Only constraints the big host meets: any driver, no selector, pinned to it or unpinned.
      const fitting = vms.map((v) => ({ ...v, hostSelector: {}, host: v.host === "" ? "" : "big" }));
      return { hosts: [...hosts, big], vms: fitting, policy };
    });
    fc.assert(
      fc.property(bigArb, ({ hosts, vms, policy }) => {
        const { decisions } = scheduleBatch(hosts, vms, policy);
        for (const d of decisions) expect(d.placed, d.placed ? "" : d.reason).toBe(true);
      }),
      RUNS,
    );
  });

  it("(c) cordoned and not-ready hosts never receive VMs", () => {
    fc.assert(
      fc.property(caseArb, ({ hosts, vms, policy }) => {
        const { decisions, hosts: after } = scheduleBatch(hosts, vms, policy);
        const before = byId(hosts);
        for (const { hostId } of placedPairs(decisions, vms)) {
          const h = before.get(hostId)!;
          expect(h.ready && !h.cordoned).toBe(true);
        }
        for (const h of after) {
          if (!h.ready || h.cordoned) expect(h).toEqual(before.get(h.id));
        }
      }),
      RUNS,
    );
  });

  it("(d) pinned VMs land only on their host; selectors and drivers are honoured", () => {
    fc.assert(
      fc.property(caseArb, ({ hosts, vms, policy }) => {
        const { decisions } = scheduleBatch(hosts, vms, policy);
        const before = byId(hosts);
        for (const { vm, hostId } of placedPairs(decisions, vms)) {
          const h = before.get(hostId)!;
          if (vm.host !== "") expect(h.name).toBe(vm.host);
          if (vm.driver !== "") expect(h.drivers).toContain(vm.driver);
          for (const [k, v] of Object.entries(vm.hostSelector)) expect(h.labels[k]).toBe(v);
        }
      }),
      RUNS,
    );
  });

  it("(e) scheduleBatch does not mutate its inputs", () => {
    fc.assert(
      fc.property(caseArb, ({ hosts, vms, policy }) => {
        const hostsCopy = structuredClone(hosts);
        const vmsCopy = structuredClone(vms);
        // Frozen inputs make any write throw (ESM is strict mode), not just differ.
        const { hosts: after } = scheduleBatch(deepFreeze(hosts), deepFreeze(vms), policy);
        expect(hosts).toEqual(hostsCopy);
        expect(vms).toEqual(vmsCopy);
        for (const h of after) expect(Object.isFrozen(h)).toBe(false);
      }),
      RUNS,
    );
  });

  it("(f) the result is deterministic and independent of host order", () => {
    fc.assert(
      fc.property(caseArb, fc.nat(), ({ hosts, vms, policy }, seed) => {
        const first = scheduleBatch(hosts, vms, policy);
        expect(scheduleBatch(hosts, vms, policy)).toEqual(first);
        // Rotate the host list: ties break by name then id, never by position.
        const k = hosts.length === 0 ? 0 : seed % hosts.length;
        const rotated = [...hosts.slice(k), ...hosts.slice(0, k)];
        expect(scheduleBatch(rotated, vms, policy).decisions).toEqual(first.decisions);
      }),
      RUNS,
    );
  });

  it("a batch equals scheduleOne + applyPlacement step by step, and anti-affinity picks a host with fewest peers", () => {
    fc.assert(
      fc.property(caseArb, ({ hosts, vms, policy }) => {
        const { decisions, hosts: after } = scheduleBatch(hosts, vms, policy);
        let state = hosts;
        vms.forEach((vm, i) => {
          const d = scheduleOne(state, vm, policy);
          expect(d).toEqual(decisions[i]);
          if (!d.placed) return;
          const fit = filterHosts(state, vm).fit;
          if (vm.antiAffinityGroup !== "") {
            const peers = (h: HostView): number => h.groups[vm.antiAffinityGroup] ?? 0;
            const min = Math.min(...fit.map(peers));
            expect(peers(state.find((h) => h.id === d.hostId)!)).toBe(min);
          }
          state = state.map((h) => (h.id === d.hostId ? applyPlacement(h, vm) : h));
        });
        expect(after).toEqual(state);
      }),
      RUNS,
    );
  });

  it("a batch kept across lists and updated with each one's changed views decides as a new batch on that list; skipped hosts are chosen as if absent", () => {
    const stepArb = fc.record({
      vms: vmsArb,
      // Views replaced (same host, anything else new); the rest are the same objects as before.
      changes: fc.array(fc.record({ at: fc.nat(), view: hostArb("x") }), { maxLength: 4 }),
      skip: fc.subarray(NAMES),
    });
    fc.assert(
      fc.property(hostsArb, policyArb, fc.array(stepArb, { minLength: 1, maxLength: 4 }), (hosts0, policy, steps) => {
        const kept = new BatchScheduler(hosts0, policy);
        let hosts = hosts0;
        for (const st of steps) {
          const next = [...hosts];
          const changed = new Map<number, HostView>();
          for (const c of st.changes) {
            if (next.length === 0) break;
            const i = c.at % next.length;
            next[i] = { ...c.view, id: next[i]!.id, name: next[i]!.name };
            changed.set(i, next[i]!);
          }
          kept.update(changed);
          const fresh = new BatchScheduler(next, policy);
          const skip = new Set(st.skip.map((n) => `id-${n}`));
          const without = new BatchScheduler(next.filter((h) => !skip.has(h.id)), policy);
          const chosen = (d: Decision) => (d.placed && !skip.has(d.hostId) ? d.hostId : undefined);
          for (const vm of st.vms) {
            const a = kept.decide(vm, skip);
            expect(a).toEqual(fresh.decide(vm, skip));
            expect(chosen(a)).toEqual(chosen(without.decide(vm)));
          }
          expect(kept.hosts).toEqual(fresh.hosts);
          hosts = next;
        }
      }),
      RUNS,
    );
  });

  it("releasePlacement undoes applyPlacement and never goes negative", () => {
    fc.assert(
      fc.property(hostArb("h0"), vmArb("v"), (h, vm) => {
        expect(releasePlacement(applyPlacement(h, vm), vm)).toEqual(h);
        let r = h;
        for (let i = 0; i < 8; i++) r = releasePlacement(r, vm);
        expect(Math.min(r.allocated.vcpus, r.allocated.memoryMb, r.allocated.diskGb, r.vmCount)).toBeGreaterThanOrEqual(0);
        for (const n of [...Object.values(r.groups), ...Object.values(r.networks)]) expect(n).toBeGreaterThan(0);
      }),
      RUNS,
    );
  });

  it("anyHostFits answers the same from any starting hint, and the hint it leaves names a host that fits", () => {
    fc.assert(
      fc.property(hostsArb, vmArb("v"), fc.nat({ max: 10 }), (hosts, vm, at) => {
        const plain = anyHostFits(hosts, vm);
        expect(plain).toBe(filterHosts(hosts, vm).fit.length > 0);
        const hint = { at };
        expect(anyHostFits(hosts, vm, hint)).toBe(plain);
        if (plain) expect(filterHosts([hosts[hint.at]!], vm).fit).toHaveLength(1);
        else expect(hint.at).toBe(at);
      }),
      RUNS,
    );
  });
});
