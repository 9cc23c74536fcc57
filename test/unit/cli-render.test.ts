// The one renderer: table, wide, json and yaml of a sample VM, hosts' state
// column, and the streaming form used by list --watch.
import { describe, expect, it } from "vitest";
import { renderList, renderOne, renderStreamItem } from "../../cli/render.js";
import { age, hostView,
  postureSummary, hostState, vmView } from "../../cli/views.js";
import { Host, HostState, Vm, VmPhase } from "../../sdk/index.js";

const now = new Date("2025-01-15T10:30:00Z");
const opts = { color: false, now };

const web = Vm.fromPartial({
  id: "vm-7f3a",
  name: "web",
  owner: "alice",
  spec: { vcpus: 2, memoryMb: 1024, diskGb: 4, driver: "sandbox", labels: { tier: "web" } },
  status: { phase: VmPhase.VM_PHASE_RUNNING, hostId: "h-1", hostName: "hv-1", ip: "10.20.0.11", mac: "02:00:0a:14:00:0b" },
  createdAt: new Date("2025-01-15T07:25:00Z"),
});
const db = Vm.fromPartial({
  id: "vm-91c2",
  name: "db",
  owner: "bob",
  spec: { vcpus: 1, memoryMb: 512 },
  status: { phase: VmPhase.VM_PHASE_PENDING, reason: "no host has 64 vcpus free" },
  createdAt: new Date("2025-01-15T10:29:15Z"),
});

describe("VM rendering", () => {
  it("table", () => {
    expect(renderList(vmView, [web, db], "table", opts)).toMatchInlineSnapshot(`
      "NAME   STATE     HOST   VCPUS   MEMORY   IP           OWNER
      web    RUNNING   hv-1   2       1024Mi   10.20.0.11   alice
      db     PENDING   -      1       512Mi    -            bob
      "
    `);
  });

  it("wide adds ID, DRIVER, REASON, LABELS, AGE", () => {
    expect(renderList(vmView, [web, db], "wide", opts)).toMatchInlineSnapshot(`
      "NAME   STATE     HOST   VCPUS   MEMORY   IP           OWNER   ID        DRIVER    REASON                      LABELS     AGE
      web    RUNNING   hv-1   2       1024Mi   10.20.0.11   alice   vm-7f3a   sandbox   -                           tier=web   3h
      db     PENDING   -      1       512Mi    -            bob     vm-91c2   -         no host has 64 vcpus free   -          45s
      "
    `);
  });

  it("json is the proto JSON mapping", () => {
    const out = renderList(vmView, [web], "json", opts);
    expect(JSON.parse(out)).toEqual([Vm.toJSON(web)]);
    expect(out).toMatchInlineSnapshot(`
      "[
        {
          "id": "vm-7f3a",
          "name": "web",
          "owner": "alice",
          "spec": {
            "vcpus": 2,
            "memoryMb": 1024,
            "diskGb": 4,
            "driver": "sandbox",
            "labels": {
              "tier": "web"
            }
          },
          "status": {
            "phase": "VM_PHASE_RUNNING",
            "hostId": "h-1",
            "hostName": "hv-1",
            "ip": "10.20.0.11",
            "mac": "02:00:0a:14:00:0b"
          },
          "createdAt": "2025-01-15T07:25:00.000Z"
        }
      ]
      "
    `);
  });

  it("yaml", () => {
    expect(renderOne(vmView, web, "yaml", opts)).toMatchInlineSnapshot(`
      "id: vm-7f3a
      name: web
      owner: alice
      spec:
        vcpus: 2
        memoryMb: 1024
        diskGb: 4
        driver: sandbox
        labels:
          tier: web
      status:
        phase: VM_PHASE_RUNNING
        hostId: h-1
        hostName: hv-1
        ip: 10.20.0.11
        mac: 02:00:0a:14:00:0b
      createdAt: 2025-01-15T07:25:00.000Z
      "
    `);
  });

  it("one item in table form is a Key: value list with every column", () => {
    expect(renderOne(vmView, db, "table", opts)).toMatchInlineSnapshot(`
      "Name:   db
      State:  PENDING
      Host:   -
      vCPUs:  1
      Memory: 512Mi
      IP:     -
      Owner:  bob
      ID:     vm-91c2
      Driver: -
      Reason: no host has 64 vcpus free
      Labels: -
      Age:    45s
      "
    `);
  });

  it("an empty list is just the header", () => {
    expect(renderList(vmView, [], "table", opts)).toBe("NAME   STATE   HOST   VCPUS   MEMORY   IP   OWNER\n");
  });

  it("does not colour output for a non-terminal", () => {
    expect(renderList(vmView, [web], "table", opts)).not.toContain("\u001b[");
  });

  it("streams fixed-width lines, with a header only first", () => {
    const first = renderStreamItem(vmView, web, "table", { ...opts, header: true });
    const next = renderStreamItem(vmView, db, "table", { ...opts, header: false });
    expect(first + next).toMatchInlineSnapshot(`
      "NAME            STATE           HOST            VCPUS           MEMORY          IP              OWNER
      web             RUNNING         hv-1            2               1024Mi          10.20.0.11      alice
      db              PENDING         -               1               512Mi           -               bob
      "
    `);
    expect(renderStreamItem(vmView, web, "json", { ...opts, header: true }).trim()).toBe(JSON.stringify(Vm.toJSON(web)));
  });
});

describe("hosts", () => {
  const h = Host.fromPartial({
    id: "h-1",
    name: "hv-1",
    address: "192.168.10.1",
    drivers: ["sandbox", "firecracker"],
    capacity: { vcpus: 16, memoryMb: 32768, diskGb: 500 },
    allocated: { vcpus: 3, memoryMb: 1536, diskGb: 5 },
    vmCount: 2,
    state: HostState.HOST_STATE_READY,
    cordoned: true,
  });

  it("state combines liveness and cordon", () => {
    expect(hostState(h)).toBe("READY,CORDONED");
    expect(hostState({ ...h, cordoned: false, state: HostState.HOST_STATE_UNREACHABLE })).toBe("UNREACHABLE");
  });

  it("table shows allocation against capacity", () => {
    expect(renderList(hostView, [h], "table", opts)).toMatchInlineSnapshot(`
      "NAME   STATE            ADDRESS        VMS   CPU    MEMORY         DRIVERS               POSTURE
      hv-1   READY,CORDONED   192.168.10.1   2     3/16   1536/32768Mi   sandbox,firecracker   -
      "
    `);
  });

  it("posture shows ok, or the failing required checks (optional ones never fail a host)", () => {
    const check = (name: string, ok: boolean, optional = false) => ({ name, ok, optional, detail: "" });
    const failing = { ...h, posture: { ok: false, checkedAt: now, checks: [check("ssh-password-off", true), check("firewall", false), check("auto-updates", false), check("fail2ban", false, true)] } };
    expect(postureSummary(failing)).toBe("fail: firewall,auto-updates");
    expect(postureSummary({ ...h, posture: { ok: true, checkedAt: now, checks: [check("firewall", true), check("fail2ban", false, true)] } })).toBe("ok");
    expect(postureSummary(h)).toBe("-");
  });
});

describe("age", () => {
  it.each([
    [5, "5s"],
    [119, "119s"],
    [600, "10m"],
    [3 * 3600, "3h"],
    [3 * 86400, "3d"],
  ])("%d s ago is %s", (s, text) => expect(age(new Date(now.getTime() - s * 1000), now)).toBe(text));
  it("unknown is -", () => expect(age(undefined, now)).toBe("-"));
});
