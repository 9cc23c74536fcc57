// Table tests for the pure scheduler: each filter, each preference, the
// user-facing reasons and the place/release helpers.
import { describe, expect, it } from "vitest";
import {
  ANTI_AFFINITY_PENALTY,
  applyPlacement,
  filterHosts,
  releasePlacement,
  scheduleBatch,
  scheduleOne,
  scoreHost,
  type Decision,
  type HostView,
  type VmRequest,
} from "../../coordinator/scheduler/index.js";

function host(name: string, over: Partial<HostView> = {}): HostView {
  return {
    id: `id-${name}`,
    name,
    labels: {},
    drivers: ["firecracker", "qemu"],
    capacity: { vcpus: 16, memoryMb: 32768, diskGb: 500 },
    allocated: { vcpus: 0, memoryMb: 0, diskGb: 0 },
    vmCount: 0,
    cordoned: false,
    ready: true,
    groups: {},
    networks: {},
    ...over,
  };
}

function vm(id: string, over: Partial<VmRequest> = {}): VmRequest {
  return {
    id,
    resources: { vcpus: 2, memoryMb: 4096, diskGb: 10 },
    driver: "",
    hostSelector: {},
    host: "",
    antiAffinityGroup: "",
    networkId: "",
    ...over,
  };
}

function placedOn(d: Decision): string {
  if (!d.placed) throw new Error(`expected placement, got: ${d.reason}`);
  return d.hostId;
}

function reason(d: Decision): string {
  if (d.placed) throw new Error(`expected no placement, got ${d.hostId}`);
  return d.reason;
}

describe("filterHosts", () => {
  const cases: { name: string; h: HostView; v: VmRequest; filter: string | undefined }[] = [
    { name: "fits", h: host("a"), v: vm("v"), filter: undefined },
    { name: "not ready", h: host("a", { ready: false }), v: vm("v"), filter: "not-ready" },
    { name: "cordoned", h: host("a", { cordoned: true }), v: vm("v"), filter: "cordoned" },
    { name: "pinned elsewhere", h: host("a"), v: vm("v", { host: "b" }), filter: "pinned" },
    { name: "pinned here", h: host("a"), v: vm("v", { host: "a" }), filter: undefined },
    { name: "driver missing", h: host("a", { drivers: ["qemu"] }), v: vm("v", { driver: "firecracker" }), filter: "driver" },
    { name: "driver present", h: host("a", { drivers: ["qemu"] }), v: vm("v", { driver: "qemu" }), filter: undefined },
    { name: "any driver", h: host("a", { drivers: [] }), v: vm("v"), filter: undefined },
    { name: "label missing", h: host("a"), v: vm("v", { hostSelector: { zone: "z1" } }), filter: "labels" },
    {
      name: "label differs",
      h: host("a", { labels: { zone: "z2" } }),
      v: vm("v", { hostSelector: { zone: "z1" } }),
      filter: "labels",
    },
    {
      name: "one of two labels missing",
      h: host("a", { labels: { zone: "z1" } }),
      v: vm("v", { hostSelector: { zone: "z1", gpu: "yes" } }),
      filter: "labels",
    },
    {
      name: "labels match (extra host labels ok)",
      h: host("a", { labels: { zone: "z1", gpu: "yes", rack: "r9" } }),
      v: vm("v", { hostSelector: { zone: "z1", gpu: "yes" } }),
      filter: undefined,
    },
    {
      name: "selector key from prototype is not a label",
      h: host("a"),
      v: vm("v", { hostSelector: { toString: "x" } }),
      filter: "labels",
    },
    {
      name: "vcpus short by one",
      h: host("a", { allocated: { vcpus: 15, memoryMb: 0, diskGb: 0 } }),
      v: vm("v"),
      filter: "vcpus",
    },
    {
      name: "vcpus exactly fill",
      h: host("a", { allocated: { vcpus: 14, memoryMb: 28672, diskGb: 490 } }),
      v: vm("v"),
      filter: undefined,
    },
    {
      name: "memory short",
      h: host("a", { allocated: { vcpus: 0, memoryMb: 30000, diskGb: 0 } }),
      v: vm("v"),
      filter: "memory",
    },
    {
      name: "disk short",
      h: host("a", { allocated: { vcpus: 0, memoryMb: 0, diskGb: 495 } }),
      v: vm("v"),
      filter: "disk",
    },
    {
      name: "first failing filter counts (cordoned and full)",
      h: host("a", { cordoned: true, allocated: { vcpus: 16, memoryMb: 32768, diskGb: 500 } }),
      v: vm("v"),
      filter: "cordoned",
    },
    {
      name: "not-ready before cordoned",
      h: host("a", { cordoned: true, ready: false }),
      v: vm("v"),
      filter: "not-ready",
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const { fit, filtered } = filterHosts([c.h], c.v);
      if (c.filter === undefined) {
        expect(fit).toEqual([c.h]);
        expect(filtered).toEqual({});
      } else {
        expect(fit).toEqual([]);
        expect(filtered).toEqual({ [c.filter]: 1 });
      }
    });
  }

  it("counts every rejected host once and keeps fit hosts in input order", () => {
    const hosts = [
      host("c"),
      host("x", { cordoned: true }),
      host("a"),
      host("y", { cordoned: true }),
      host("z", { allocated: { vcpus: 0, memoryMb: 32000, diskGb: 0 } }),
    ];
    const { fit, filtered } = filterHosts(hosts, vm("v"));
    expect(fit.map((h) => h.name)).toEqual(["c", "a"]);
    expect(filtered).toEqual({ cordoned: 2, memory: 1 });
  });
});

