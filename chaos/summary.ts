// The chaos report: a table per scenario and the one closing line. Pure.
import type { RunResult } from "./run.js";

function pct(xs: number[], p: number): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

export function summarize(results: readonly RunResult[]): { text: string; last: string; violations: number } {
  const lines: string[] = [];
  const scenarios = [...new Set(results.map((r) => r.scenario))];
  lines.push("scenario            runs  faults  calls  acked  moved  violations  settle p50 ms");
  for (const s of scenarios) {
    const rs = results.filter((r) => r.scenario === s);
    const sum = (f: (r: RunResult) => number) => rs.reduce((a, r) => a + f(r), 0);
    lines.push(
      `${s.padEnd(18)}  ${String(rs.length).padStart(4)}  ${String(sum((r) => r.faults)).padStart(6)}  ${String(sum((r) => r.calls)).padStart(5)}  ${String(sum((r) => r.acked)).padStart(5)}  ${String(sum((r) => r.moved)).padStart(5)}  ${String(sum((r) => r.violations.length)).padStart(10)}  ${String(pct(rs.map((r) => r.settleMs), 50) ?? "-").padStart(13)}`,
    );
  }
  const fo = results.map((r) => r.failoverMs).filter((x): x is number => x !== undefined);
  if (fo.length) lines.push(`failover (leader SIGKILLed -> next successful placement): ${fo.map((x) => `${x} ms`).join(", ")}; max ${Math.max(...fo)} ms`);
  const faults = results.reduce((a, r) => a + r.faults, 0);
  const violations = results.reduce((a, r) => a + r.violations.length, 0);
  return { text: lines.join("\n"), last: `chaos: ${results.length} runs, ${faults} faults, ${violations} violations`, violations };
}
