// Pure names for a sandbox VM's kernel objects. Both derive from the VM id alone, so a
// VM can be found and removed even when its record is lost. Interface names are
// capped at 15 characters; a hash of the id keeps them short and collision-free
// (VM ids that share a time-ordered prefix would collide if truncated).
import { createHash } from "node:crypto";

export const shortId = (vmId: string): string => createHash("sha256").update(vmId).digest("hex").slice(0, 10);

/** Global name (/run/netns is machine-wide): the per-agent prefix keeps lab hosts apart. */
export const vmNetns = (nsPrefix: string, vmId: string): string => `${nsPrefix}-vm-${shortId(vmId)}`;

/** Host-side veth end, in the agent's own netns: "nv" + 10 hex = 12 characters. */
export const hostPort = (vmId: string): string => `nv${shortId(vmId)}`;

export const cgroupName = (vmId: string): string => `vm-${shortId(vmId)}`;

/** cgroup v2 cpu.max for `vcpus` CPUs: quota and period in microseconds. */
export const cpuMax = (vcpus: number, periodUs = 100_000): string => `${Math.max(1, vcpus) * periodUs} ${periodUs}`;

export const memoryMax = (memoryMb: number): string => String(Math.max(1, memoryMb) * 1024 * 1024);
