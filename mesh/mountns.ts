// A persistent private mount namespace per simulated host, as in netns-lab.sh: wireguard-go
// and `wg` meet at /run/wireguard/<if>.sock, a fixed path, so several hosts on one machine
// each need their own /run. Inside the namespace /run is a fresh tmpfs (nothing on the real
// filesystem is created or changed) and /sys shows the host's network namespace.
// Only the lab needs this; a real host runs one wireguard-go in the ordinary namespace.
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Runner } from "../common/run.js";

const SETUP = "mount -t tmpfs tmpfs /run && mkdir /run/wireguard && mount -t sysfs sysfs /sys";

/**
 * Creates `<dir>/<name>.mnt`, a mount namespace pinned by a bind mount, entered with
 * run(argv, { mountNs }). `dir` is made a private mount point first: the kernel refuses to
 * pin a mount namespace on a shared mount.
 */
export async function createMountNs(dir: string, name: string, opts: { runner: Runner; netns?: string }): Promise<string> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const mp = await opts.runner(["mountpoint", "-q", dir], { allowFail: true });
  if (mp.exitCode !== 0) {
    await opts.runner(["mount", "--bind", dir, dir]);
    await opts.runner(["mount", "--make-private", dir]);
  }
  const file = join(dir, `${name}.mnt`);
  writeFileSync(file, "");
  await opts.runner(["unshare", `--mount=${file}`, "--propagation", "private", "sh", "-c", SETUP], {
    ...(opts.netns !== undefined ? { netns: opts.netns } : {}),
  });
  return file;
}

/** Unpins every mount namespace in `dir` and removes it. Processes still inside keep theirs alive. */
export async function removeMountNsDir(dir: string, opts: { runner: Runner }): Promise<void> {
  let files: string[] = [];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith(".mnt"));
  } catch {
    return;
  }
  for (const f of files) await opts.runner(["umount", join(dir, f)], { allowFail: true });
  await opts.runner(["umount", dir], { allowFail: true });
  rmSync(dir, { recursive: true, force: true });
}