describe("scoreHost and policies", () => {
  const empty = host("empty");
  const half = host("half", { allocated: { vcpus: 8, memoryMb: 16384, diskGb: 250 }, vmCount: 4 });

  it("spread prefers the least utilised host, binpack the most", () => {
    expect(scoreHost(empty, vm("v"), "spread")).toBeGreaterThan(scoreHost(half, vm("v"), "spread"));
    expect(scoreHost(half, vm("v"), "binpack")).toBeGreaterThan(scoreHost(empty, vm("v"), "binpack"));
    expect(placedOn(scheduleOne([half, empty], vm("v"), "spread"))).toBe("id-empty");
    expect(placedOn(scheduleOne([empty, half], vm("v"), "binpack"))).toBe("id-half");
  });

  it("utilisation is measured after placing: 0..100", () => {
    const full = vm("v", { resources: { vcpus: 16, memoryMb: 32768, diskGb: 500 } });
    expect(scoreHost(empty, full, "binpack")).toBe(100);
    expect(scoreHost(empty, full, "spread")).toBe(0);
    expect(scoreHost(empty, vm("z", { resources: { vcpus: 0, memoryMb: 0, diskGb: 0 } }), "spread")).toBe(100);
  });

  it("a host with zero capacity in one dimension is judged on the others", () => {
    const noDisk = host("nd", { capacity: { vcpus: 4, memoryMb: 4096, diskGb: 0 } });
    const v = vm("v", { resources: { vcpus: 2, memoryMb: 2048, diskGb: 0 } });
    expect(scoreHost(noDisk, v, "binpack")).toBe(50);
  });

  it("network locality wins over a small utilisation difference", () => {
    const local = host("local", {
      allocated: { vcpus: 2, memoryMb: 4096, diskGb: 10 },
      vmCount: 1,
      networks: { "net-1": 1 },
    });
    const v = vm("v", { networkId: "net-1" });
    expect(placedOn(scheduleOne([empty, local], v, "spread"))).toBe("id-local");
    // Without the network the emptier host wins.
    expect(placedOn(scheduleOne([empty, local], vm("v"), "spread"))).toBe("id-empty");
  });

  it("network locality does not outweigh a heavily loaded host under spread", () => {
    const busy = host("busy", {
      allocated: { vcpus: 14, memoryMb: 28000, diskGb: 450 },
      vmCount: 7,
      networks: { "net-1": 1 },
    });
    expect(placedOn(scheduleOne([busy, empty], vm("v", { networkId: "net-1" }), "spread"))).toBe("id-empty");
  });

  it("anti-affinity spreads a group even under binpack", () => {
    const a = host("a", { allocated: { vcpus: 8, memoryMb: 16384, diskGb: 250 }, groups: { web: 1 } });
    const b = host("b");
    expect(placedOn(scheduleOne([a, b], vm("v", { antiAffinityGroup: "web" }), "binpack"))).toBe("id-b");
    expect(placedOn(scheduleOne([a, b], vm("v", { antiAffinityGroup: "db" }), "binpack"))).toBe("id-a");
  });

  it("anti-affinity still places when every host carries the group, on the one with fewest", () => {
    const a = host("a", { groups: { web: 2 } });
    const b = host("b", { groups: { web: 1 }, allocated: { vcpus: 12, memoryMb: 28000, diskGb: 400 } });
    const d = scheduleOne([a, b], vm("v", { antiAffinityGroup: "web" }), "spread");
    expect(placedOn(d)).toBe("id-b");
    expect(d.placed && d.score).toBeLessThan(0);
    expect(scoreHost(a, vm("v", { antiAffinityGroup: "web" }), "spread")).toBeLessThan(-ANTI_AFFINITY_PENALTY);
  });

  it("a batch of a group lands on distinct hosts while it can", () => {
    const hosts = [host("a"), host("b"), host("c")];
    const vms = ["1", "2", "3", "4"].map((id) => vm(id, { antiAffinityGroup: "web" }));
    const { decisions, hosts: after } = scheduleBatch(hosts, vms, "binpack");
    expect(decisions.slice(0, 3).map(placedOn).sort()).toEqual(["id-a", "id-b", "id-c"]);
    expect(decisions[3]?.placed).toBe(true);
    expect(after.map((h) => h.groups["web"])).toEqual([2, 1, 1]);
  });

  it("ties break by host name, then id", () => {
    const hosts = [host("b"), host("a", { id: "z" }), host("a", { id: "y" })];
    expect(placedOn(scheduleOne(hosts, vm("v"), "spread"))).toBe("y");
    expect(placedOn(scheduleOne([host("b"), host("c")], vm("v"), "binpack"))).toBe("id-b");
  });
});

