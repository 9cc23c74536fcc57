// npm run bench [-- --quick] [--only a,b] [--out file] [--no-fsync] [--cpu-prof]
// Runs the figures of BENCHMARKS.md, prints the table and writes bench/results.json.
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { FULL, QUICK, runBench } from "./run.js";
import { renderTable, writeResults } from "./stats.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

async function main(): Promise<void> {
  const cmd = new Command("bench")
    .option("--quick", "small sizes (under 2 minutes)")
    .option("--only <figures>", "comma-separated: placement_throughput,create_latency,grpc_unary_qps,mesh_convergence,coordinator_rss,dataplane")
    .option("--out <file>", "results file", join(root, "bench", "results.json"))
    .option("--fsync", "let etcd fsync (default: --unsafe-no-fsync, as the tests; a shared disk's fsync would be all we measure)")
    .option("--vms <n>", "VMs of the placement figure (default: 2000 quick, 10000 full)")
    .option("--hosts <n>", "simulated hosts of the main cluster")
    .option("--create-rate <n>", "creates/s of the latency figure (default 200)")
    .option("--inline", "run the coordinator in this process (profile both with node --cpu-prof)")
    .option("--cpu-prof", "profile the coordinator (node --cpu-prof, into bench/prof/)")
    .option("--prof-placement <dir>", "profile the bench process and the coordinator during the placement phase only (sessions opening until every VM assigned)")
    .option("--prof-mesh <dir>", "profile the bench process and the coordinator during the mesh events only (joins, rotations, leaves)")
    .option("--prof-latency <dir>", "profile the bench process and the coordinator during the creates of the latency figure")
    .option("--mesh-full", "simulated hosts take full mesh snapshots instead of deltas (as agents before deltas)")
    .option("--coordinator-node-args <args>", "extra node flags for the coordinator process, space-separated (e.g. \"--max-semi-space-size=16\" to compare heap settings)")
    .parse();
  const o = cmd.opts<{ quick?: boolean; only?: string; out: string; fsync?: boolean; cpuProf?: boolean; vms?: string; hosts?: string; createRate?: string; inline?: boolean; profPlacement?: string; profMesh?: string; profLatency?: string; meshFull?: boolean; coordinatorNodeArgs?: string }>();
  const started = Date.now();
  const sizes = { ...(o.quick ? QUICK : FULL) };
  if (o.vms) sizes.placementVms = Number(o.vms);
  if (o.hosts) sizes.hosts = Number(o.hosts);
  if (o.createRate) sizes.createRate = Number(o.createRate);
  const log = (s: string) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${s}\n`);
  log(`${o.quick ? "quick" : "full"} run on ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, load ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  const figs = await runBench({
    sizes,
    fsync: o.fsync ?? false,
    inline: o.inline ?? false,
    meshFull: o.meshFull ?? false,
    log,
    ...(o.only ? { only: o.only.split(",") } : {}),
    ...(o.profPlacement ? { profPlacementDir: o.profPlacement } : {}),
    ...(o.profMesh ? { profMeshDir: o.profMesh } : {}),
    ...(o.profLatency ? { profLatencyDir: o.profLatency } : {}),
    coordinatorExecArgv: [
      ...(o.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${join(root, "bench", "prof")}`] : []),
      ...(o.coordinatorNodeArgs ? o.coordinatorNodeArgs.split(/\s+/).filter((a) => a !== "") : []),
    ],
  });
  writeResults(figs, o.out);
  process.stdout.write(renderTable(figs) + "\n");
  log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s; load ${loadavg().map((x) => x.toFixed(2)).join(" ")}; wrote ${o.out}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${String((err as Error)?.stack ?? err)}\n`);
    process.exit(1);
  },
);
