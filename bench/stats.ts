// Helpers of the benchmark: percentiles, figure records, the table, the results file.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

/** One row of bench/results.json. */
export interface Figure {
  name: string;
  value: number;
  unit: string;
  /** What the value is measured against in the same run (see `limitOf`). */
  limit: number;
  /** value / limit. */
  ratio: number;
  /** The target, in the unit of `targetOn` ("value" or "ratio"); null where the issue sets none. */
  target: number | null;
  /** null where there is no target. */
  met: boolean | null;
  /** Extra facts: sizes, the absolute anchors, what the limit is. */
  limitOf: string;
  targetOn: "value" | "ratio";
  /** "max": the value/ratio must be at most the target; "min": at least. */
  direction: "min" | "max";
  notes?: string;
}

export function figure(f: Omit<Figure, "ratio" | "met" | "target"> & { target: number }): Figure {
  const ratio = f.limit > 0 ? f.value / f.limit : NaN;
  const x = f.targetOn === "ratio" ? ratio : f.value;
  const target = Number.isFinite(f.target) ? f.target : null;
  const met = target === null ? null : Number.isFinite(x) && (f.direction === "min" ? x >= target : x <= target);
  return { ...f, ratio: sig(ratio), value: sig(f.value), limit: sig(f.limit), target, met };
}

/** Six significant digits (keeps small limits, e.g. MiB of a tiny state, meaningful). */
export function sig(x: number): number {
  return Number.isFinite(x) ? Number(x.toPrecision(6)) : x;
}

export function round(x: number, digits: number): number {
  if (!Number.isFinite(x)) return x;
  const m = 10 ** digits;
  return Math.round(x * m) / m;
}

/** Nearest-rank percentile (p in 0..100) of unsorted samples; NaN when empty. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return NaN;
  const s = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))]!;
}

/**
 * Sustained rate of completions given their times (ms): the middle 80% of
 * them divided by the time they took, so ramp-up and tail do not count.
 */
/**
 * The samples above `over`, in send order, grouped into bursts: slow ones
 * with fewer than `gap` fast ones between them are one burst. Tells a tail
 * made of a few stalls (many creates slow at once) from one spread evenly.
 */
export function slowBursts(inOrder: readonly number[], over: number, gap = 10): { slow: number; bursts: number; largest: number } {
  let slow = 0;
  let bursts = 0;
  let largest = 0;
  let cur = 0;
  let fastSince = Infinity;
  for (const v of inOrder) {
    if (v > over) {
      slow++;
      if (fastSince >= gap) {
        bursts++;
        cur = 0;
      }
      cur++;
      largest = Math.max(largest, cur);
      fastSince = 0;
    } else fastSince++;
  }
  return { slow, bursts, largest };
}

export function sustainedRate(doneAtMs: readonly number[]): number {
  if (doneAtMs.length < 10) {
    if (doneAtMs.length < 2) return NaN;
    const s = [...doneAtMs].sort((a, b) => a - b);
    return ((s.length - 1) / (s[s.length - 1]! - s[0]!)) * 1000;
  }
  const s = [...doneAtMs].sort((a, b) => a - b);
  const lo = Math.floor(s.length * 0.1);
  const hi = Math.ceil(s.length * 0.9) - 1;
  const span = s[hi]! - s[lo]!;
  return span > 0 ? ((hi - lo) / span) * 1000 : NaN;
}

function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

/** The readable table: one line per figure, then the notes. */
export function renderTable(figs: readonly Figure[]): string {
  const rows = figs.map((f) => [
    f.name,
    `${fmt(f.value)} ${f.unit}`,
    fmt(f.limit),
    fmt(f.ratio),
    f.target === null ? "-" : `${f.targetOn === "ratio" ? "ratio" : "value"} ${f.direction === "min" ? ">=" : "<="} ${fmt(f.target)}`,
    f.met === null ? "" : f.met ? "met" : "MISSED",
  ]);
  const head = ["figure", "value", "limit", "ratio", "target", ""];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  const out = [line(head), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line), ""];
  for (const f of figs) out.push(`${f.name}: limit = ${f.limitOf}${f.notes ? `; ${f.notes}` : ""}`);
  return out.join("\n");
}

/** Runs `work(i)` for i in 0..n-1 with at most `concurrency` in flight. */
export async function pool(n: number, concurrency: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await work(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `f` every `everyMs` until true; throws after `timeoutMs`. */
export async function until(f: () => boolean, timeoutMs: number, what: string, everyMs = 5): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!f()) {
    if (Date.now() > end) throw new Error(`bench: timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Writes bench/results.json: the array of figures, as the issue specifies. */
export function writeResults(figs: readonly Figure[], file: string): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(figs, null, 2) + "\n");
}

/**
 * CPU time run and time spent runnable but waiting for a CPU (the runqueue),
 * in ms, summed over a process's threads and for its main thread, from Linux's
 * /proc/<pid>/task/<tid>/schedstat. Undefined where that is not available.
 */
export interface SchedTimes {
  runMs: number;
  waitMs: number;
  mainRunMs: number;
  mainWaitMs: number;
}

export function schedTimes(pid: number): SchedTimes | undefined {
  const read = (tid: string): [number, number] | undefined => {
    try {
      const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ").map(Number);
      return [run! / 1e6, wait! / 1e6];
    } catch {
      return undefined;
    }
  };
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return undefined;
  }
  const main = read(String(pid));
  if (!main) return undefined;
  let runMs = 0;
  let waitMs = 0;
  for (const t of tids) {
    const r = read(t);
    if (r) {
      runMs += r[0];
      waitMs += r[1];
    }
  }
  return { runMs, waitMs, mainRunMs: main[0], mainWaitMs: main[1] };
}

/** "run 0.89 s/s, waited for a CPU 0.31 s/s (main thread 0.70/0.25)" between two readings over `secs`. */
export function schedLine(a: SchedTimes | undefined, b: SchedTimes | undefined, secs: number): string {
  if (!a || !b) return "n/a";
  const f = (x: number) => (x / 1000 / secs).toFixed(2);
  return `ran ${f(b.runMs - a.runMs)}, waited ${f(b.waitMs - a.waitMs)} (main thread ${f(b.mainRunMs - a.mainRunMs)}/${f(b.mainWaitMs - a.mainWaitMs)})`;
}
