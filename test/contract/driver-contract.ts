// The HypervisorDriver contract: every driver runs the same suite (test/e2e/{sandbox,qemu}-contract.test.ts,
// test/integration/firecracker-contract.test.ts: one small file per driver), so what the agent relies on holds for each of them.
//
// The cases run in order on shared VMs (a QEMU boot under TCG is slow): "main" lives from
// create to destroy; "gone" vanishes behind the driver's back. Each driver file supplies a
// harness: how to make a driver object (a new object over the same state dir plays a restart
// of the agent process), specs, the VM's process, the host resources a VM holds, and what it
// can prove. Against the Firecracker fake, cases that need a real guest or real cgroups are
// declared unprovable by the harness (`realGuest: false`, `limits: undefined`): they are not
// run, and the suite's name says so ("[not proven here: ...]"); nothing passes vacuously.
import { describe, expect, it } from "vitest";
import { isNoidError } from "../../common/errors.js";
import { type ProcessRef, isAlive } from "../../common/run.js";
import type { HypervisorDriver, VmCreateSpec, VmRuntime } from "../../agent/drivers/driver.js";

export interface LimitsProof {
  /** Driver-specific evidence that `vm`'s vCPU and memory limits are in force (cgroup files, the guest's view). */
  verify(d: HypervisorDriver, vm: VmCreateSpec): Promise<void>;
  /** After a command in the VM was killed for exceeding memory: the driver's own evidence of that (e.g. the cgroup's OOM counter). */
  afterOom?(vm: VmCreateSpec): Promise<void>;
}

