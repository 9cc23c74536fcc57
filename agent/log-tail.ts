// Reading a VM's console log for `noidctl logs`: the last N lines, then (with follow) what
// is appended, from the file the driver writes. `tailStart` is pure.
import { closeSync, openSync, readSync, statSync } from "node:fs";

/** The byte offset where the last `lines` lines of `buf` start (0 = everything). */
export function tailStart(buf: Buffer, lines: number): number {
  if (lines <= 0) return 0;
  let end = buf.length;
  // A final newline ends the last line; it does not start an empty one.
  if (end > 0 && buf[end - 1] === 0x0a) end--;
  let seen = 0;
  for (let i = end - 1; i >= 0; i--) {
    if (buf[i] === 0x0a && ++seen === lines) return i + 1;
  }
  return 0;
}

/** Reads `path` from `offset` to its current end (at most `max` bytes); "" when it is missing. */
export function readFrom(path: string, offset: number, max = 1 << 20): Buffer {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return Buffer.alloc(0);
  }
  try {
    const size = statSync(path).size;
    const n = Math.max(0, Math.min(max, size - offset));
    const out = Buffer.alloc(n);
    const got = n > 0 ? readSync(fd, out, 0, n, offset) : 0;
    return out.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

export function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** How many bytes of the last `tail` lines to read at most (a log may be large; its tail is what matters). */
export const TAIL_WINDOW = 4 << 20;
