// The jailer's argv and the chroot it builds, as pure functions. The jailer (docs/jailer.md)
// creates <chroot-base>/<exec-file name>/<id>/root, pivots into it, joins the netns and the
// cgroup, drops to uid:gid and execs Firecracker, so Firecracker sees only what we put in
// the chroot: every path given to the API is a path inside it, and the host side of each is
// <root>/<path>. Without --daemonize and --new-pid-ns the jailer execs in place, so the PID
// we spawn is Firecracker's own (our spawner already detaches it into its own session).
import { basename, join } from "node:path";
import { invalid } from "../../../common/errors.js";
import { shortId } from "../sandbox/names.js";

export interface JailerParams {
  jailerBin: string;
  firecrackerBin: string;
  jailId: string;
  uid: number;
  gid: number;
  chrootBase: string;
  /** Network namespace name; joined through /var/run/netns/<name>. */
  netns?: string;
  /** cgroup (v2) under which the jailer creates <jailId>; relative to the cgroup root. */
  parentCgroup?: string;
  /** cgroup v2 values, e.g. { "cpu.max": "100000 100000", "memory.max": "134217728" }. */
  cgroups: Record<string, string>;
  /** The API socket path inside the jail. */
  apiSock: string;
}

const JAIL_ID = /^[A-Za-z0-9-]{1,64}$/;

/** The jailer accepts alphanumerics and '-', at most 64 characters. */
export function checkJailId(id: string): string {
  if (!JAIL_ID.test(id)) throw invalid("jailId", `"${id}" must be 1-64 letters, digits or '-'`);
  return id;
}

/** Derived from the VM id alone (like the sandbox's names), so a lost record can still be cleaned up. */
export const jailIdFor = (prefix: string, vmId: string): string => checkJailId(`${prefix}-fc-${shortId(vmId)}`);

export function jailerArgv(p: JailerParams): string[] {
  checkJailId(p.jailId);
  if (!basename(p.firecrackerBin).includes("firecracker")) {
    // The jailer refuses other binaries; fail here with a clearer message.
    throw invalid("firecrackerBin", `file name must contain "firecracker" (got ${p.firecrackerBin})`);
  }
  const argv = [
    p.jailerBin,
    "--id", p.jailId,
    "--exec-file", p.firecrackerBin,
    "--uid", String(p.uid),
    "--gid", String(p.gid),
    "--chroot-base-dir", p.chrootBase,
  ];
  if (p.netns !== undefined) argv.push("--netns", `/var/run/netns/${p.netns}`);
  argv.push("--cgroup-version", "2");
  if (p.parentCgroup !== undefined) argv.push("--parent-cgroup", p.parentCgroup);
  for (const [k, v] of Object.entries(p.cgroups).sort(([a], [b]) => a.localeCompare(b))) argv.push("--cgroup", `${k}=${v}`);
  // Everything after "--" goes to Firecracker verbatim; the jailer adds --id itself.
  argv.push("--", "--api-sock", p.apiSock);
  return argv;
}

/** A file as Firecracker names it (inside the jail) and as we reach it (on the host). */
export interface JailPath {
  jail: string;
  host: string;
}

export interface ChrootLayout {
  /** <base>/<exec name>/<id>: removed whole on destroy. */
  jailDir: string;
  /** <jailDir>/root: the jail's "/". */
  root: string;
  apiSock: JailPath;
  kernel: JailPath;
  initrd: JailPath;
  rootfs: JailPath;
  vsock: JailPath;
  log: JailPath;
  metrics: JailPath;
  /** Where snapshot files are written and read inside the jail. */
  snapshotState: JailPath;
  snapshotMem: JailPath;
}

export function chrootLayout(chrootBase: string, firecrackerBin: string, jailId: string): ChrootLayout {
  const jailDir = join(chrootBase, basename(firecrackerBin), checkJailId(jailId));
  const root = join(jailDir, "root");
  const at = (jail: string): JailPath => ({ jail, host: join(root, jail) });
  return {
    jailDir,
    root,
    apiSock: at("/run/firecracker.socket"),
    kernel: at("/vmlinux"),
    initrd: at("/initrd"),
    rootfs: at("/rootfs.ext4"),
    vsock: at("/run/vsock.sock"),
    log: at("/log/firecracker.log"),
    metrics: at("/log/metrics.json"),
    snapshotState: at("/snapshot/vmstate"),
    snapshotMem: at("/snapshot/mem"),
  };
}
