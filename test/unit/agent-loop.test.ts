import { describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { NoidError } from "../../common/errors.js";
import type { VmStatusReport } from "../../gen/noid/v1/agent.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import type { Capabilities, HypervisorDriver, VmCreateSpec, VmRuntime } from "../../agent/drivers/driver.js";
import { ReconcileLoop } from "../../agent/reconcile/loop.js";
import type { DesiredRunState, DesiredVm } from "../../agent/reconcile/types.js";

/** An in-memory driver: the adapter-with-a-fake layer for the loop. */
class FakeDriver implements HypervisorDriver {
  readonly name = "fake";
  vms = new Map<string, VmRuntime>();
  calls: string[] = [];
  failCreate = new Set<string>();
  capabilities(): Capabilities {
    return { exec: false, checkpoint: false, restore: false, resourceLimits: false, limitsReason: "fake" };
  }
  async create(spec: VmCreateSpec): Promise<VmRuntime> {
    this.calls.push(`create ${spec.id}`);
    if (this.failCreate.has(spec.id)) throw new NoidError("INTERNAL", "no space left");
    const vm: VmRuntime = { id: spec.id, driver: this.name, state: "stopped", reason: "", spec, hostPort: "p" };
    this.vms.set(spec.id, vm);
    return vm;
  }
  private set(id: string, state: VmRuntime["state"]): VmRuntime {
    const vm = this.vms.get(id);
    if (!vm) throw new NoidError("NOT_FOUND", id);
    vm.state = state;
    return vm;
  }
  async start(id: string): Promise<VmRuntime> {
    this.calls.push(`start ${id}`);
    return this.set(id, "running");
  }
  async stop(id: string): Promise<VmRuntime> {
    this.calls.push(`stop ${id}`);
    return this.set(id, "stopped");
  }
  async destroy(id: string): Promise<void> {
    this.calls.push(`destroy ${id}`);
    this.vms.delete(id);
  }
  async inspect(id: string): Promise<VmRuntime | undefined> {
    return this.vms.get(id);
  }
  async list(): Promise<VmRuntime[]> {
    return [...this.vms.values()].map((v) => ({ ...v }));
  }
  async recover(): Promise<VmRuntime[]> {
    return this.list();
  }
}

const spec = (id: string): VmCreateSpec => ({ id, vcpus: 1, memoryMb: 64, diskGb: 1, image: "", net: { mac: "02:00:00:00:00:0a", ip: "" } });
const want = (id: string, state: DesiredRunState): DesiredVm => ({ id, state, spec: spec(id) });

function setup(now = () => 0): { driver: FakeDriver; loop: ReconcileLoop; reports: VmStatusReport[]; phases: (id: string) => string[] } {
  const driver = new FakeDriver();
  const reports: VmStatusReport[] = [];
  const loop = new ReconcileLoop({ driver, onStatus: (r) => reports.push(r), logger: silentLogger(), now, retryMs: 1000 });
  const phases = (id: string): string[] =>
    reports.filter((r) => r.vmId === id).map((r) => VmPhase[r.phase].replace("VM_PHASE_", "") + (r.destroyed ? "+destroyed" : ""));
  return { driver, loop, reports, phases };
}

describe("agent reconcile loop", () => {
  it("brings a VM to RUNNING, then STOPPED, then destroyed, reporting each transition once", async () => {
    const { driver, loop, phases } = setup();
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    expect(driver.calls).toEqual(["create a", "start a"]);
    expect(phases("a")).toEqual(["CREATING", "RUNNING"]);

    loop.upsert(want("a", "stopped"));
    await loop.idle();
    expect(phases("a")).toEqual(["CREATING", "RUNNING", "STOPPING", "STOPPED"]);

    loop.upsert(want("a", "deleted"));
    await loop.idle();
    expect(phases("a")).toEqual(["CREATING", "RUNNING", "STOPPING", "STOPPED", "STOPPED+destroyed"]);
    expect(driver.vms.size).toBe(0);
    // Converged: another pass does nothing and says nothing.
    const again = await loop.pass();
    expect(again).toMatchObject({ converged: true, applied: [] });
  });

  it("does nothing before the first desired set, then destroys orphans", async () => {
    const { driver, loop, phases } = setup();
    await driver.create(spec("old"));
    await driver.start("old");
    driver.calls = [];
    const adopted = await loop.start();
    expect(adopted.map((v) => v.id)).toEqual(["old"]);
    loop.kick();
    await loop.idle();
    expect(driver.calls).toEqual([]);
    loop.setDesired([]);
    await loop.idle();
    expect(driver.calls).toEqual(["destroy old"]);
    expect(phases("old")).toEqual(["STOPPED+destroyed"]);
    await loop.stop();
  });

  it("adopts a running VM without restarting it", async () => {
    const { driver, loop, phases } = setup();
    await driver.create(spec("a"));
    await driver.start("a");
    driver.calls = [];
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    expect(driver.calls).toEqual([]);
    expect(phases("a")).toEqual(["RUNNING"]);
  });

  it("replaces a failed VM, reporting FAILED with the reason first", async () => {
    const { driver, loop, phases, reports } = setup();
    await driver.create(spec("a"));
    driver.vms.get("a")!.state = "failed";
    driver.vms.get("a")!.reason = "init process 42 exited";
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    expect(phases("a")).toEqual(["FAILED", "CREATING", "RUNNING"]);
    expect(reports[0]?.reason).toBe("init process 42 exited");
  });

  it("reports FAILED with the error and backs off instead of retrying at once", async () => {
    let t = 0;
    const { driver, loop, phases, reports } = setup(() => t);
    driver.failCreate.add("a");
    loop.setDesired([want("a", "running"), want("b", "running")]);
    await loop.idle();
    expect(phases("a")).toEqual(["CREATING", "FAILED"]);
    expect(reports.find((r) => r.phase === VmPhase.VM_PHASE_FAILED)?.reason).toMatch(/create: no space left/);
    expect(phases("b")).toEqual(["CREATING", "RUNNING"]); // one VM's failure does not block others
    expect(driver.calls.filter((c) => c === "create a")).toHaveLength(1);

    loop.kick();
    await loop.idle();
    expect(driver.calls.filter((c) => c === "create a")).toHaveLength(1); // still backing off

    t = 1500;
    driver.failCreate.clear();
    loop.kick();
    await loop.idle();
    expect(phases("a")).toEqual(["CREATING", "FAILED", "CREATING", "RUNNING"]);
  });

  it("retries at once when the desired state changes after a failure", async () => {
    const { driver, loop } = setup(() => 0);
    driver.failCreate.add("a");
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    driver.failCreate.clear();
    loop.upsert(want("a", "stopped"));
    await loop.idle();
    expect(driver.vms.get("a")?.state).toBe("stopped");
  });

  it("a VM removed from the host is destroyed; a new snapshot replaces the desired set", async () => {
    const { driver, loop } = setup();
    loop.setDesired([want("a", "running"), want("b", "running")]);
    await loop.idle();
    loop.remove("a");
    await loop.idle();
    expect([...driver.vms.keys()]).toEqual(["b"]);
    loop.setDesired([want("c", "stopped")]);
    await loop.idle();
    expect([...driver.vms.entries()].map(([id, v]) => `${id}:${v.state}`)).toEqual(["c:stopped"]);
    expect(loop.lastReports().map((r) => r.vmId)).toEqual(["c"]);
  });
});
