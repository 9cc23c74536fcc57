// node dist/bench/keepalive.js [--leases N] [--interval-ms MS] [--seconds S] [--rounds R] [--busy-ms MS] [--streams N]
// Lease renewals as a coordinator with N hosts in session makes them (each
// lease renewed every interval, one renewal at a time per lease, spread over
// the interval), through the EtcdStore: a LeaseKeepAlive stream per renewal
// (before) against one shared stream and against --streams shared streams
// (now), alternating, same etcd; --busy-ms blocks the event loop that long on
// every turn, as a loaded coordinator's work does. Prints
// renewals/s, latency, this process's CPU and etcd's CPU per renewal, failures
// and how many leases' keys are still there at the end (BENCHMARKS.md finding 6).
import { readFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { Command } from "commander";
import { createEtcdStore, type Lease } from "../coordinator/store/index.js";
import { KEEPALIVE_STREAMS } from "../coordinator/store/etcd-store.js";
import { startBenchEtcd } from "./cluster.js";
import { percentile, pool, sleep } from "./stats.js";

/** utime + stime of a process in ms (Linux /proc). */
function procCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // clock ticks, USER_HZ 100
}

async function main(): Promise<void> {
  const o = new Command("keepalive")
    .option("--leases <n>", "leases (hosts in session)", "1000")
    .option("--interval-ms <ms>", "renewal interval per lease (the heartbeat interval)", "2000")
    .option("--seconds <s>", "duration of each run", "20")
    .option("--rounds <r>", "rounds of runs (per-call, one shared stream, --streams shared streams)", "2")
    .option("--busy-ms <ms>", "block the event loop this long on every turn (a loaded coordinator)", "0")
    .option("--streams <n>", "shared streams of the last mode (the coordinator's default)", String(KEEPALIVE_STREAMS))
    .parse()
    .opts<{ leases: string; intervalMs: string; seconds: string; rounds: string; busyMs: string; streams: string }>();
  const n = Number(o.leases);
  const every = Number(o.intervalMs);
  const secs = Number(o.seconds);
  const log = (s: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);
  log(`${cpus().length} cores, load ${loadavg().map((x) => x.toFixed(2)).join(" ")}; ${n} leases renewed every ${every} ms, ${secs} s per run`);
  const etcd = await startBenchEtcd({ fsync: false });
  try {
    for (let round = 0; round < Number(o.rounds); round++) {
      for (const streams of [0, 1, Number(o.streams)]) {
        const shared = streams > 0;
        const mode = shared ? `${streams} shared stream${streams === 1 ? "" : "s"}` : "stream per renewal";
        const prefix = `/ka-${round}-${streams}/`;
        const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix, sharedKeepAlive: shared, keepAliveStreams: Math.max(1, streams) });
        const leases: Lease[] = new Array(n);
        await pool(n, 64, async (i) => {
          leases[i] = await store.grantLease(10);
          await store.put(`alive/${i}`, Buffer.from("1"), { lease: leases[i]!.id });
        });
        const lat: number[] = [];
        const errors: Record<string, number> = {};
        let skipped = 0;
        const busy = new Set<number>();
        const timers: NodeJS.Timeout[] = [];
        // A loaded coordinator: every turn of the event loop runs busyMs of other work.
        const busyMs = Number(o.busyMs);
        let spinning = busyMs > 0;
        const spin = () => {
          if (!spinning) return;
          const end = performance.now() + busyMs;
          while (performance.now() < end);
          setImmediate(spin);
        };
        spin();
        const cpu0 = process.cpuUsage();
        const etcd0 = procCpuMs(etcd.etcd.pid);
        const t0 = performance.now();
        for (let i = 0; i < n; i++) {
          const beat = () => {
            if (busy.has(i)) return void skipped++; // the previous heartbeat is still being served
            busy.add(i);
            const t = performance.now();
            leases[i]!.keepAliveOnce().then(
              () => lat.push(performance.now() - t),
              (e: { code?: string }) => void (errors[e.code ?? "?"] = (errors[e.code ?? "?"] ?? 0) + 1),
            ).finally(() => busy.delete(i));
          };
          timers.push(setTimeout(() => timers.push(setInterval(beat, every)), (i / n) * every));
        }
        await sleep(secs * 1000);
        timers.forEach((t) => clearTimeout(t));
        spinning = false;
        const until = Date.now() + 10_000;
        while (busy.size > 0 && Date.now() < until) await sleep(20);
        const wall = (performance.now() - t0) / 1000;
        const cpu = process.cpuUsage(cpu0);
        const etcdCpu = procCpuMs(etcd.etcd.pid) - etcd0;
        const alive = (await store.list("alive/")).kvs.length;
        const done = lat.length;
        const st = store.leaseStats();
        log(
          `${mode}: ${(done / wall).toFixed(0)} renewals/s (${done} ok, ${JSON.stringify(errors)} failed, ${skipped} heartbeats skipped while the previous one was pending); ` +
            `latency p50 ${percentile(lat, 50).toFixed(1)} / p99 ${percentile(lat, 99).toFixed(1)} ms; ` +
            `CPU per renewal: this process ${busyMs > 0 ? "n/a (it spins)" : `${(((cpu.user + cpu.system) / 1000) / Math.max(1, done)).toFixed(3)} ms`}, etcd ${(etcdCpu / Math.max(1, done)).toFixed(3)} ms; ` +
            `${alive} of ${n} leases' keys alive at the end; streams opened ${shared ? st.streamsOpened : st.alone}; load ${loadavg()[0]!.toFixed(2)}`,
        );
        await pool(n, 64, (i) => leases[i]!.revoke());
        await store.close();
      }
    }
  } finally {
    await etcd.stop();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`keepalive bench failed: ${String(e)}\n`);
  process.exit(1);
});
