import { describe, expect, it } from "vitest";
import fc from "fast-check";
import type { VmStatusReport } from "../../gen/noid/v1/agent.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import type { VmCreateSpec, VmRunState, VmRuntime } from "../../agent/drivers/driver.js";
import { type Action, plan } from "../../agent/reconcile/plan.js";
import type { DesiredRunState, DesiredVm } from "../../agent/reconcile/types.js";

const spec = (id: string): VmCreateSpec => ({
  id,
  vcpus: 1,
  memoryMb: 128,
  diskGb: 1,
  image: "",
  net: { mac: "02:00:00:00:00:01", ip: "10.0.0.5" },
});
const want = (id: string, state: DesiredRunState, driver = ""): DesiredVm => ({ id, state, driver, spec: spec(id) });
const have = (id: string, state: VmRunState, reason = ""): VmRuntime => ({
  id,
  driver: "fake",
  state,
  reason,
  spec: spec(id),
  hostPort: `nv-${id}`,
});
const report = (vmId: string, phase: VmPhase, extra: Partial<VmStatusReport> = {}): VmStatusReport => ({
  vmId,
  phase,
  reason: "",
  ip: "10.0.0.5",
  mac: "02:00:00:00:00:01",
  destroyed: false,
  ...extra,
});
const kinds = (as: Action[]): string[] => as.map((a) => (a.kind === "report" ? `report:${VmPhase[a.status.phase]}${a.status.destroyed ? ":destroyed" : ""}` : a.kind === "destroy" ? `destroy:${a.reason}` : a.kind));

