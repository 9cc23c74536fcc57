// File moves for the jail: the jailed Firecracker sees only files inside its chroot, so
// the kernel is hard-linked in (copied across filesystems) and disks are copied with
// reflinks where the filesystem offers them (cp --reflink=auto falls back to a full copy).
import { chownSync, closeSync, copyFileSync, existsSync, linkSync, openSync, renameSync, rmSync, statSync, truncateSync } from "node:fs";
import type { Runner } from "../../../common/run.js";

/** Hard link, or copy when src and dst are on different filesystems. Leaves an existing dst alone. */
export function linkOrCopy(src: string, dst: string): void {
  if (existsSync(dst)) return;
  try {
    linkSync(src, dst);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EXDEV" && code !== "EPERM") throw e;
    copyFileSync(src, `${dst}.tmp`);
    renameSync(`${dst}.tmp`, dst);
  }
}

/** Copies through a temporary name, so a crash never leaves a half-written dst that looks complete. */
export async function reflinkCopy(run: Runner, src: string, dst: string): Promise<void> {
  rmSync(`${dst}.tmp`, { force: true });
  await run(["cp", "--reflink=auto", "--sparse=always", src, `${dst}.tmp`]);
  renameSync(`${dst}.tmp`, dst);
}

/** Moves src to dst, copying when they are on different filesystems. */
export async function move(run: Runner, src: string, dst: string): Promise<void> {
  try {
    renameSync(src, dst);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EXDEV") throw e;
    await reflinkCopy(run, src, dst);
    rmSync(src, { force: true });
  }
}

/** Grows (never shrinks) a disk image to `bytes`, sparsely; the guest grows its filesystem. */
export function growTo(path: string, bytes: number): void {
  if (statSync(path).size < bytes) truncateSync(path, bytes);
}

/** Creates an empty file if missing (Firecracker opens log and metrics files, it does not create them). */
export function touch(path: string): void {
  closeSync(openSync(path, "a"));
}

export function chown(paths: string[], uid: number, gid: number): void {
  for (const p of paths) chownSync(p, uid, gid);
}
