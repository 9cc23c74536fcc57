// Why a QEMU VM died, from what it left behind: QEMU's own last error line and the tail of
// the serial console (a kernel panic, a failing /init). Pure over the logs' text.
import { readFileSync } from "node:fs";

const lastLines = (text: string, n: number): string[] =>
  text
    .split(/\r?\n/)
    .map((l) => l.trimEnd())
    .filter((l) => l.trim() !== "")
    .slice(-n);

/** Console lines that say why by themselves; a panic's stack trace follows them, so the tail alone misses them. */
const TELLING = /Kernel panic - not syncing.*|noid-(init|agent): .*/;

export function exitReason(pid: number, qemuLog: string, serialLog: string): string {
  const qemu = lastLines(qemuLog, 2).join(" | ");
  const telling = serialLog
    .split(/\r?\n/)
    .map((l) => TELLING.exec(l)?.[0])
    .filter((l): l is string => l !== undefined)
    .slice(-1);
  const serial = [...telling, ...lastLines(serialLog, 2).filter((l) => !telling.some((t) => l.includes(t)))].join(" | ");
  return [`qemu process ${pid} exited`, ...(qemu ? [`qemu: ${qemu}`] : []), ...(serial ? [`console: ${serial}`] : [])].join("; ");
}

/** The last `bytes` of a file, "" when it is missing (logs can be large; their tail is what matters). */
export function readTail(path: string, bytes = 4096): string {
  try {
    const buf = readFileSync(path);
    return buf.subarray(Math.max(0, buf.length - bytes)).toString("utf8");
  } catch {
    return "";
  }
}