describe("agent plan", () => {
  const table: [string, DesiredVm[], VmRuntime[], string[]][] = [
    ["nothing to do", [], [], []],
    ["running wanted, absent -> create", [want("a", "running")], [], ["create"]],
    ["running wanted, stopped -> start", [want("a", "running")], [have("a", "stopped")], ["start"]],
    ["running wanted, running -> report RUNNING", [want("a", "running")], [have("a", "running")], ["report:VM_PHASE_RUNNING"]],
    ["running wanted, failed -> destroy its remains", [want("a", "running")], [have("a", "failed", "init exited")], ["destroy:failed"]],
    ["stopped wanted, absent -> create (not start)", [want("a", "stopped")], [], ["create"]],
    ["stopped wanted, running -> stop", [want("a", "stopped")], [have("a", "running")], ["stop"]],
    ["stopped wanted, stopped -> report STOPPED", [want("a", "stopped")], [have("a", "stopped")], ["report:VM_PHASE_STOPPED"]],
    ["deleted, present -> destroy", [want("a", "deleted")], [have("a", "running")], ["destroy:deleted"]],
    ["deleted, absent -> report destroyed", [want("a", "deleted")], [], ["report:VM_PHASE_STOPPED:destroyed"]],
    ["not desired -> destroy orphan", [], [have("z", "running")], ["destroy:orphan"]],
    [
      "destroys come first, reports last",
      [want("b", "running"), want("c", "running"), want("d", "stopped")],
      [have("a", "running"), have("c", "running"), have("d", "running")],
      ["destroy:orphan", "stop", "create", "report:VM_PHASE_RUNNING"],
    ],
  ];
  it.each(table)("%s", (_name, desired, observed, expected) => {
    expect(kinds(plan(desired, observed))).toEqual(expected);
  });

  it("does not repeat a report that was already sent, so the plan becomes empty", () => {
    const reported = new Map([["a", report("a", VmPhase.VM_PHASE_RUNNING)]]);
    expect(plan([want("a", "running")], [have("a", "running")], reported)).toEqual([]);
    const destroyed = new Map([["a", report("a", VmPhase.VM_PHASE_STOPPED, { ip: "", mac: "", destroyed: true })]]);
    expect(plan([want("a", "deleted")], [], destroyed)).toEqual([]);
  });

  it("reports again when the status changed (e.g. RUNNING -> STOPPED)", () => {
    const reported = new Map([["a", report("a", VmPhase.VM_PHASE_RUNNING)]]);
    expect(kinds(plan([want("a", "stopped")], [have("a", "stopped")], reported))).toEqual(["report:VM_PHASE_STOPPED"]);
  });

  it("create carries the desired spec; failed destroy carries the observed reason", () => {
    const [c] = plan([want("a", "running")], []);
    expect(c).toEqual({ kind: "create", vmId: "a", driver: "", spec: spec("a") });
    const [d] = plan([want("a", "running")], [have("a", "failed", "netns gone")]);
    expect(d).toMatchObject({ kind: "destroy", reason: "failed", observedReason: "netns gone" });
  });

  it("creates on the driver the VM names, else the first; every other step goes to the driver that has it", () => {
    const drivers = ["sandbox", "qemu"];
    expect(plan([want("a", "running")], [], new Map(), { drivers })).toEqual([{ kind: "create", vmId: "a", driver: "sandbox", spec: spec("a") }]);
    expect(plan([want("a", "running", "qemu")], [], new Map(), { drivers })[0]).toMatchObject({ kind: "create", driver: "qemu" });
    const inQemu = { ...have("a", "running"), driver: "qemu" };
    expect(plan([want("a", "stopped")], [inQemu], new Map(), { drivers })[0]).toMatchObject({ kind: "stop", driver: "qemu" });
    expect(plan([], [inQemu], new Map(), { drivers })[0]).toMatchObject({ kind: "destroy", driver: "qemu", reason: "orphan" });
  });

  it("an unknown driver is FAILED with a reason, not an action", () => {
    const [a] = plan([want("a", "running", "firecracker")], [], new Map(), { drivers: ["sandbox", "qemu"] });
    expect(a).toMatchObject({ kind: "report", status: { phase: VmPhase.VM_PHASE_FAILED, reason: 'driver "firecracker" is not enabled on this host (enabled: sandbox, qemu)' } });
  });

  it("a VM given up on: its remains are destroyed, then FAILED is reported once; deletion still proceeds", () => {
    const failed = new Map([["a", "start: no boot"]]);
    expect(plan([want("a", "running")], [have("a", "stopped")], new Map(), { failed })).toEqual([
      { kind: "destroy", vmId: "a", driver: "fake", reason: "failed", observedReason: "start: no boot" },
    ]);
    const [r] = plan([want("a", "running")], [], new Map(), { failed });
    expect(r).toMatchObject({ kind: "report", status: { phase: VmPhase.VM_PHASE_FAILED, reason: "start: no boot", ip: "10.0.0.5" } });
    const said = new Map([["a", (r as Extract<Action, { kind: "report" }>).status]]);
    expect(plan([want("a", "running")], [], said, { failed })).toEqual([]);
    expect(kinds(plan([want("a", "deleted")], [], new Map(), { failed }))).toEqual(["report:VM_PHASE_STOPPED:destroyed"]);
  });

  it("property: at most one action per VM, and every VM not desired is destroyed", () => {
    const ids = fc.constantFrom("a", "b", "c", "d", "e");
    const desiredArb = fc.uniqueArray(
      fc.record({ id: ids, state: fc.constantFrom<DesiredRunState>("running", "stopped", "deleted") }),
      { selector: (r) => r.id },
    );
    const observedArb = fc.uniqueArray(
      fc.record({ id: ids, state: fc.constantFrom<VmRunState>("running", "stopped", "failed") }),
      { selector: (r) => r.id },
    );
    fc.assert(
      fc.property(desiredArb, observedArb, (ds, os) => {
        const actions = plan(ds.map((d) => want(d.id, d.state)), os.map((o) => have(o.id, o.state)));
        const per = new Map<string, number>();
        for (const a of actions) per.set(a.vmId, (per.get(a.vmId) ?? 0) + 1);
        expect([...per.values()].every((n) => n === 1)).toBe(true);
        for (const o of os) {
          if (!ds.some((d) => d.id === o.id)) {
            expect(actions).toContainEqual({ kind: "destroy", vmId: o.id, driver: "fake", reason: "orphan" });
          }
        }
        // Nothing is ever started unless it is desired running.
        for (const a of actions) if (a.kind === "start") expect(ds.find((d) => d.id === a.vmId)?.state).toBe("running");
      }),
    );
  });

  it("property: never creates on a driver the host does not run, nor creates or starts a VM given up on", () => {
    const ids = fc.constantFrom("a", "b", "c", "d");
    const drivers = ["sandbox", "qemu"];
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.record({ id: ids, state: fc.constantFrom<DesiredRunState>("running", "stopped", "deleted"), driver: fc.constantFrom("", "sandbox", "qemu", "firecracker") }), { selector: (r) => r.id }),
        fc.uniqueArray(fc.record({ id: ids, state: fc.constantFrom<VmRunState>("running", "stopped", "failed"), driver: fc.constantFrom("sandbox", "qemu") }), { selector: (r) => r.id }),
        fc.subarray(["a", "b", "c", "d"]),
        (ds, os, gaveUp) => {
          const failed = new Map(gaveUp.map((id) => [id, "boom"]));
          const actions = plan(
            ds.map((d) => want(d.id, d.state, d.driver)),
            os.map((o) => ({ ...have(o.id, o.state), driver: o.driver })),
            new Map(),
            { drivers, failed },
          );
          for (const a of actions) {
            if (a.kind === "create") expect(drivers).toContain(a.driver);
            if (a.kind === "create" || a.kind === "start") expect(failed.has(a.vmId)).toBe(false);
            const o = os.find((x) => x.id === a.vmId);
            if (o && a.kind !== "report") expect(a.driver).toBe(o.driver); // a VM's driver never changes
          }
        },
      ),
    );
  });
});
