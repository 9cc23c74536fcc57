// Builds the drivers the agent's config enables, checking once, at start, that each can run
// here: a driver that cannot is a configuration error naming the field and the reason, not a
// stream of failed VMs. What only a VM can find out (its image, the guest kernel) fails that
// VM with a reason instead.
import { accessSync, constants, existsSync, readdirSync } from "node:fs";
import { delimiter, join } from "node:path";
import type { Logger } from "../../common/logger.js";
import { invalid } from "../../common/errors.js";
import { type AgentConfig, DRIVER_NAMES, type DriverName } from "../config.js";
import type { HypervisorDriver } from "./driver.js";
import { DriverSet } from "./driver-set.js";
import { FirecrackerDriver } from "./firecracker/driver.js";
import { QemuDriver } from "./qemu/driver.js";
import { SandboxDriver } from "./sandbox/sandbox.js";

const executable = (p: string): boolean => {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
};

/** A command name resolved like the shell does (a path is taken as is); undefined when not found. */
export function findExecutable(cmd: string, path = process.env.PATH ?? ""): string | undefined {
  if (cmd.includes("/")) return executable(cmd) ? cmd : undefined;
  return path
    .split(delimiter)
    .filter(Boolean)
    .map((d) => join(d, cmd))
    .find(executable);
}

/** Where each driver keeps one record per VM under the state dir. */
export function recordsDir(stateDir: string, name: DriverName): string {
  return name === "sandbox" ? join(stateDir, "sandbox") : join(stateDir, name, "records");
}

function hasRecords(dir: string): number {
  try {
    return readdirSync(dir).filter((f) => f.endsWith(".json")).length;
  } catch {
    return 0;
  }
}

/** `wrap` decorates each driver (metrics); the set holds the wrapped ones. */
export async function driversFromConfig(
  c: AgentConfig,
  logger: Logger,
  wrap: (d: HypervisorDriver) => HypervisorDriver = (d) => d,
): Promise<DriverSet> {
  const enabled: HypervisorDriver[] = [];
  for (const name of c.drivers) enabled.push(wrap(await build(c, name, logger, true)));
  const retired: HypervisorDriver[] = [];
  for (const name of DRIVER_NAMES) {
    if (c.drivers.includes(name)) continue;
    const n = hasRecords(recordsDir(c.stateDir, name));
    if (n === 0) continue;
    logger.warn({ driver: name, vms: n }, "driver is not enabled but has VMs from an earlier run: they are managed until destroyed; no new VMs go to it");
    retired.push(wrap(await build(c, name, logger, false)));
  }
  return new DriverSet(enabled, retired);
}

/** `check`: refuse a driver that cannot run here (enabled drivers only; a retired one is kept to see and remove its VMs). */
async function build(c: AgentConfig, name: DriverName, logger: Logger, check: boolean): Promise<HypervisorDriver> {
  switch (name) {
    case "sandbox": {
      const d = new SandboxDriver({ stateDir: c.stateDir, nsPrefix: c.nsPrefix });
      const caps = d.capabilities();
      if (!caps.resourceLimits) logger.warn({ reason: caps.limitsReason }, "sandbox VMs run without cgroup limits");
      else logger.info({ limits: d.limitsMechanism() }, "sandbox VM limits");
      return d;
    }
    case "qemu": {
      const q = c.qemu;
      for (const bin of check ? [q.binary, q.qemuImg] : []) {
        if (!findExecutable(bin)) {
          throw invalid("drivers", `qemu is enabled but ${bin} is not an executable on PATH (install qemu-system-x86 and qemu-utils, or set qemu.binary / qemu.qemu_img)`);
        }
      }
      const kernel = q.kernel ?? join(q.guestDir, "vmlinuz");
      if (check && !existsSync(kernel)) logger.warn({ kernel }, "qemu guest kernel is missing: qemu VMs will fail until deploy/guest/build.sh has run");
      return new QemuDriver({
        stateDir: c.stateDir,
        guestDir: q.guestDir,
        ...(q.kernel ? { kernel: q.kernel } : {}),
        ...(q.initrd ? { initrd: q.initrd } : {}),
        ...(q.imagesDir ? { imagesDir: q.imagesDir } : {}),
        accel: q.accel,
        bootTimeoutMs: q.bootTimeoutMs,
        qemuBinary: q.binary,
        qemuImg: q.qemuImg,
      });
    }
    case "firecracker": {
      const f = c.firecracker;
      const d = new FirecrackerDriver({
        stateDir: c.stateDir,
        nsPrefix: c.nsPrefix,
        firecrackerBin: f.binary,
        jailerBin: f.jailer,
        kernel: f.kernel,
        ...(f.initrd ? { initrd: f.initrd } : {}),
        imageDir: f.imageDir,
        chrootBase: f.chrootBase,
        uid: f.uid,
        gid: f.gid,
      });
      const ok = check ? await d.available() : { ok: true };
      if (!ok.ok) throw invalid("drivers", `firecracker is enabled but cannot run on this host: ${ok.reason}`);
      return d;
    }
  }
}
