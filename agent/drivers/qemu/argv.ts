// The QEMU command line, pure: a spec and its paths in, argv out. microvm exposes devices
// over virtio-mmio only (hence the *-device variants); vCPU and memory limits are QEMU's own
// -smp and -m. The serial console is a unix socket (noidctl console attaches there) that
// also writes everything the guest prints to a file (boot log, failure reasons, noidctl
// logs); exec and control never use it: QMP and the guest agent have their own sockets.
import type { VmCreateSpec } from "../driver.js";
import { kernelCmdline } from "./cmdline.js";
import type { VmPaths } from "./names.js";

export type Accel = "kvm" | "tcg";

export interface QemuBoot {
  kernel: string;
  initrd: string;
  /** The overlay's format is always qcow2. */
  accel: Accel;
  tap: string;
  binary?: string;
}

/** Commas in QEMU option values are escaped by doubling them. */
export const qemuEscape = (v: string): string => v.replaceAll(",", ",,");

export function qemuArgv(spec: VmCreateSpec, paths: VmPaths, boot: QemuBoot): string[] {
  const e = qemuEscape;
  return [
    boot.binary ?? "qemu-system-x86_64",
    "-name", `noid-${e(spec.id)}`,
    "-M", "microvm",
    "-accel", boot.accel,
    // TCG: "max" emulates every feature QEMU can; KVM: the host's CPU as is.
    "-cpu", boot.accel === "kvm" ? "host" : "max",
    "-smp", String(Math.max(1, spec.vcpus)),
    "-m", `${Math.max(64, spec.memoryMb)}M`,
    "-nodefaults", "-no-user-config", "-display", "none",
    // A guest reboot or panic ends the process; the driver reports it instead of looping.
    "-no-reboot",
    "-kernel", boot.kernel,
    "-initrd", boot.initrd,
    "-append", kernelCmdline(spec.net, { rootDevice: "/dev/vda" }),
    // Unconnected, QEMU drops the output (the guest never blocks) but still logs it.
    "-chardev", `socket,id=con,path=${e(paths.consoleSocket)},server=on,wait=off,logfile=${e(paths.serialLog)}`,
    "-serial", "chardev:con",
    "-qmp", `unix:${e(paths.qmpSocket)},server=on,wait=off`,
    "-drive", `id=root,file=${e(paths.overlay)},format=qcow2,if=none,cache=writeback`,
    "-device", "virtio-blk-device,drive=root",
    "-netdev", `tap,id=net0,ifname=${e(boot.tap)},script=no,downscript=no`,
    "-device", `virtio-net-device,netdev=net0,mac=${spec.net.mac}`,
    "-device", "virtio-serial-device",
    "-chardev", `socket,id=ga,path=${e(paths.agentSocket)},server=on,wait=off`,
    "-device", "virtserialport,chardev=ga,name=org.noid.agent",
  ];
}

/** `qemu-img create` for a VM's copy-on-write root disk over the shared base image. */
export function overlayArgv(base: string, baseFormat: string, overlay: string, sizeBytes?: number, qemuImg = "qemu-img"): string[] {
  return [qemuImg, "create", "-q", "-f", "qcow2", "-F", baseFormat, "-b", base, overlay, ...(sizeBytes ? [String(sizeBytes)] : [])];
}

/** KVM works when QEMU can set up a microvm vCPU on it (an openable /dev/kvm is not enough). */
export function kvmProbeArgv(binary = "qemu-system-x86_64"): string[] {
  return [binary, "-accel", "kvm", "-M", "microvm", "-cpu", "host", "-S", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "stdio"];
}

export function chooseAccel(pref: "auto" | Accel, kvmWorks: boolean): Accel {
  if (pref !== "auto") return pref;
  return kvmWorks ? "kvm" : "tcg";
}

/** Single-quoted for /bin/sh (QEMU runs exec: migration URIs through `sh -c`). */
const shQuote = (v: string): string => `'${v.replaceAll("'", "'\\''")}'`;

/** QEMU 7.2 has no file: migration URI; exec: with cat writes and reads a plain file. */
export function migrateUri(file: string): string {
  return `exec:cat > ${shQuote(file)}`;
}

/** Arguments that make QEMU load a saved state from `file` instead of booting. */
export function incomingArgv(file: string): string[] {
  return ["-incoming", `exec:cat ${shQuote(file)}`];
}
