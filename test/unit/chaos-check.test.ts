// The chaos judge must be able to fail: each invariant broken on purpose is reported, and a clean history is not.
import { describe, expect, it } from "vitest";
import { checkHistory, countByKind, viewDifferences, type ChaosHistory, type ClusterView } from "../../chaos/check.js";
import { movedVms, notRescheduled, topErrors } from "../../chaos/run.js";
import { summarize } from "../../chaos/summary.js";

const SIZE = { vcpus: 1, memoryMb: 64 };
const vm = (id: string, host: string, ip: string) => ({ id, name: `n-${id}`, hostId: host, ip, networkId: "net1", resources: SIZE });

function clean(): ChaosHistory {
  return {
    calls: [
      { op: "create", name: "n-a", vmId: "a", start: 0, end: 10, ok: true, ip: "10.0.0.2", networkId: "net1" },
      { op: "create", name: "n-b", vmId: "b", start: 5, end: 15, ok: true, ip: "10.0.0.3", networkId: "net1" },
      { op: "create", name: "n-x", start: 6, end: 16, ok: false, error: "UNAVAILABLE" },
      { op: "create", name: "n-c", vmId: "c", start: 20, end: 30, ok: true, ip: "10.0.0.4", networkId: "net1" },
      { op: "destroy", name: "n-c", vmId: "c", start: 40, end: 50, ok: true },
      // c's address given again after c was being destroyed: allowed.
      { op: "create", name: "n-d", vmId: "d", start: 60, end: 70, ok: true, ip: "10.0.0.4", networkId: "net1" },
    ],
    running: [
      { at: 20, host: "h1", running: ["a"] },
      { at: 25, host: "h2", running: ["b"] },
      { at: 30, host: "h1", running: [] },
      // a moved to h2 after h1 stopped it.
      { at: 35, host: "h2", running: ["a", "b"] },
      { at: 80, host: "h1", running: ["d"] },
    ],
    allocs: [{ at: 20, host: "h1", allocated: { vcpus: 2, memoryMb: 128 } }],
    final: {
      vms: [vm("a", "h2", "10.0.0.2"), vm("b", "h2", "10.0.0.3"), vm("d", "h1", "10.0.0.4")],
      assignments: [
        { host: "h2", vmId: "a" },
        { host: "h2", vmId: "b" },
        { host: "h1", vmId: "d" },
      ],
      capacity: { h1: { vcpus: 2, memoryMb: 1024 }, h2: { vcpus: 2, memoryMb: 1024 } },
    },
    sizes: { a: SIZE, b: SIZE, c: SIZE, d: SIZE },
  };
}

