// The pure parts of migration: which moves are refused with which status (nothing is
// changed for them), the room check the switch repeats, and the target agent's plan (a VM
// that moves here is created, then restored from the migration's state instead of started).
import { describe, expect, it } from "vitest";
import { type Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import { checkRoom, effectiveDriver, migrationProblem } from "../../coordinator/services/migration-service.js";
import type { HostView } from "../../coordinator/scheduler/types.js";
import { plan } from "../../agent/reconcile/plan.js";
import { desiredFromVm } from "../../agent/reconcile/desired.js";
import type { VmRuntime } from "../../agent/drivers/driver.js";

const host = (id: string, name: string, o: Partial<HostView> = {}): HostView => ({
  id,
  name,
  labels: {},
  drivers: ["qemu", "sandbox"],
  capacity: { vcpus: 4, memoryMb: 4096, diskGb: 40 },
  allocated: { vcpus: 0, memoryMb: 0, diskGb: 0 },
  vmCount: 0,
  cordoned: false,
  ready: true,
  groups: {},
  networks: {},
  ...o,
});
const h1 = host("1111111111111111", "host1");
const h2 = host("2222222222222222", "host2");

const vm = (o: { phase?: VmPhase; desired?: VmDesiredState; driver?: string; host?: string; migrationId?: string } = {}): Vm => ({
  id: "abcdef0123456789",
  name: "web",
  owner: "alice",
  spec: { vcpus: 1, memoryMb: 512, diskGb: 2, driver: o.driver ?? "qemu", image: "", labels: {}, hostSelector: {}, host: o.host ?? "host1", antiAffinityGroup: "", network: "", networkGroup: "", sshAuthorizedKeys: [], hostLoss: undefined },
  desiredState: o.desired ?? VmDesiredState.VM_DESIRED_STATE_RUNNING,
  createdAt: undefined,
  status: {
    phase: o.phase ?? VmPhase.VM_PHASE_RUNNING,
    hostId: h1.id,
    hostName: "host1",
    reason: "",
    ip: "10.0.0.5/24",
    mac: "02:00:00:aa:bb:cc",
    updatedAt: undefined,
    networkId: "n1",
    networkCidr: "10.0.0.0/24",
    gateway: "10.0.0.1",
    migrationId: o.migrationId ?? "",
    migrationSha256: "",
    restartPending: false,
  },
});

describe("migration checks", () => {
  it("allows a running VM to a ready host with room and its driver, even when pinned to the source", () => {
    expect(migrationProblem(vm(), h1, h2, "host2")).toBeUndefined();
  });

  const refused: [string, Vm, HostView | undefined, string, RegExp][] = [
    ["an unknown host", vm(), undefined, "NOT_FOUND", /host "host2"/],
    ["the same host", vm(), h1, "INVALID_ARGUMENT", /already runs on host1/],
    ["a cordoned host", vm(), host(h2.id, "host2", { cordoned: true }), "FAILED_PRECONDITION", /cordoned/],
    ["a host that is not ready", vm(), host(h2.id, "host2", { ready: false }), "FAILED_PRECONDITION", /not ready/],
    ["a host without the driver", vm(), host(h2.id, "host2", { drivers: ["sandbox"] }), "FAILED_PRECONDITION", /does not run driver qemu/],
    ["a full host", vm(), host(h2.id, "host2", { allocated: { vcpus: 1, memoryMb: 3800, diskGb: 0 } }), "RESOURCE_EXHAUSTED", /no room .* memory is short/],
    ["a stopped VM", vm({ phase: VmPhase.VM_PHASE_STOPPED }), h2, "FAILED_PRECONDITION", /not running \(STOPPED\)/],
    ["a VM being destroyed", vm({ desired: VmDesiredState.VM_DESIRED_STATE_DELETED }), h2, "FAILED_PRECONDITION", /being destroyed/],
    ["a VM already moving", vm({ migrationId: "0011223344556677" }), h2, "FAILED_PRECONDITION", /already moving/],
  ];
  it.each(refused)("refuses %s", (_what, v, target, code, message) => {
    expect(migrationProblem(v, h1, target, "host2")).toMatchObject({ code, message: expect.stringMatching(message) });
  });

  it("takes a VM without a driver in its spec as running its host's default driver", () => {
    const v = vm({ driver: "" });
    expect(effectiveDriver(v, h1)).toBe("qemu");
    expect(migrationProblem(v, h1, host(h2.id, "host2", { drivers: ["sandbox", "qemu"] }), "host2")).toBeUndefined();
    expect(migrationProblem(v, h1, host(h2.id, "host2", { drivers: ["sandbox"] }), "host2")).toMatchObject({ code: "FAILED_PRECONDITION" });
  });

  it("repeats the room check against the allocation the switch compares", () => {
    expect(() => checkRoom(vm(), h2, undefined)).not.toThrow();
    expect(() => checkRoom(vm(), h2, { allocated: { vcpus: 4, memoryMb: 0, diskGb: 0 }, vmCount: 1, groups: {}, networks: {} })).toThrow(/no room/);
  });
});

describe("target agent plan for a VM that moves here", () => {
  const moving = (): Vm => {
    const v = vm({ migrationId: "0011223344556677" });
    return { ...v, status: { ...v.status!, hostId: h2.id, hostName: "host2", phase: VmPhase.VM_PHASE_MIGRATING, migrationSha256: "ab".repeat(32) } };
  };
  const d = desiredFromVm(moving());
  const rt = (state: VmRuntime["state"]): VmRuntime => ({ id: d.id, driver: "qemu", state, reason: "", spec: d.spec, hostPort: "nq0" });

  it("creates it with its own MAC and address, then restores it instead of booting it", () => {
    expect(d.incoming).toEqual({ migrationId: "0011223344556677", sha256: "ab".repeat(32) });
    expect(d.spec.net).toMatchObject({ mac: "02:00:00:aa:bb:cc", ip: "10.0.0.5", prefixLen: 24 });
    expect(plan([d], []).map((a) => a.kind)).toEqual(["create"]);
    expect(plan([d], [rt("stopped")])).toEqual([{ kind: "restore", vmId: d.id, driver: "qemu", incoming: d.incoming }]);
    expect(plan([d], [rt("running")]).map((a) => a.kind)).toEqual(["report"]);
  });

  it("starts a VM that is not moving as before", () => {
    const plain = desiredFromVm(vm());
    expect(plain.incoming).toBeUndefined();
    expect(plan([plain], [rt("stopped")]).map((a) => a.kind)).toEqual(["start"]);
  });
});
