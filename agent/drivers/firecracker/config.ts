// What to tell Firecracker, as data: the ordered API calls that boot a VM or restore one
// from a snapshot. Pure, so the exact sequence is unit-tested and the driver only sends it.
//
// Order: logger and metrics first (the only resources Firecracker accepts before a snapshot
// load, and configured first so the rest of the calls are logged), then machine-config,
// boot-source, drives, network interfaces, vsock, MMDS config (it names interfaces, which
// must exist by then) and contents, and InstanceStart last.
import type { VmCreateSpec, VmNetSpec } from "../driver.js";
import { authorizedKeysFile } from "../ssh-keys.js";
import type { ApiCall, Drive, MmdsConfig, NetworkInterface, RateLimiter, SnapshotLoadParams } from "./api-types.js";
import type { ChrootLayout } from "./jailer.js";

export const IFACE_ID = "eth0";
export const ROOT_DRIVE_ID = "rootfs";
/** Guest CID 3 is the lowest allowed; vsock here is emulated over a per-VM unix socket, so CIDs need not be unique per host. */
export const GUEST_CID = 3;
const MIB = 1;

/** Fields whose support depends on the Firecracker version (see README.md). */
export interface ApiFeatures {
  /** Send NetworkInterface.mtu (present in the 1.17.0-dev swagger, absent in 1.9.0-dev). */
  netMtu: boolean;
  /** Send SnapshotLoadParams.network_overrides (same). */
  networkOverrides: boolean;
}

export interface ConfigInput {
  spec: VmCreateSpec;
  layout: ChrootLayout;
  /** Name of the TAP device inside the VM's netns. */
  tap: string;
  features: ApiFeatures;
  hasInitrd?: boolean;
  netLimits?: { rx?: RateLimiter; tx?: RateLimiter };
  /** Appended to the kernel command line. */
  extraBootArgs?: string;
}

export function netmask(prefixLen: number): string {
  if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32) throw new RangeError(`bad prefix length ${prefixLen}`);
  const bits = prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
  return [24, 16, 8, 0].map((s) => (bits >>> s) & 0xff).join(".");
}

/**
 * The kernel's static IP argument, ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>.
 * No gateway: the VM spec carries none; the guest learns routes from MMDS if it needs them.
 */
export function ipBootArg(net: VmNetSpec, hostname: string): string | undefined {
  if (!net.ip) return undefined;
  return `ip=${net.ip}:::${netmask(net.prefixLen ?? 24)}:${hostname}:${IFACE_ID}:off`;
}

/** reboot=k makes a guest reboot (SendCtrlAltDel) end the Firecracker process, which is how stop works. */
export function bootArgs(spec: VmCreateSpec, hostname: string, extra?: string): string {
  const args = ["console=ttyS0", "reboot=k", "panic=1"];
  const ip = ipBootArg(spec.net, hostname);
  if (ip) args.push(ip);
  if (extra) args.push(extra);
  return args.join(" ");
}

/** What the guest reads from MMDS (V2: token first) to configure itself beyond the kernel's ip=. */
export function mmdsContents(spec: VmCreateSpec): Record<string, unknown> {
  return {
    noid: {
      vm_id: spec.id,
      network: {
        interface: IFACE_ID,
        mac: spec.net.mac,
        ...(spec.net.ip ? { ipv4: { address: spec.net.ip, prefix_len: spec.net.prefixLen ?? 24 } } : {}),
        ...(spec.net.mtu ? { mtu: spec.net.mtu } : {}),
      },
      // The owner's SSH public keys, for the guest's init to write to authorized_keys.
      ...(spec.sshAuthorizedKeys?.length ? { ssh_authorized_keys: authorizedKeysFile(spec.sshAuthorizedKeys).trimEnd().split("\n") } : {}),
    },
  };
}

export function networkInterface(input: ConfigInput): NetworkInterface {
  const { spec, tap, features, netLimits } = input;
  return {
    iface_id: IFACE_ID,
    host_dev_name: tap,
    guest_mac: spec.net.mac,
    ...(features.netMtu && spec.net.mtu ? { mtu: spec.net.mtu } : {}),
    ...(netLimits?.rx ? { rx_rate_limiter: netLimits.rx } : {}),
    ...(netLimits?.tx ? { tx_rate_limiter: netLimits.tx } : {}),
  };
}

const put = (path: string, body: unknown): ApiCall => ({ method: "PUT", path, body });

/** Logger and metrics: the prefix of both sequences. */
function observability(layout: ChrootLayout): ApiCall[] {
  return [
    put("/logger", { log_path: layout.log.jail, level: "Info", show_level: true, show_log_origin: false }),
    put("/metrics", { metrics_path: layout.metrics.jail }),
  ];
}

export function bootSequence(input: ConfigInput): ApiCall[] {
  const { spec, layout } = input;
  const hostname = spec.id.slice(0, 63);
  const drive: Drive = { drive_id: ROOT_DRIVE_ID, path_on_host: layout.rootfs.jail, is_root_device: true, is_read_only: false };
  const mmds: MmdsConfig = { version: "V2", network_interfaces: [IFACE_ID] };
  return [
    ...observability(layout),
    put("/machine-config", { vcpu_count: spec.vcpus, mem_size_mib: spec.memoryMb * MIB, smt: false }),
    put("/boot-source", {
      kernel_image_path: layout.kernel.jail,
      boot_args: bootArgs(spec, hostname, input.extraBootArgs),
      ...(input.hasInitrd ? { initrd_path: layout.initrd.jail } : {}),
    }),
    put(`/drives/${ROOT_DRIVE_ID}`, drive),
    put(`/network-interfaces/${IFACE_ID}`, networkInterface(input)),
    put("/vsock", { guest_cid: GUEST_CID, uds_path: layout.vsock.jail }),
    put("/mmds/config", mmds),
    put("/mmds", mmdsContents(spec)),
    put("/actions", { action_type: "InstanceStart" }),
  ];
}

/**
 * Restore into a fresh Firecracker: logger/metrics, then the load, which also resumes.
 * The snapshot names the TAP it was taken with; the override points it at this VM's TAP
 * (docs/snapshotting/network-for-clones.md), when the API version has the field.
 */
export function restoreSequence(input: Pick<ConfigInput, "layout" | "tap" | "features">): ApiCall[] {
  const { layout, tap, features } = input;
  const load: SnapshotLoadParams = {
    snapshot_path: layout.snapshotState.jail,
    mem_backend: { backend_type: "File", backend_path: layout.snapshotMem.jail },
    resume_vm: true,
    ...(features.networkOverrides ? { network_overrides: [{ iface_id: IFACE_ID, host_dev_name: tap }] } : {}),
  };
  return [...observability(layout), put("/snapshot/load", load)];
}
