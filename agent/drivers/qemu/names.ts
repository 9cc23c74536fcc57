// Pure names and paths for a QEMU VM. Everything derives from the VM id, so a VM can be
// found and removed even when its record is lost. The TAP name is capped at 15 characters
// (IFNAMSIZ); a hash of the id keeps it short and collision-free.
import { join } from "node:path";
import { shortId } from "../sandbox/names.js";

/** "nq" + 10 hex = 12 characters. */
export const tapName = (vmId: string): string => `nq${shortId(vmId)}`;

export interface VmPaths {
  dir: string;
  overlay: string;
  qmpSocket: string;
  agentSocket: string;
  /** The serial console (a socket chardev that also writes serialLog). */
  consoleSocket: string;
  serialLog: string;
  /** QEMU's own stdout/stderr: where its error messages go. */
  qemuLog: string;
}

/** Unix socket paths must fit sun_path (108 bytes with the NUL). */
export const MAX_SOCKET_PATH = 107;

export function vmPaths(vmsDir: string, vmId: string): VmPaths {
  const dir = join(vmsDir, shortId(vmId));
  return {
    dir,
    overlay: join(dir, "root.qcow2"),
    qmpSocket: join(dir, "qmp.sock"),
    agentSocket: join(dir, "agent.sock"),
    consoleSocket: join(dir, "console.sock"),
    serialLog: join(dir, "serial.log"),
    qemuLog: join(dir, "qemu.log"),
  };
}
