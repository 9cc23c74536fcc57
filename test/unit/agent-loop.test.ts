import { describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { NoidError } from "../../common/errors.js";
import type { VmStatusReport } from "../../gen/noid/v1/agent.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import type { Capabilities, HypervisorDriver, VmCreateSpec, VmRuntime } from "../../agent/drivers/driver.js";
import { DriverSet } from "../../agent/drivers/driver-set.js";
import { ReconcileLoop } from "../../agent/reconcile/loop.js";
import type { DesiredRunState, DesiredVm } from "../../agent/reconcile/types.js";

/** An in-memory driver: the adapter-with-a-fake layer for the loop. */
class FakeDriver implements HypervisorDriver {
  vms = new Map<string, VmRuntime>();
  calls: string[] = [];
  failCreate = new Set<string>();
  failStart = new Set<string>();
  constructor(readonly name = "fake") {}
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
    if (this.failStart.has(id)) throw new NoidError("FAILED_PRECONDITION", "guest did not boot");
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
const want = (id: string, state: DesiredRunState, driver = ""): DesiredVm => ({ id, state, driver, spec: spec(id) });

function setup(
  now = () => 0,
  more: FakeDriver[] = [],
): { driver: FakeDriver; loop: ReconcileLoop; reports: VmStatusReport[]; phases: (id: string) => string[] } {
  const driver = new FakeDriver();
  const reports: VmStatusReport[] = [];
  const drivers = new DriverSet([driver, ...more]);
  const loop = new ReconcileLoop({ drivers, onStatus: (r) => reports.push(r), logger: silentLogger(), now, retryMs: 1000 });
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

  it("a VM that moves here is created, then restored by the restore hook instead of started; a failed restore is FAILED", async () => {
    const driver = new FakeDriver();
    const reports: VmStatusReport[] = [];
    const restored: string[] = [];
    const loop = new ReconcileLoop({
      drivers: new DriverSet([driver]),
      onStatus: (r) => reports.push(r),
      logger: silentLogger(),
      restore: async (a, vm) => {
        restored.push(`${a.vmId} ${a.incoming.migrationId} ${vm.spec.net.mac}`);
        if (a.incoming.migrationId === "bad") throw new NoidError("FAILED_PRECONDITION", "checksum mismatch");
        driver.vms.get(a.vmId)!.state = "running";
      },
    });
    loop.setDesired([{ ...want("m", "running"), incoming: { migrationId: "0123456789abcdef", sha256: "" } }, { ...want("x", "running"), incoming: { migrationId: "bad", sha256: "" } }]);
    await loop.idle();
    expect(driver.calls.filter((c) => c.startsWith("start"))).toEqual([]);
    expect(restored.sort()).toEqual(["m 0123456789abcdef 02:00:00:00:00:0a", "x bad 02:00:00:00:00:0a"]);
    const phasesOf = (id: string) => reports.filter((r) => r.vmId === id).map((r) => VmPhase[r.phase].replace("VM_PHASE_", ""));
    expect(phasesOf("m")).toEqual(["CREATING", "RUNNING"]);
    expect(phasesOf("x")).toEqual(["CREATING", "FAILED"]);
    expect(reports.find((r) => r.vmId === "x" && r.phase === VmPhase.VM_PHASE_FAILED)?.reason).toMatch(/restore: checksum mismatch/);
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

  it("a VM that died is reported FAILED with the reason, its remains removed, and it is not restarted", async () => {
    const { driver, loop, phases, reports } = setup();
    await driver.create(spec("a"));
    driver.vms.get("a")!.state = "failed";
    driver.vms.get("a")!.reason = "init process 42 exited";
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    expect(phases("a")).toEqual(["FAILED"]);
    expect(reports[0]?.reason).toBe("init process 42 exited");
    expect(driver.vms.has("a")).toBe(false);
    expect(await loop.pass()).toMatchObject({ converged: true, applied: [] });
  });

  it("a failed create or start is FAILED with the error; other VMs go on; nothing is left behind or retried", async () => {
    let t = 0;
    const { driver, loop, phases, reports } = setup(() => t);
    driver.failCreate.add("a");
    driver.failStart.add("c");
    loop.setDesired([want("a", "running"), want("b", "running"), want("c", "running")]);
    await loop.idle();
    expect(phases("a")).toEqual(["CREATING", "FAILED"]);
    expect(reports.find((r) => r.vmId === "a" && r.phase === VmPhase.VM_PHASE_FAILED)?.reason).toBe("create: no space left");
    expect(phases("b")).toEqual(["CREATING", "RUNNING"]); // one VM's failure does not block others
    expect(phases("c")).toEqual(["CREATING", "FAILED"]);
    expect(reports.find((r) => r.vmId === "c" && r.phase === VmPhase.VM_PHASE_FAILED)?.reason).toBe("start: guest did not boot");
    expect([...driver.vms.keys()]).toEqual(["b"]); // c's remains were destroyed
    t = 3_600_000;
    loop.kick();
    await loop.idle();
    expect(driver.calls.filter((c) => c === "create a" || c === "create c")).toHaveLength(2);
  });

  it("backs off a destroy that fails instead of retrying at once", async () => {
    let t = 0;
    const { driver, loop } = setup(() => t);
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    let fail = true;
    const destroy = driver.destroy.bind(driver);
    driver.destroy = async (id) => {
      driver.calls.push(`destroy ${id}`);
      if (fail) throw new NoidError("INTERNAL", "busy");
      return destroy(id);
    };
    loop.upsert(want("a", "deleted"));
    await loop.idle();
    loop.kick();
    await loop.idle();
    expect(driver.calls.filter((c) => c === "destroy a")).toHaveLength(1);
    t = 1500;
    fail = false;
    loop.kick();
    await loop.idle();
    expect(driver.vms.size).toBe(0);
  });

  it("a create that finds something not ready yet (UNAVAILABLE) is retried after a backoff, never reported FAILED", async () => {
    let t = 0;
    const { driver, loop, phases } = setup(() => t);
    let notReady = true;
    const create = driver.create.bind(driver);
    driver.create = async (s) => {
      if (notReady) {
        driver.calls.push(`create ${s.id}`);
        throw new NoidError("UNAVAILABLE", "network of VM a unavailable: the mesh view does not have it yet");
      }
      return create(s);
    };
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    loop.kick();
    await loop.idle();
    expect(driver.calls).toEqual(["create a"]); // not again before the backoff
    t = 1500;
    notReady = false;
    loop.kick();
    await loop.idle();
    expect(driver.vms.get("a")?.state).toBe("running");
    expect(phases("a")).not.toContain("FAILED");
    expect(phases("a").at(-1)).toBe("RUNNING");
  });

  it("runs each VM on the driver it names, the first driver by default, and fails an unknown one", async () => {
    const qemu = new FakeDriver("qemu");
    const { driver, loop, phases, reports } = setup(() => 0, [qemu]);
    loop.setDesired([want("a", "running"), want("b", "running", "qemu"), want("c", "running", "firecracker")]);
    await loop.idle();
    expect([...driver.vms.keys()]).toEqual(["a"]);
    expect([...qemu.vms.keys()]).toEqual(["b"]);
    expect(phases("c")).toEqual(["FAILED"]);
    expect(reports.find((r) => r.vmId === "c")?.reason).toBe('driver "firecracker" is not enabled on this host (enabled: fake, qemu)');
    // Stop and destroy go to the driver that has the VM.
    loop.upsert(want("b", "stopped", "qemu"));
    await loop.idle();
    expect(qemu.vms.get("b")?.state).toBe("stopped");
    loop.remove("b");
    await loop.idle();
    expect(qemu.calls).toEqual(["create b", "start b", "stop b", "destroy b"]);
    expect(driver.calls).toEqual(["create a", "start a"]);
  });

  it("a slow start (a booting guest) is in flight: other VMs go on, and the VM is reported when it is up", async () => {
    const qemu = new FakeDriver("qemu");
    let boot!: () => void;
    const booted = new Promise<void>((r) => (boot = r));
    const start = qemu.start.bind(qemu);
    let starts = 0;
    qemu.start = async (id) => {
      starts++;
      await booted;
      return start(id);
    };
    const { driver, loop, phases } = setup(() => 0, [qemu]);
    loop.setDesired([want("q", "running", "qemu")]);
    await new Promise((r) => setTimeout(r, 20));
    expect(phases("q")).toEqual(["CREATING"]);
    loop.upsert(want("s", "running"));
    await new Promise((r) => setTimeout(r, 20));
    expect(driver.vms.get("s")?.state).toBe("running"); // not held up by q's boot
    expect(phases("s")).toEqual(["CREATING", "RUNNING"]);
    loop.kick(); // a resync while q boots
    await new Promise((r) => setTimeout(r, 20));
    expect(starts).toBe(1); // one start in flight, not one per pass
    boot();
    await loop.idle();
    expect(phases("q")).toEqual(["CREATING", "RUNNING"]);
    expect(qemu.calls).toEqual(["create q", "start q"]);
    await loop.stop();
  });

  it("a retired driver (no longer enabled) keeps managing its VMs but gets no new ones", async () => {
    const driver = new FakeDriver();
    const old = new FakeDriver("qemu");
    await old.create(spec("a"));
    await old.start("a");
    old.calls = [];
    const reports: VmStatusReport[] = [];
    const loop = new ReconcileLoop({ drivers: new DriverSet([driver], [old]), onStatus: (r) => reports.push(r), logger: silentLogger() });
    expect((await loop.start()).map((v) => v.id)).toEqual(["a"]);
    loop.setDesired([want("a", "running", "qemu"), want("b", "running", "qemu")]);
    await loop.idle();
    expect(old.calls).toEqual([]); // a runs on, untouched
    expect(reports.find((r) => r.vmId === "a")?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    expect(reports.find((r) => r.vmId === "b")).toMatchObject({ phase: VmPhase.VM_PHASE_FAILED, reason: 'driver "qemu" is not enabled on this host (enabled: fake)' });
    loop.remove("a");
    await loop.idle();
    expect(old.calls).toEqual(["destroy a"]);
    await loop.stop();
  });

  it("a VM keeps the driver that has it, whatever the default", async () => {
    const qemu = new FakeDriver("qemu");
    const { driver, loop } = setup(() => 0, [qemu]);
    await qemu.create(spec("a")); // left by an agent whose default was qemu
    qemu.calls = [];
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    expect(qemu.calls).toEqual(["start a"]);
    expect(driver.calls).toEqual([]);
  });

  it("tries again when the desired state changes after a failure, or the VM comes back after removal", async () => {
    const { driver, loop } = setup(() => 0);
    driver.failCreate.add("a");
    loop.setDesired([want("a", "running")]);
    await loop.idle();
    driver.failCreate.clear();
    loop.upsert(want("a", "stopped"));
    await loop.idle();
    expect(driver.vms.get("a")?.state).toBe("stopped");

    driver.failStart.add("a");
    loop.upsert(want("a", "running"));
    await loop.idle();
    expect(driver.vms.has("a")).toBe(false);
    driver.failStart.clear();
    loop.remove("a"); // the coordinator unassigned it, then placed it here again
    loop.upsert(want("a", "running"));
    await loop.idle();
    expect(driver.vms.get("a")?.state).toBe("running");
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
  it("exclusive(): the reconciler leaves a VM alone while it is restored, and until the desired state catches up", async () => {
    const { driver, loop, phases } = setup();
    loop.setDesired([want("a", "stopped")]);
    await loop.idle();
    expect(driver.calls).toEqual(["create a"]);
    // A restore brings the stopped VM up behind the reconciler's back.
    await loop.exclusive("a", async () => {
      loop.kick();
      await new Promise((r) => setTimeout(r, 20));
      (driver.vms.get("a") as VmRuntime).state = "running";
    }, "running");
    // The desired state still says stopped: the reconciler must not stop the restored VM.
    loop.kick();
    await new Promise((r) => setTimeout(r, 250));
    expect(driver.calls).toEqual(["create a"]);
    // The coordinator catches up; the VM is reported running, never stopped.
    loop.upsert(want("a", "running"));
    await new Promise((r) => setTimeout(r, 250));
    await loop.idle();
    expect(driver.calls).toEqual(["create a"]);
    expect(phases("a")).toEqual(["CREATING", "STOPPED", "RUNNING"]);
  });
});

describe("fencing in the reconcile loop", () => {
  it("a fenced VM is stopped and kept stopped through deltas; the next snapshot (lease renewed) starts it again", async () => {
    const { driver, loop, phases } = setup();
    loop.setDesired([want("a", "running"), want("b", "running")]);
    await loop.idle();
    loop.fence(["a"]);
    await loop.idle();
    expect(driver.vms.get("a")?.state).toBe("stopped");
    expect(driver.vms.get("b")?.state).toBe("running");
    expect(loop.fencedVms()).toEqual(["a"]);
    loop.upsert(want("a", "running"));
    await loop.idle();
    expect(driver.vms.get("a")?.state).toBe("stopped");
    loop.setDesired([want("a", "running"), want("b", "running")]);
    await loop.idle();
    expect(driver.vms.get("a")?.state).toBe("running");
    expect(loop.fencedVms()).toEqual([]);
    expect(phases("a")).toEqual(["CREATING", "RUNNING", "STOPPING", "STOPPED", "RUNNING"]);
  });
});