export interface DriverHarness {
  /** A new driver object over the same state: what an agent restart constructs. */
  driver(): HypervisorDriver;
  /** A spec for a new VM; `name` is unique within the run. */
  spec(name: string): VmCreateSpec;
  /** Drivers that boot a kernel: one whose kernel file is missing. */
  withoutKernel?(): HypervisorDriver;
  /** Drivers with images: the spec's image is looked up and refused when missing. */
  hasImages: boolean;
  /** The OS process that is the running VM (init, QEMU, Firecracker), from the driver's record. */
  vmProcess(id: string): ProcessRef | undefined;
  /** What the VM holds on the host (names of netns, links, dirs, cgroups, records, processes); [] when nothing. */
  leftovers(id: string): Promise<string[]>;
  /** Makes the VM unadoptable behind the driver's back (its netns / disk removed). */
  vanish(id: string): Promise<void>;
  /** exec runs real commands in a real (or real-enough) VM; false for a fake guest agent. */
  realGuest: boolean;
  /** When the driver enforces limits here; undefined: not provable against this driver here (say why in `limitsNote`). */
  limits?: LimitsProof;
  limitsNote?: string;
  /** Per-case time box (boots under TCG are slow). */
  timeoutMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Bounded wait until `f` holds. */
async function until(what: string, f: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export function registerDriverContract(name: string, h: () => DriverHarness): void {
  // Cases a driver cannot have here are not registered (npm test counts a skipped test as a
  // failure); the suite's name lists them, so a reader sees what was not proven.
  const harness0 = h();
  const bad = harness0.hasImages || harness0.withoutKernel !== undefined;
  const withLimits = harness0.realGuest && harness0.limits !== undefined;
  const notHere = [
    ...(bad ? [] : ["bad image/kernel (the driver has none)"]),
    ...(harness0.realGuest ? [] : ["real commands in a guest (a fake guest agent)"]),
    ...(withLimits ? [] : [`limits in force (${harness0.limitsNote ?? "not provable here"})`]),
  ];
  describe(`HypervisorDriver contract: ${name}${notHere.length ? ` [not proven here: ${notHere.join("; ")}]` : ""}`, () => {
    let main: VmCreateSpec;
    let gone: VmCreateSpec;
    let first: ProcessRef | undefined;
    const t = (): number => h().timeoutMs;
    const realIt = (title: string, f: () => Promise<void>): void => {
      if (harness0.realGuest) it(title, f, t());
    };

    if (bad) it("refuses a missing image or kernel with FAILED_PRECONDITION, and leaves nothing behind", async () => {
      const harness = h();
      const d = harness.driver();
      const cases: [HypervisorDriver, VmCreateSpec, RegExp][] = [];
      if (harness.hasImages) cases.push([d, { ...harness.spec("noimg"), image: "no-such-image" }, /image "no-such-image" not found/]);
      if (harness.withoutKernel) cases.push([harness.withoutKernel(), harness.spec("nokernel"), /(kernel|vmlinuz).*(missing|not found)/]);
      for (const [drv, spec, msg] of cases) {
        const err = await drv.create(spec).catch((e: unknown) => e);
        expect(isNoidError(err, "FAILED_PRECONDITION"), String(err)).toBe(true);
        expect(String(err)).toMatch(msg);
        expect(await d.inspect(spec.id)).toBeUndefined();
        expect(await harness.leftovers(spec.id)).toEqual([]);
      }
      expect(await d.list()).toEqual([]);
    }, 60_000);

    it("refuses operations on an unknown VM with NOT_FOUND; destroying one succeeds", async () => {
      const d = h().driver();
      expect(await d.inspect("vm-never-made")).toBeUndefined();
      for (const op of [() => d.start("vm-never-made"), () => d.stop("vm-never-made"), () => d.exec!("vm-never-made", ["true"])]) {
        const err = await op().catch((e: unknown) => e);
        expect(isNoidError(err, "NOT_FOUND"), String(err)).toBe(true);
      }
      await d.destroy("vm-never-made");
    });

    it("create prepares a stopped VM, idempotently; inspect and list show it", async () => {
      const harness = h();
      main = harness.spec("main");
      gone = harness.spec("gone");
      const d = harness.driver();
      const vm = await d.create(main);
      expect(vm).toMatchObject({ id: main.id, driver: d.name, state: "stopped", reason: "" });
      expect(vm.spec).toEqual(main);
      expect(vm.hostPort.length).toBeGreaterThan(0);
      expect(vm.hostPort.length).toBeLessThanOrEqual(15);
      expect(await d.create(main)).toMatchObject({ state: "stopped" });
      expect(await d.inspect(main.id)).toMatchObject({ id: main.id, state: "stopped" });
      await d.create(gone);
      expect((await d.list()).map((v) => v.id).sort()).toEqual([main.id, gone.id].sort());
      expect(harness.vmProcess(main.id)).toBeUndefined();
      // exec needs a running VM.
      const err = await d.exec!(main.id, ["true"]).catch((e: unknown) => e);
      expect(isNoidError(err, "FAILED_PRECONDITION"), String(err)).toBe(true);
    }, 60_000);

    it("start runs it; starting a running VM changes nothing", async () => {
      const harness = h();
      const d = harness.driver();
      expect(await d.start(main.id)).toMatchObject({ state: "running" });
      first = harness.vmProcess(main.id);
      expect(first && isAlive(first)).toBe(true);
      expect(await d.start(main.id)).toMatchObject({ state: "running" });
      expect(harness.vmProcess(main.id)).toEqual(first);
      expect(await d.inspect(main.id)).toMatchObject({ state: "running", reason: "" });
    }, t());

    it("exec returns the exit status and passes the given environment, not the agent's", async () => {
      const d = h().driver();
      process.env.NOID_CONTRACT_SECRET = "agent-only-value";
      try {
        expect(await d.exec!(main.id, ["true"])).toMatchObject({ exitCode: 0 });
        expect(await d.exec!(main.id, ["false"])).toMatchObject({ exitCode: 1 });
        const env = await d.exec!(main.id, ["env"], { env: { GREETING: "hi there" } });
        expect(env.stdout).toContain("GREETING=hi there");
        expect(env.stdout).not.toContain("agent-only-value");
        const slow = await d.exec!(main.id, ["sleep", "30"], { timeoutMs: 500 });
        expect(slow.timedOut).toBe(true);
      } finally {
        delete process.env.NOID_CONTRACT_SECRET;
      }
    }, t());

    realIt("exec keeps stdout and stderr apart, and reports a missing command as 127", async () => {
      const d = h().driver();
      expect(await d.exec!(main.id, ["sh", "-c", "echo out; echo err >&2; exit 3"])).toMatchObject({ stdout: "out\n", stderr: "err\n", exitCode: 3 });
      expect((await d.exec!(main.id, ["no-such-command"])).exitCode).toBe(127);
    });

    it("a new driver object (an agent restart) adopts the running VM without restarting it", async () => {
      const harness = h();
      const d = harness.driver();
      const adopted = await d.recover();
      expect(adopted.map((v) => [v.id, v.state]).sort()).toEqual(
        [
          [main.id, "running"],
          [gone.id, "stopped"],
        ].sort(),
      );
      expect(adopted.find((v) => v.id === main.id)?.spec).toEqual(main);
      expect(harness.vmProcess(main.id)).toEqual(first);
      expect(isAlive(first!)).toBe(true);
      expect(await d.exec!(main.id, ["true"])).toMatchObject({ exitCode: 0 });
    }, t());

    it(`resource limits: capabilities say ${harness0.limits ? "they are enforced, and they are" : "they are not enforced, and why"}`, async () => {
      const harness = h();
      const caps = harness.driver().capabilities();
      if (!harness.limits) {
        expect(caps.resourceLimits).toBe(false);
        expect(caps.limitsReason).toBeTruthy();
        return;
      }
      expect(caps.resourceLimits, caps.limitsReason).toBe(true);
      await harness.limits.verify(harness.driver(), main);
    }, t());

    if (withLimits) it(
      "resource limits: a command that needs more memory than the VM has does not get it, and the VM runs on",
      async () => {
        const harness = h();
        const d = harness.driver();
        // dd's buffer is bs bytes, filled from /dev/zero: it needs that much memory at once.
        const small = await d.exec!(main.id, ["dd", "if=/dev/zero", "of=/dev/null", `bs=${Math.floor(main.memoryMb / 4)}M`, "count=1"], { timeoutMs: 60_000 });
        expect(small.exitCode, small.stderr).toBe(0);
        const big = await d.exec!(main.id, ["dd", "if=/dev/zero", "of=/dev/null", `bs=${main.memoryMb * 2}M`, "count=1"], { timeoutMs: 60_000 });
        expect(big.exitCode, `dd of ${main.memoryMb * 2} MiB in a ${main.memoryMb} MiB VM: ${big.stdout}${big.stderr}`).not.toBe(0);
        expect(big.timedOut).toBeFalsy();
        await harness.limits!.afterOom?.(main);
        expect(await d.inspect(main.id)).toMatchObject({ state: "running" });
        expect(harness.vmProcess(main.id)).toEqual(first);
        expect(await d.exec!(main.id, ["true"])).toMatchObject({ exitCode: 0 });
      },
      t(),
    );

    it("stop ends the VM's process and keeps the VM; start runs it again", async () => {
      const harness = h();
      const d = harness.driver();
      expect(await d.stop(main.id)).toMatchObject({ state: "stopped", reason: "" });
      expect(isAlive(first!)).toBe(false);
      expect(harness.vmProcess(main.id)).toBeUndefined();
      expect(await d.stop(main.id)).toMatchObject({ state: "stopped" }); // idempotent
      expect(await d.inspect(main.id)).toMatchObject({ state: "stopped" });
      expect(await d.start(main.id)).toMatchObject({ state: "running" });
      const second = harness.vmProcess(main.id);
      expect(second && isAlive(second)).toBe(true);
      expect(second).not.toEqual(first);
      expect(await d.exec!(main.id, ["true"])).toMatchObject({ exitCode: 0 });
    }, t());

    it("a VM process that dies is noticed: inspect and a restarted driver report it failed, with a reason", async () => {
      const harness = h();
      const d = harness.driver();
      const p = harness.vmProcess(main.id)!;
      process.kill(p.pid, "SIGKILL");
      await until("the VM process to exit", async () => !isAlive(p));
      const seen = await d.inspect(main.id);
      expect(seen).toMatchObject({ state: "failed" });
      expect(seen?.reason).toMatch(new RegExp(`${p.pid}.*exited|exited.*${p.pid}`));
      const after = (await harness.driver().recover()).find((v) => v.id === main.id);
      expect(after).toMatchObject({ state: "failed" });
      expect(after?.reason).toContain(String(p.pid));
    }, t());

    it("recover drops a VM that vanished behind the driver's back, and releases all it held", async () => {
      const harness = h();
      await harness.vanish(gone.id);
      const d = harness.driver();
      expect((await d.recover()).map((v) => v.id)).toEqual([main.id]);
      expect(await d.inspect(gone.id)).toBeUndefined();
      expect(await harness.leftovers(gone.id)).toEqual([]);
    }, t());

    it("destroy removes everything the VM held on the host; destroying again succeeds", async () => {
      const harness = h();
      const d = harness.driver();
      // A destroy of a running VM must end its process too.
      await d.start(main.id);
      const p = harness.vmProcess(main.id)!;
      expect(await harness.leftovers(main.id)).not.toEqual([]);
      await d.destroy(main.id);
      expect(isAlive(p)).toBe(false);
      await d.destroy(main.id);
      expect(await d.inspect(main.id)).toBeUndefined();
      expect(await d.list()).toEqual([] as VmRuntime[]);
      expect(await harness.leftovers(main.id)).toEqual([]);
    }, t());
  });
}
