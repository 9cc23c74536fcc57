// node dist/bench/prof-summary.js <file.cpuprofile> [top]
// Prints where a V8 CPU profile (node --cpu-prof) spent its time: self time
// by function and total (inclusive) time of the functions under our own
// directories, to find the biggest cost of a bench run.
import { readFileSync } from "node:fs";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

function main(): void {
  const [file, topArg] = process.argv.slice(2);
  if (!file) throw new Error("usage: prof-summary <file.cpuprofile> [top]");
  const top = Number(topArg ?? 25);
  const p = JSON.parse(readFileSync(file, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<number, number>();
  p.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const label = (n: Node): string => {
    const url = n.callFrame.url.replace(/^.*\/(dist|node_modules)\//, "$1/");
    return `${n.callFrame.functionName || "(anonymous)"} ${url}:${n.callFrame.lineNumber + 1}`;
  };
  const selfBy = new Map<string, number>();
  const totalBy = new Map<string, number>();
  let all = 0;
  for (const [id, us] of self) {
    all += us;
    const n = byId.get(id)!;
    selfBy.set(label(n), (selfBy.get(label(n)) ?? 0) + us);
    // Inclusive time: once per distinct function on the stack.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const l = label(byId.get(cur)!);
      if (seen.has(l)) continue;
      seen.add(l);
      totalBy.set(l, (totalBy.get(l) ?? 0) + us);
    }
  }
  const pct = (us: number) => `${((100 * us) / all).toFixed(1).padStart(5)}%`;
  const print = (title: string, m: Map<string, number>, filter: (l: string) => boolean) => {
    process.stdout.write(`${title}\n`);
    [...m].filter(([l]) => filter(l)).sort((a, b) => b[1] - a[1]).slice(0, top).forEach(([l, us]) => process.stdout.write(`${pct(us)} ${(us / 1000).toFixed(0).padStart(7)} ms  ${l}\n`));
  };
  process.stdout.write(`${(all / 1e6).toFixed(1)} s sampled\n`);
  print("self time:", selfBy, () => true);
  print("total time, our code:", totalBy, (l) => l.includes("dist/") && !l.includes("dist/gen/"));
}

main();
