// npm run chaos [-- --quick] [--repeats n] [--only a,b] [--seed n] [--storm-ms n]
// Hurts a real cluster (3 etcd members, 3 coordinators, simulated hosts running
// the real agent session, reconcile loop and fencing) in every scenario, checks
// the history of acknowledged calls against the final state after each run,
// prints the numbers and ends with one line: "chaos: N runs, N faults, N violations".
import { loadavg } from "node:os";
import { Command } from "commander";
import { countByKind } from "./check.js";
import { SCENARIOS, runChaos, type Scenario } from "./run.js";
import { summarize } from "./summary.js";

async function main(): Promise<number> {
  const cmd = new Command("chaos")
    .option("--quick", "each scenario once, short storms (under 5 minutes)")
    .option("--repeats <n>", "runs of each scenario (default 1 quick, 3 full)")
    .option("--only <scenarios>", `comma-separated: ${SCENARIOS.join(",")}`)
    .option("--seed <n>", "random seed (default: time); printed so a run can be replayed")
    .option("--storm-ms <n>", "storm length around each fault (default 6000 quick, 10000 full)")
    .option("--hosts <n>", "simulated hosts", "3")
    .option("--no-fencing", "sabotage: hosts do not stop their VMs when lost (the checker must report VMs run twice)")
    .parse();
  const o = cmd.opts<{ quick?: boolean; repeats?: string; only?: string; seed?: string; stormMs?: string; hosts: string; fencing: boolean }>();
  const scenarios = (o.only ? o.only.split(",") : [...SCENARIOS]) as Scenario[];
  for (const s of scenarios) if (!(SCENARIOS as readonly string[]).includes(s)) throw new Error(`unknown scenario "${s}" (known: ${SCENARIOS.join(", ")})`);
  const seed = o.seed ? Number(o.seed) : Date.now() % 2 ** 31;
  const started = Date.now();
  const log = (s: string) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${s}\n`);
  log(`chaos ${o.quick ? "quick" : "full"}: seed ${seed}, scenarios ${scenarios.join(", ")}, load ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  const results = await runChaos({
    scenarios,
    repeats: Number(o.repeats ?? (o.quick ? 1 : 3)),
    stormMs: Number(o.stormMs ?? (o.quick ? 6000 : 10_000)),
    hosts: Number(o.hosts),
    seed,
    log,
    noFencing: !o.fencing,
  });
  const s = summarize(results);
  process.stdout.write(s.text + "\n");
  const byKind = countByKind(results.flatMap((r) => r.violations));
  log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s (seed ${seed}); violations by kind: ${JSON.stringify(byKind)}`);
  process.stdout.write(s.last + "\n");
  return s.violations === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`chaos failed: ${String((err as Error)?.stack ?? err)}\n`);
    process.exit(2);
  },
);