describe("chaos checker", () => {
  it("finds nothing wrong in a clean history (unacknowledged creates and moves one after the other are fine)", () => {
    expect(checkHistory(clean())).toEqual([]);
    expect(movedVms(clean().running)).toBe(1);
  });

  it("reports an acknowledged VM that is gone", () => {
    const h = clean();
    h.final.vms = h.final.vms.filter((v) => v.id !== "b");
    h.final.assignments = h.final.assignments.filter((a) => a.vmId !== "b");
    const v = checkHistory(h);
    expect(v.map((x) => x.kind)).toEqual(["lost"]);
    expect(v[0]!.detail).toContain("n-b");
  });

  it("reports an acknowledged destroy that did not stick", () => {
    const h = clean();
    h.final.vms.push(vm("c", "h1", "10.0.0.9"));
    expect(checkHistory(h).map((x) => x.kind)).toEqual(["resurrected"]);
  });

  it("reports a VM running on two hosts at once, and one assigned twice", () => {
    const h = clean();
    h.running.splice(2, 1); // h1 never stopped a before h2 ran it
    expect(checkHistory(h).map((x) => x.kind)).toEqual(["two-hosts"]);
    const g = clean();
    g.final.assignments.push({ host: "h1", vmId: "b" });
    expect(checkHistory(g).map((x) => x.kind)).toEqual(["two-hosts"]);
  });

  it("reports an address held twice: in the final state, and given again while its holder lived", () => {
    const h = clean();
    h.final.vms[1] = { ...h.final.vms[1]!, ip: "10.0.0.2" };
    expect(checkHistory(h).map((x) => x.kind)).toEqual(["ip-twice"]);
    const g = clean();
    g.calls.push({ op: "create", name: "n-e", vmId: "e", start: 90, end: 95, ok: true, ip: "10.0.0.2", networkId: "net1" });
    g.calls.push({ op: "destroy", name: "n-e", vmId: "e", start: 96, end: 97, ok: true });
    expect(checkHistory(g).map((x) => x.kind)).toEqual(["ip-twice"]);
  });

  it("reports capacity exceeded in a sampled allocation or in what a host ran", () => {
    const h = clean();
    h.allocs.push({ at: 50, host: "h2", allocated: { vcpus: 3, memoryMb: 192 } });
    expect(checkHistory(h).map((x) => x.kind)).toEqual(["over-capacity"]);
    const g = clean();
    g.running.push({ at: 90, host: "h1", running: ["c", "d", "x1"] });
    g.sizes.x1 = { vcpus: 1, memoryMb: 64 };
    expect(checkHistory(g).map((x) => x.kind)).toEqual(["over-capacity"]);
  });

  it("reports a reschedule-policy VM still on a host lost past its grace, not one that moved or keeps", () => {
    const h = clean();
    // a and b ran on h2 before it was cut off; only a is reschedule-policy.
    const lostHost = { name: "h2", ranBefore: ["a", "b"] };
    const v = notRescheduled(lostHost, new Set(["a"]), h.final);
    expect(v).toEqual([{ kind: "not-rescheduled", detail: expect.stringContaining("n-a") }]);
    // a moved to h1: nothing to report; no long cut: nothing to check.
    const moved = { ...h.final, assignments: [{ host: "h1", vmId: "a" }, { host: "h2", vmId: "b" }] };
    expect(notRescheduled(lostHost, new Set(["a"]), moved)).toEqual([]);
    expect(notRescheduled(undefined, new Set(["a"]), h.final)).toEqual([]);
    expect(countByKind(v)["not-rescheduled"]).toBe(1);
  });

  it("groups refused calls by message with names and ids stripped, most frequent first", () => {
    const calls = [
      { op: "create" as const, name: "r1-5", start: 0, end: 1, ok: false, error: 'no free address for "r1-5"' },
      { op: "create" as const, name: "r1-6", start: 0, end: 1, ok: false, error: 'no free address for "r1-6"' },
      { op: "destroy" as const, name: "r1-res2", start: 0, end: 1, ok: false, error: 'VM "r1-res2" not found' },
      { op: "create" as const, name: "r1-7", start: 0, end: 1, ok: true },
    ];
    expect(topErrors(calls)).toEqual([
      ['create: no free address for "<vm>"', 2],
      ['destroy: VM "<vm>" not found', 1],
    ]);
  });

  it("the summary's last line counts runs, faults and violations", () => {
    const h = clean();
    h.final.vms = [];
    const violations = checkHistory(h);
    expect(countByKind(violations).lost).toBe(3);
    const s = summarize([
      { scenario: "agent-kill", faults: 1, calls: 6, acked: 5, violations, moved: 0, settleMs: 10, detail: "", errors: [] },
      { scenario: "leader-kill", faults: 1, calls: 6, acked: 5, violations: [], moved: 0, settleMs: 10, failoverMs: 1200, detail: "", errors: [] },
    ]);
    expect(s.last).toBe("chaos: 2 runs, 2 faults, 3 violations");
    expect(s.text).toContain("failover");
  });
});

describe("replica views against etcd", () => {
  const truth: ClusterView = { hosts: { h0: { ready: true, vmCount: 2 }, h1: { ready: true, vmCount: 0 } }, vms: { a: { phase: "VM_PHASE_RUNNING", host: "h0" }, b: { phase: "VM_PHASE_RUNNING", host: "h0" } } };
  it("finds nothing when a replica shows what etcd holds", () => {
    expect(viewDifferences(structuredClone(truth), truth)).toEqual([]);
  });
  it("names each host and VM a stale replica shows differently, missing or extra", () => {
    const stale: ClusterView = { hosts: { h0: { ready: true, vmCount: 1 }, h1: { ready: false, vmCount: 0 } }, vms: { a: { phase: "VM_PHASE_CREATING", host: "h0" }, c: { phase: "VM_PHASE_RUNNING", host: "h1" } } };
    const d = viewDifferences(stale, truth);
    expect(d).toHaveLength(5);
    expect(d).toContain('host h1: shows {"ready":false,"vmCount":0}, etcd {"ready":true,"vmCount":0}');
    expect(d).toContain('VM b: shows absent, etcd {"phase":"VM_PHASE_RUNNING","host":"h0"}');
    expect(d).toContain('VM c: shows {"phase":"VM_PHASE_RUNNING","host":"h1"}, etcd absent');
    expect(viewDifferences(stale, truth, 2)).toEqual([d[0], d[1], "and 3 more"]);
  });
});
