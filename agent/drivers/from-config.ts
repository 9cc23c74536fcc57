// Builds the drivers the agent's config enables, checking once, at start, that each can run
// here: a driver that cannot is a configuration error naming the field and the reason, not a
// stream of failed VMs. What only a VM can find out (its image, the guest kernel) fails that
// VM with a reason instead.
import { accessSync, constants, existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import type { Logger } from "../../common/logger.js";
import { invalid } from "../../common/errors.js";
import type { AgentConfig } from "../config.js";
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

export async function driversFromConfig(c: AgentConfig, logger: Logger): Promise<DriverSet> {
  const out: HypervisorDriver[] = [];
  for (const name of c.drivers) {
    switch (name) {
      case "sandbox": {
        const d = new SandboxDriver({ stateDir: c.stateDir, nsPrefix: c.nsPrefix });
        const caps = d.capabilities();
        if (!caps.resourceLimits) logger.warn({ reason: caps.limitsReason }, "sandbox VMs run without cgroup limits");
        out.push(d);
        break;
      }
      case "qemu": {
        const q = c.qemu;
        for (const bin of [q.binary, q.qemuImg]) {
          if (!findExecutable(bin)) throw invalid("drivers", `qemu is enabled but ${bin} is not an executable on PATH (install qemu-system-x86 and qemu-utils, or set qemu.binary / qemu.qemu_img)`);
        }
        const kernel = q.kernel ?? join(q.guestDir, "vmlinuz");
        if (!existsSync(kernel)) logger.warn({ kernel }, "qemu guest kernel is missing: qemu VMs will fail until deploy/guest/build.sh has run");
        out.push(
          new QemuDriver({
            stateDir: c.stateDir,
            guestDir: q.guestDir,
            ...(q.kernel ? { kernel: q.kernel } : {}),
            ...(q.initrd ? { initrd: q.initrd } : {}),
            ...(q.imagesDir ? { imagesDir: q.imagesDir } : {}),
            accel: q.accel,
            bootTimeoutMs: q.bootTimeoutMs,
            qemuBinary: q.binary,
            qemuImg: q.qemuImg,
          }),
        );
        break;
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
        const ok = await d.available();
        if (!ok.ok) throw invalid("drivers", `firecracker is enabled but cannot run on this host: ${ok.reason}`);
        out.push(d);
        break;
      }
    }
  }
  return new DriverSet(out);
}
