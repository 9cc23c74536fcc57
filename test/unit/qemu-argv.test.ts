import { describe, expect, it } from "vitest";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";
import { chooseAccel, kvmProbeArgv, overlayArgv, qemuArgv, qemuEscape } from "../../agent/drivers/qemu/argv.js";
import { gatewayFor, ipArg, isIpv4, kernelCmdline, netmask } from "../../agent/drivers/qemu/cmdline.js";
import { exitReason } from "../../agent/drivers/qemu/failure.js";
import { DEFAULT_IMAGE, imageCandidates, overlaySize, parseImageInfo } from "../../agent/drivers/qemu/image.js";
import { MAX_SOCKET_PATH, tapName, vmPaths } from "../../agent/drivers/qemu/names.js";

const spec: VmCreateSpec = {
  id: "vm-0001",
  vcpus: 2,
  memoryMb: 256,
  diskGb: 2,
  image: "",
  net: { mac: "02:00:00:00:00:01", ip: "10.1.2.7", prefixLen: 24 },
};
const paths = vmPaths("/var/lib/noid/qemu/vms", spec.id);

/** The value following `flag` each time it occurs. */
const values = (argv: string[], flag: string): string[] => argv.flatMap((a, i) => (a === flag ? [argv[i + 1]!] : []));

describe("qemuArgv", () => {
  const argv = qemuArgv(spec, paths, { kernel: "/g/vmlinuz", initrd: "/g/initramfs.cpio.gz", accel: "tcg", tap: tapName(spec.id) });

  it("runs a microvm with the spec's vCPUs and memory under the chosen accelerator", () => {
    expect(argv[0]).toBe("qemu-system-x86_64");
    expect(values(argv, "-M")).toEqual(["microvm"]);
    expect(values(argv, "-accel")).toEqual(["tcg"]);
    expect(values(argv, "-cpu")).toEqual(["max"]);
    expect(values(argv, "-smp")).toEqual(["2"]);
    expect(values(argv, "-m")).toEqual(["256M"]);
    expect(argv).toContain("-no-reboot");
    expect(argv).toContain("-nodefaults");
    const kvm = qemuArgv(spec, paths, { kernel: "k", initrd: "i", accel: "kvm", tap: "t", binary: "/opt/qemu" });
    expect(kvm[0]).toBe("/opt/qemu");
    expect(values(kvm, "-cpu")).toEqual(["host"]);
  });

  it("uses virtio-mmio devices: the overlay disk, the TAP with the spec's MAC, the agent's serial port", () => {
    const devices = values(argv, "-device");
    expect(devices).toEqual([
      "virtio-blk-device,drive=root",
      `virtio-net-device,netdev=net0,mac=${spec.net.mac}`,
      "virtio-serial-device",
      "virtserialport,chardev=ga,name=org.noid.agent",
    ]);
    expect(values(argv, "-drive")).toEqual([`id=root,file=${paths.overlay},format=qcow2,if=none,cache=writeback`]);
    expect(values(argv, "-netdev")).toEqual([`tap,id=net0,ifname=${tapName(spec.id)},script=no,downscript=no`]);
    expect(values(argv, "-qmp")).toEqual([`unix:${paths.qmpSocket},server=on,wait=off`]);
    // The serial console is a socket (noidctl console) that also logs to serial.log (noidctl logs).
    expect(values(argv, "-chardev")).toEqual([
      `socket,id=con,path=${paths.consoleSocket},server=on,wait=off,logfile=${paths.serialLog}`,
      `socket,id=ga,path=${paths.agentSocket},server=on,wait=off`,
    ]);
    expect(values(argv, "-serial")).toEqual(["chardev:con"]);
  });

  it("boots with the console on ttyS0, the TSC frequency TCG needs, the root disk and the VM's address", () => {
    const append = values(argv, "-append")[0]!.split(" ");
    expect(append).toEqual(expect.arrayContaining(["console=ttyS0", "tsc_early_khz=2600000", "noid.root=/dev/vda", "ip=10.1.2.7::10.1.2.1:255.255.255.0::eth0:off"]));
    expect(values(argv, "-kernel")).toEqual(["/g/vmlinuz"]);
    expect(values(argv, "-initrd")).toEqual(["/g/initramfs.cpio.gz"]);
  });

  it("escapes commas in option values so a path cannot add options", () => {
    expect(qemuEscape("/a,b/c")).toBe("/a,,b/c");
    const odd = qemuArgv(spec, vmPaths("/x,format=raw", spec.id), { kernel: "k", initrd: "i", accel: "tcg", tap: "t" });
    expect(values(odd, "-drive")[0]).toContain("file=/x,,format=raw/");
  });
});

