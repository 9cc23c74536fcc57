// agent/drivers/firecracker/config.ts and netns.ts: the API calls and network steps, as data.
// Every body is also checked against the fake's tables of the documented API shapes.
import { describe, expect, it } from "vitest";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";
import { bootArgs, bootSequence, ipBootArg, mmdsContents, netmask, restoreSequence } from "../../agent/drivers/firecracker/config.js";
import { chrootLayout } from "../../agent/drivers/firecracker/jailer.js";
import { netPlan } from "../../agent/drivers/firecracker/netns.js";
import { SHAPES, validate } from "../helpers/fake-firecracker.js";

const spec: VmCreateSpec = {
  id: "vm-abc",
  vcpus: 2,
  memoryMb: 256,
  diskGb: 1,
  image: "base",
  net: { mac: "02:00:00:00:00:07", ip: "10.1.2.7", prefixLen: 24, mtu: 1420, bridge: "vmbr1" },
};
const layout = chrootLayout("/srv/jailer", "/usr/local/bin/firecracker", "h1-fc-0123456789");
const off = { netMtu: false, networkOverrides: false };
const on = { netMtu: true, networkOverrides: true };

const SHAPE_OF: Record<string, keyof typeof SHAPES | undefined> = {
  "/logger": "Logger",
  "/metrics": "Metrics",
  "/machine-config": "MachineConfiguration",
  "/boot-source": "BootSource",
  "/drives/rootfs": "Drive",
  "/network-interfaces/eth0": "NetworkInterface",
  "/vsock": "Vsock",
  "/mmds/config": "MmdsConfig",
  "/actions": "InstanceActionInfo",
  "/snapshot/load": "SnapshotLoadParams",
  "/mmds": undefined, // free-form JSON object
};

describe("kernel arguments", () => {
  it("computes netmasks", () => {
    expect([0, 8, 20, 24, 30, 32].map(netmask)).toEqual(["0.0.0.0", "255.0.0.0", "255.255.240.0", "255.255.255.0", "255.255.255.252", "255.255.255.255"]);
    expect(() => netmask(33)).toThrow(RangeError);
  });

  it("gives the guest a static address with ip=, and none when the VM has no address yet", () => {
    expect(ipBootArg(spec.net, "vm-abc")).toBe("ip=10.1.2.7:::255.255.255.0:vm-abc:eth0:off");
    expect(ipBootArg({ ...spec.net, ip: "" }, "x")).toBeUndefined();
    expect(bootArgs(spec, "vm-abc", "quiet")).toBe("console=ttyS0 reboot=k panic=1 ip=10.1.2.7:::255.255.255.0:vm-abc:eth0:off quiet");
  });

  it("puts the VM's network config into MMDS", () => {
    expect(mmdsContents(spec)).toEqual({
      noid: { vm_id: "vm-abc", network: { interface: "eth0", mac: "02:00:00:00:00:07", ipv4: { address: "10.1.2.7", prefix_len: 24 }, mtu: 1420 } },
    });
  });
});

describe("boot sequence", () => {
  it("configures in order and starts last, with paths inside the jail", () => {
    const calls = bootSequence({ spec, layout, tap: "tap0", features: off });
    expect(calls.map((c) => `${c.method} ${c.path}`)).toEqual([
      "PUT /logger",
      "PUT /metrics",
      "PUT /machine-config",
      "PUT /boot-source",
      "PUT /drives/rootfs",
      "PUT /network-interfaces/eth0",
      "PUT /vsock",
      "PUT /mmds/config",
      "PUT /mmds",
      "PUT /actions",
    ]);
    const body = (p: string): unknown => calls.find((c) => c.path === p)?.body;
    expect(body("/machine-config")).toEqual({ vcpu_count: 2, mem_size_mib: 256, smt: false });
    expect(body("/boot-source")).toEqual({
      kernel_image_path: "/vmlinux",
      boot_args: "console=ttyS0 reboot=k panic=1 ip=10.1.2.7:::255.255.255.0:vm-abc:eth0:off",
    });
    expect(body("/drives/rootfs")).toEqual({ drive_id: "rootfs", path_on_host: "/rootfs.ext4", is_root_device: true, is_read_only: false });
    // mtu is left out unless the Firecracker version has the field.
    expect(body("/network-interfaces/eth0")).toEqual({ iface_id: "eth0", host_dev_name: "tap0", guest_mac: "02:00:00:00:00:07" });
    expect(body("/vsock")).toEqual({ guest_cid: 3, uds_path: "/run/vsock.sock" });
    expect(body("/mmds/config")).toEqual({ version: "V2", network_interfaces: ["eth0"] });
    expect(body("/actions")).toEqual({ action_type: "InstanceStart" });
  });

  it("sends mtu, rate limiters and the initrd when asked", () => {
    const bucket = { size: 1_000_000, refill_time: 100 };
    const calls = bootSequence({ spec, layout, tap: "tap0", features: on, hasInitrd: true, netLimits: { rx: { bandwidth: bucket }, tx: { ops: bucket } } });
    expect(calls.find((c) => c.path === "/network-interfaces/eth0")?.body).toEqual({
      iface_id: "eth0",
      host_dev_name: "tap0",
      guest_mac: "02:00:00:00:00:07",
      mtu: 1420,
      rx_rate_limiter: { bandwidth: bucket },
      tx_rate_limiter: { ops: bucket },
    });
    expect(calls.find((c) => c.path === "/boot-source")?.body).toMatchObject({ initrd_path: "/initrd" });
  });

  it("produces only bodies that match the documented API shapes", () => {
    for (const features of [off, on]) {
      const calls = [...bootSequence({ spec, layout, tap: "tap0", features, hasInitrd: true }), ...restoreSequence({ layout, tap: "tap0", features })];
      for (const c of calls) {
        expect(c.path in SHAPE_OF, c.path).toBe(true);
        const shape = SHAPE_OF[c.path];
        if (shape) expect(validate(c.body, { t: "object", props: SHAPES[shape] }, shape)).toEqual([]);
      }
    }
  });
});