describe("unplaced reasons", () => {
  it("says when no hosts are registered", () => {
    const d = scheduleOne([], vm("v"), "spread");
    expect(reason(d)).toBe("no hosts registered");
    expect(d.placed || d.filtered).toEqual({});
  });

  it("lists what removed each host, in filter order", () => {
    const hosts = [
      host("a", { allocated: { vcpus: 0, memoryMb: 30000, diskGb: 0 } }),
      host("b", { cordoned: true }),
      host("c", { allocated: { vcpus: 0, memoryMb: 31000, diskGb: 0 } }),
    ];
    const d = scheduleOne(hosts, vm("v"), "spread");
    expect(reason(d)).toBe("no host fits vm (2 vCPU, 4096 MB, 10 GB): 1 cordoned, 2 lack memory");
    expect(d.placed || d.filtered).toEqual({ cordoned: 1, memory: 2 });
  });

  it("names the driver, labels and singular forms", () => {
    const hosts = [host("a", { drivers: ["qemu"] }), host("b", { ready: false }), host("c", { drivers: ["firecracker"] })];
    const d = scheduleOne(hosts, vm("v", { driver: "firecracker", hostSelector: { zone: "z1" } }), "spread");
    expect(reason(d)).toBe(
      "no host fits vm (2 vCPU, 4096 MB, 10 GB): 1 not ready, 1 lacks driver firecracker, 1 lacks labels zone=z1",
    );
  });

  it("says when the pinned host does not exist", () => {
    const d = scheduleOne([host("a"), host("b", { cordoned: true })], vm("v", { host: "nope" }), "spread");
    expect(reason(d)).toBe("no host fits vm (2 vCPU, 4096 MB, 10 GB): pinned host nope is not registered");
  });

  it("explains why the pinned host was rejected", () => {
    const d = scheduleOne([host("a"), host("b", { cordoned: true })], vm("v", { host: "b" }), "spread");
    expect(reason(d)).toBe("no host fits vm (2 vCPU, 4096 MB, 10 GB): 1 cordoned, 1 excluded by pin to host b");
  });

  it("a later VM that no longer fits in a batch gets a reason", () => {
    const big = vm("v", { resources: { vcpus: 10, memoryMb: 1024, diskGb: 1 } });
    const { decisions } = scheduleBatch([host("a")], [big, { ...big, id: "w" }], "spread");
    expect(placedOn(decisions[0]!)).toBe("id-a");
    expect(reason(decisions[1]!)).toBe("no host fits vm (10 vCPU, 1024 MB, 1 GB): 1 lacks vCPUs");
  });
});

describe("applyPlacement / releasePlacement", () => {
  const v = vm("v", { antiAffinityGroup: "web", networkId: "net-1" });

  it("adds resources, count, group and network", () => {
    const h = host("a", { groups: { web: 1 }, vmCount: 1, allocated: { vcpus: 1, memoryMb: 1, diskGb: 1 } });
    const after = applyPlacement(h, v);
    expect(after.allocated).toEqual({ vcpus: 3, memoryMb: 4097, diskGb: 11 });
    expect(after.vmCount).toBe(2);
    expect(after.groups).toEqual({ web: 2 });
    expect(after.networks).toEqual({ "net-1": 1 });
    // Input untouched.
    expect(h.groups).toEqual({ web: 1 });
    expect(h.allocated).toEqual({ vcpus: 1, memoryMb: 1, diskGb: 1 });
  });

  it("release undoes apply exactly", () => {
    const h = host("a", { networks: { other: 3 } });
    expect(releasePlacement(applyPlacement(h, v), v)).toEqual(h);
  });

  it("release never goes below zero and drops emptied keys", () => {
    const h = host("a", { vmCount: 0, groups: { web: 1 } });
    const after = releasePlacement(releasePlacement(h, v), v);
    expect(after.allocated).toEqual({ vcpus: 0, memoryMb: 0, diskGb: 0 });
    expect(after.vmCount).toBe(0);
    expect(after.groups).toEqual({});
    expect(after.networks).toEqual({});
  });

  it("empty group or network names are not recorded", () => {
    const after = applyPlacement(host("a"), vm("v"));
    expect(after.groups).toEqual({});
    expect(after.networks).toEqual({});
  });
});
