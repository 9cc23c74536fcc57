// The guest kernel command line, pure. The VM's address goes in the kernel's own `ip=`
// syntax (ip=<client>::<gw>:<netmask>::<device>:off); the guest's /init applies it when the
// kernel did not. The gateway is the subnet's first address, the convention of noid networks.
import type { VmNetSpec } from "../driver.js";

const toInt = (ip: string): number => ip.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const toIp = (n: number): string => [24, 16, 8, 0].map((s) => (Math.floor(n / 2 ** s) % 256).toString()).join(".");

export function isIpv4(ip: string): boolean {
  const parts = ip.split(".");
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

export function netmask(prefixLen: number): string {
  return toIp(prefixLen <= 0 ? 0 : (2 ** 32 - 2 ** (32 - Math.min(32, prefixLen))));
}

/** First usable address of ip/prefixLen (the network address + 1); none for /31 and /32. */
export function gatewayFor(ip: string, prefixLen: number): string {
  if (prefixLen >= 31) return "";
  const size = 2 ** (32 - prefixLen);
  return toIp(Math.floor(toInt(ip) / size) * size + 1);
}

export function ipArg(net: VmNetSpec): string | undefined {
  if (!net.ip) return undefined;
  const prefix = net.prefixLen ?? 24;
  const gw = gatewayFor(net.ip, prefix);
  return `ip=${net.ip}::${gw === net.ip ? "" : gw}:${netmask(prefix)}::eth0:off`;
}

export function kernelCmdline(net: VmNetSpec, opts: { rootDevice?: string } = {}): string {
  return [
    "console=ttyS0",
    // TCG's TSC calibration on microvm (no PIT/HPET to calibrate against) is unreliable here.
    "tsc_early_khz=2600000",
    // A kernel panic ends QEMU (with -no-reboot) instead of hanging: the driver sees it fail.
    "panic=-1",
    // Freed pages and slab objects are zeroed: an exec's environment (secrets) does not linger
    // in guest memory, which a checkpoint saves.
    "init_on_free=1",
    "reboot=t",
    ...(opts.rootDevice ? [`noid.root=${opts.rootDevice}`] : []),
    ...(ipArg(net) ? [ipArg(net)!] : []),
  ].join(" ");
}