describe("restore sequence", () => {
  it("loads from the jail's snapshot files into a fresh process, resuming, with the TAP override when supported", () => {
    expect(restoreSequence({ layout, tap: "tap0", features: on })).toEqual([
      { method: "PUT", path: "/logger", body: { log_path: "/log/firecracker.log", level: "Info", show_level: true, show_log_origin: false } },
      { method: "PUT", path: "/metrics", body: { metrics_path: "/log/metrics.json" } },
      {
        method: "PUT",
        path: "/snapshot/load",
        body: {
          snapshot_path: "/snapshot/vmstate",
          mem_backend: { backend_type: "File", backend_path: "/snapshot/mem" },
          resume_vm: true,
          network_overrides: [{ iface_id: "eth0", host_dev_name: "tap0" }],
        },
      },
    ]);
    expect(restoreSequence({ layout, tap: "tap0", features: off })[2]?.body).not.toHaveProperty("network_overrides");
  });
});

describe("the validator built from the API tables", () => {
  it("rejects missing, mistyped, out-of-range and unknown fields, naming each", () => {
    const mc = { t: "object", props: SHAPES.MachineConfiguration } as const;
    expect(validate({ vcpu_count: 2, mem_size_mib: 128 }, mc, "mc")).toEqual([]);
    expect(validate({ vcpu_count: 0, mem_size_mib: "128", foo: 1 }, mc, "mc")).toEqual([
      "mc.foo: unknown field",
      "mc.vcpu_count: 0 is below 1",
      "mc.mem_size_mib: expected an integer, got string",
    ]);
    expect(validate({ mem_size_mib: 1.5 }, mc, "mc")).toEqual(["mc.vcpu_count: missing required field", "mc.mem_size_mib: expected an integer, got 1.5"]);
    const net = { t: "object", props: SHAPES.NetworkInterface } as const;
    expect(validate({ iface_id: "eth0", host_dev_name: "tap0", rx_rate_limiter: { bandwidth: { size: 1 } } }, net, "ni")).toEqual([
      "ni.rx_rate_limiter.bandwidth.refill_time: missing required field",
    ]);
    expect(validate({ state: "Stopped" }, { t: "object", props: SHAPES.Vm }, "vm")).toEqual(["vm.state: \"Stopped\" is not one of Paused, Resumed"]);
  });
});

describe("network plan", () => {
  const names = { netns: "h1-fc-0123456789", hostPort: "nf0123456789" };
  const owner = { uid: 100, gid: 101 };
  const text = (steps: ReturnType<typeof netPlan>): string[] => steps.map((s) => `${s.where}: ${s.argv.join(" ")}`);

  it("makes the netns, TAP, bridge and veth from nothing", () => {
    expect(text(netPlan(names, spec.net, owner, { netnsExists: false, vmLinks: new Set(), hostPortExists: false }))).toEqual([
      "root: ip netns add h1-fc-0123456789",
      "vm: ip link set lo up",
      "vm: ip tuntap add dev tap0 mode tap user 100 group 101",
      "vm: ip link add br0 type bridge",
      "host: ip link add nf0123456789 type veth peer name veth0 netns h1-fc-0123456789",
      "vm: ip link set tap0 mtu 1420",
      "vm: ip link set veth0 mtu 1420",
      "vm: ip link set br0 mtu 1420",
      "host: ip link set nf0123456789 mtu 1420",
      "vm: ip link set tap0 master br0",
      "vm: ip link set veth0 master br0",
      "vm: ip link set tap0 up",
      "vm: ip link set veth0 up",
      "vm: ip link set br0 up",
      "host: ip link set nf0123456789 master vmbr1",
      "host: ip link set nf0123456789 up",
    ]);
  });

  it("creates nothing that exists, and remakes a half-made veth pair", () => {
    const all = new Set(["lo", "tap0", "br0", "veth0"]);
    const done = text(netPlan(names, { mac: "x", ip: "" }, owner, { netnsExists: true, vmLinks: all, hostPortExists: true }));
    expect(done.filter((s) => / (add|del) /.test(s))).toEqual([]);
    const half = text(netPlan(names, { mac: "x", ip: "" }, owner, { netnsExists: true, vmLinks: new Set(["lo", "tap0", "br0"]), hostPortExists: true }));
    expect(half.filter((s) => / (add|del) /.test(s))).toEqual([
      "host: ip link del nf0123456789",
      "host: ip link add nf0123456789 type veth peer name veth0 netns h1-fc-0123456789",
    ]);
  });
});
