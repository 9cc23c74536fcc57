// The pure parts of pause/resume/restart, console and logs: the coordinator's rules, the
// agent's plan, log tails, the log ring, the CLI's detach key.
import { describe, expect, it } from "vitest";
import { afterReport, decide, missingCapability } from "../../coordinator/lifecycle/lifecycle.js";
import { Host } from "../../gen/noid/v1/host.js";
import { Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import { plan } from "../../agent/reconcile/plan.js";
import type { VmRuntime } from "../../agent/drivers/driver.js";
import { capabilityNames } from "../../agent/drivers/driver.js";
import type { DesiredVm } from "../../agent/reconcile/types.js";
import { tailStart } from "../../agent/log-tail.js";
import { LogRing, teeDestination } from "../../common/log-ring.js";
import { createLogger } from "../../common/logger.js";
import { parseTail, splitDetach } from "../../cli/commands/lifecycle.js";
import { parseFrozen } from "../../agent/drivers/sandbox/freezer.js";

const vm = (phase: VmPhase, desired: VmDesiredState, extra: { restartPending?: boolean; driver?: string } = {}): Vm =>
  Vm.fromPartial({
    id: "v1",
    name: "web",
    owner: "alice",
    spec: { driver: extra.driver ?? "" },
    desiredState: desired,
    status: { phase, hostId: "h1", hostName: "hv-1", restartPending: extra.restartPending ?? false },
  });
const { VM_PHASE_RUNNING: RUNNING, VM_PHASE_PAUSED: PAUSED, VM_PHASE_STOPPED: STOPPED, VM_PHASE_PENDING: PENDING, VM_PHASE_STOPPING: STOPPING } = VmPhase;
const D = VmDesiredState;

describe("pause, resume and restart rules", () => {
  it("pauses only a running VM; pausing one that is being paused changes nothing", () => {
    expect(decide("pause", vm(RUNNING, D.VM_DESIRED_STATE_RUNNING))).toEqual({ kind: "write", desired: D.VM_DESIRED_STATE_PAUSED, restartPending: false });
    expect(decide("pause", vm(RUNNING, D.VM_DESIRED_STATE_PAUSED))).toEqual({ kind: "noop" });
    expect(decide("pause", vm(STOPPED, D.VM_DESIRED_STATE_STOPPED))).toMatchObject({ kind: "refuse", reason: expect.stringContaining("not running (STOPPED)") });
    expect(decide("pause", vm(PENDING, D.VM_DESIRED_STATE_RUNNING))).toMatchObject({ kind: "refuse" });
    // Stopping (desired STOPPED) but still reported RUNNING: not pausable.
    expect(decide("pause", vm(RUNNING, D.VM_DESIRED_STATE_STOPPED))).toMatchObject({ kind: "refuse" });
  });

  it("resumes only a paused VM", () => {
    expect(decide("resume", vm(PAUSED, D.VM_DESIRED_STATE_PAUSED))).toEqual({ kind: "write", desired: D.VM_DESIRED_STATE_RUNNING, restartPending: false });
    expect(decide("resume", vm(RUNNING, D.VM_DESIRED_STATE_RUNNING))).toMatchObject({ kind: "refuse", reason: expect.stringContaining("not paused (RUNNING)") });
    expect(decide("resume", vm(STOPPED, D.VM_DESIRED_STATE_STOPPED))).toMatchObject({ kind: "refuse" });
  });

  it("restarts a running or paused VM by stopping it with restart_pending; refuses others and a second restart", () => {
    for (const [p, d] of [[RUNNING, D.VM_DESIRED_STATE_RUNNING], [PAUSED, D.VM_DESIRED_STATE_PAUSED]] as const) {
      expect(decide("restart", vm(p, d))).toEqual({ kind: "write", desired: D.VM_DESIRED_STATE_STOPPED, restartPending: true });
    }
    expect(decide("restart", vm(STOPPED, D.VM_DESIRED_STATE_STOPPED))).toMatchObject({ kind: "refuse", reason: expect.stringContaining("start it instead") });
    expect(decide("restart", vm(STOPPING, D.VM_DESIRED_STATE_STOPPED, { restartPending: true }))).toMatchObject({ kind: "refuse", reason: expect.stringContaining("restarting") });
    expect(decide("pause", vm(RUNNING, D.VM_DESIRED_STATE_DELETED))).toMatchObject({ kind: "refuse", reason: expect.stringContaining("destroyed") });
  });

  it("a restart continues when the host reports the VM stopped, and only then", () => {
    const restarting = vm(STOPPING, D.VM_DESIRED_STATE_STOPPED, { restartPending: true });
    expect(afterReport(restarting, STOPPING)).toBeUndefined();
    expect(afterReport(restarting, STOPPED)).toEqual({ desired: D.VM_DESIRED_STATE_RUNNING, restartPending: false });
    expect(afterReport(vm(STOPPING, D.VM_DESIRED_STATE_STOPPED), STOPPED)).toBeUndefined();
  });

  it("names the missing capability of the VM's driver (its own, else the host's default)", () => {
    const host = Host.fromPartial({ id: "h1", name: "hv-1", drivers: ["sandbox", "qemu"], driverCapabilities: [{ driver: "sandbox", capabilities: ["exec", "pause", "logs"] }, { driver: "qemu", capabilities: ["exec", "pause", "console", "logs"] }] });
    expect(missingCapability(vm(RUNNING, D.VM_DESIRED_STATE_RUNNING), host, "pause")).toBeUndefined();
    expect(missingCapability(vm(RUNNING, D.VM_DESIRED_STATE_RUNNING), host, "console")).toBe("driver sandbox does not support console");
    expect(missingCapability(vm(RUNNING, D.VM_DESIRED_STATE_RUNNING, { driver: "qemu" }), host, "console")).toBeUndefined();
    expect(missingCapability(vm(RUNNING, D.VM_DESIRED_STATE_RUNNING, { driver: "firecracker" }), host, "pause")).toMatch(/did not report/);
    expect(missingCapability(vm(RUNNING, D.VM_DESIRED_STATE_RUNNING), undefined, "pause")).toMatch(/no host/);
    expect(capabilityNames({ exec: true, checkpoint: false, restore: false, resourceLimits: true, pause: true, console: false })).toEqual(["exec", "resourceLimits", "pause"]);
  });
});

describe("the agent's plan for paused VMs", () => {
  const spec = { id: "v1", vcpus: 1, memoryMb: 128, diskGb: 1, image: "", net: { mac: "02:00:00:00:00:01", ip: "10.0.0.5" } };
  const want = (state: DesiredVm["state"]): DesiredVm[] => [{ id: "v1", state, driver: "qemu", spec }];
  const seen = (state: VmRuntime["state"]): VmRuntime[] => [{ id: "v1", driver: "qemu", state, reason: "", spec, hostPort: "nq1" }];
  const kinds = (d: DesiredVm[], o: VmRuntime[], canPause = true) => plan(d, o, new Map(), { canPause: () => canPause }).map((a) => (a.kind === "report" ? `report ${VmPhase[a.status.phase]}` : a.kind));

  it("pauses a running VM desired paused, resumes a paused one desired running", () => {
    expect(kinds(want("paused"), seen("running"))).toEqual(["pause"]);
    expect(kinds(want("running"), seen("paused"))).toEqual(["resume"]);
  });

  it("leaves a paused VM paused (after an agent restart too): it is only reported", () => {
    expect(kinds(want("paused"), seen("paused"))).toEqual(["report VM_PHASE_PAUSED"]);
  });

  it("starts a stopped VM desired paused (then pauses it), stops a paused VM desired stopped", () => {
    expect(kinds(want("paused"), seen("stopped"))).toEqual(["start"]);
    expect(kinds(want("stopped"), seen("paused"))).toEqual(["stop"]);
    expect(kinds(want("deleted"), seen("paused"))).toEqual(["destroy"]);
  });

  it("a driver without pause gets no pause action; the VM is reported running with the reason", () => {
    const a = plan(want("paused"), seen("running"), new Map(), { canPause: () => false });
    expect(a).toEqual([expect.objectContaining({ kind: "report", status: expect.objectContaining({ phase: VmPhase.VM_PHASE_RUNNING, reason: "driver qemu does not support pause" }) })]);
  });
});

describe("log tails, the log ring and the console's detach key", () => {
  it("finds where the last n lines start", () => {
    const b = Buffer.from("a\nbb\nccc\n");
    expect(b.subarray(tailStart(b, 1)).toString()).toBe("ccc\n");
    expect(b.subarray(tailStart(b, 2)).toString()).toBe("bb\nccc\n");
    expect(b.subarray(tailStart(b, 9)).toString()).toBe("a\nbb\nccc\n");
    expect(tailStart(b, 0)).toBe(0);
    // A partial last line counts as a line.
    const p = Buffer.from("a\nbb\ncc");
    expect(p.subarray(tailStart(p, 1)).toString()).toBe("cc");
    expect(tailStart(Buffer.alloc(0), 3)).toBe(0);
  });

  it("keeps the last lines, bounded by count and bytes, across chunk boundaries", () => {
    const r = new LogRing(3, 1000);
    r.write('{"a":1}\n{"a":');
    r.write("2}\n");
    expect(r.lines()).toEqual(['{"a":1}', '{"a":2}']);
    for (let i = 3; i <= 6; i++) r.write(`{"a":${i}}\n`);
    expect(r.lines()).toEqual(['{"a":4}', '{"a":5}', '{"a":6}']);
    expect(r.lines(1)).toEqual(['{"a":6}']);
    const small = new LogRing(100, 10);
    small.write("12345678\nabcdefgh\n");
    expect(small.lines()).toEqual(["abcdefgh"]);
  });

  it("keeps what pino printed: secrets are already redacted", () => {
    const ring = new LogRing();
    const other: string[] = [];
    const log = createLogger({ name: "agent", destination: teeDestination(ring, { write: (s: string) => void other.push(s) }) });
    log.child({ component: "exec" }).info({ token: "s3cret-token", env: { API_KEY: "s3cret-env" }, vm: "v1" }, "exec");
    const lines = ring.lines();
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ component: "exec", vm: "v1", token: "[redacted]", env: "[redacted]", msg: "exec" });
    expect(lines[0]).not.toMatch(/s3cret/);
    expect(other.join("")).toBe(`${lines[0]}\n`);
  });

  it("detaches on Ctrl-] and sends what came before it", () => {
    expect(splitDetach(Buffer.from("ls\n"))).toEqual({ send: Buffer.from("ls\n"), detach: false });
    expect(splitDetach(Buffer.from([0x61, 0x1d, 0x62]))).toEqual({ send: Buffer.from("a"), detach: true });
    expect(parseTail(undefined)).toBe(0);
    expect(parseTail("20")).toBe(20);
    expect(() => parseTail("-1")).toThrow(/--tail/);
  });

  it("reads the freezer's state files", () => {
    expect(parseFrozen("v1", "FROZEN\n")).toBe(true);
    expect(parseFrozen("v1", "FREEZING\n")).toBe(false);
    expect(parseFrozen("v1", "THAWED\n")).toBe(false);
    expect(parseFrozen("v2", "populated 1\nfrozen 1\n")).toBe(true);
    expect(parseFrozen("v2", "populated 1\nfrozen 0\n")).toBe(false);
  });
});