describe("kernel command line", () => {
  it("derives netmask and gateway from the prefix", () => {
    expect(netmask(24)).toBe("255.255.255.0");
    expect(netmask(16)).toBe("255.255.0.0");
    expect(netmask(20)).toBe("255.255.240.0");
    expect(netmask(32)).toBe("255.255.255.255");
    expect(netmask(0)).toBe("0.0.0.0");
    expect(gatewayFor("10.1.2.7", 24)).toBe("10.1.2.1");
    expect(gatewayFor("172.16.37.200", 20)).toBe("172.16.32.1");
    expect(gatewayFor("10.0.0.1", 32)).toBe("");
  });

  it("omits ip= when the VM has no address yet, and the gateway when the VM is the gateway", () => {
    expect(ipArg({ mac: "m", ip: "" })).toBeUndefined();
    expect(kernelCmdline({ mac: "m", ip: "" })).not.toContain("ip=");
    expect(ipArg({ mac: "m", ip: "10.9.0.1", prefixLen: 24 })).toBe("ip=10.9.0.1:::255.255.255.0::eth0:off");
    expect(ipArg({ mac: "m", ip: "10.9.0.5" })).toBe("ip=10.9.0.5::10.9.0.1:255.255.255.0::eth0:off");
    expect(isIpv4("10.9.0.5")).toBe(true);
    expect(isIpv4("10.9.0.256")).toBe(false);
  });
});

describe("names and paths", () => {
  it("gives each VM a TAP name of at most 15 characters, distinct for ids with a shared prefix", () => {
    const names = new Set(Array.from({ length: 200 }, (_, i) => tapName(`vm-0192f3a4-${i}`)));
    expect(names.size).toBe(200);
    for (const n of names) expect(n.length).toBeLessThanOrEqual(15);
    expect(tapName("x")).toBe(tapName("x"));
  });

  it("keeps every file of a VM in its own directory, sockets within sun_path", () => {
    const p = vmPaths("/var/lib/noid/qemu/vms", "vm-1");
    const other = vmPaths("/var/lib/noid/qemu/vms", "vm-2");
    for (const f of [p.overlay, p.qmpSocket, p.agentSocket, p.serialLog, p.qemuLog]) expect(f.startsWith(`${p.dir}/`)).toBe(true);
    expect(p.dir).not.toBe(other.dir);
    expect(p.qmpSocket.length).toBeLessThanOrEqual(MAX_SOCKET_PATH);
  });
});

describe("images", () => {
  it("resolves names inside the images directory and refuses paths", () => {
    expect(imageCandidates("", "/g")).toEqual([`/g/${DEFAULT_IMAGE}`]);
    expect(imageCandidates("default", "/g")).toEqual([`/g/${DEFAULT_IMAGE}`]);
    expect(imageCandidates("debian-12", "/img")).toContain("/img/debian-12.qcow2");
    for (const bad of ["/etc/passwd", "../x", "a/b", "..", "x..y"]) expect(() => imageCandidates(bad, "/img")).toThrow(/not an image name/);
  });

  it("sizes the overlay to the VM's disk, never below its base", () => {
    const base = parseImageInfo(JSON.stringify({ format: "raw", "virtual-size": 64 * 2 ** 20 }));
    expect(base).toEqual({ format: "raw", virtualSize: 64 * 2 ** 20 });
    expect(overlaySize(1, base)).toBe(2 ** 30);
    expect(overlaySize(0, base)).toBeUndefined();
    expect(overlayArgv("/g/base.ext4", "raw", "/v/root.qcow2", 2 ** 30)).toEqual([
      "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/g/base.ext4", "/v/root.qcow2", String(2 ** 30),
    ]);
    expect(overlayArgv("/b", "qcow2", "/o")).toEqual(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "/b", "/o"]);
  });
});

describe("accelerator and failures", () => {
  it("uses KVM only when it works, unless told", () => {
    expect(chooseAccel("auto", true)).toBe("kvm");
    expect(chooseAccel("auto", false)).toBe("tcg");
    expect(chooseAccel("tcg", true)).toBe("tcg");
    expect(chooseAccel("kvm", false)).toBe("kvm");
    expect(kvmProbeArgv()).toEqual(expect.arrayContaining(["-accel", "kvm", "-S", "-monitor", "stdio"]));
  });

  it("explains an exit from QEMU's last error and the console's tail", () => {
    const r = exitReason(42, "qemu-system-x86_64: -netdev tap: could not open /dev/net/tun\n", "a\nb\nKernel panic - not syncing: VFS\n\n");
    expect(r).toBe("qemu process 42 exited; qemu: qemu-system-x86_64: -netdev tap: could not open /dev/net/tun; console: Kernel panic - not syncing: VFS | b");
    expect(exitReason(7, "", "")).toBe("qemu process 7 exited");
    const panic = "[ 1.2] Kernel panic - not syncing: VFS: Unable to mount root fs\n[ 1.3] Call Trace:\n[ 1.4]  ret_from_fork\n[ 1.5] Kernel Offset: 0x0\n";
    expect(exitReason(8, "", panic)).toBe("qemu process 8 exited; console: Kernel panic - not syncing: VFS: Unable to mount root fs | [ 1.4]  ret_from_fork | [ 1.5] Kernel Offset: 0x0");
  });
});
