// The benchmark harness on tiny sizes: every figure's code path runs against a
// real etcd, a real coordinator (in this process) and simulated hosts, and the
// results file is well formed. No timing is asserted: only that each figure
// was measured and is consistent with what happened.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runBench, type BenchSizes } from "../../bench/run.js";
import { percentile, renderTable, schedLine, schedTimes, slowBursts, sustainedRate, writeResults, type Figure } from "../../bench/stats.js";

const TINY: BenchSizes = {
  hosts: 2,
  placementVms: 20,
  createRate: 20,
  createSeconds: 1,
  meshHosts: 3,
  meshEvents: 1,
  rssHosts: 5,
  rssVms: 20,
  measureSeconds: 0.3,
  grpcInFlight: 4,
  dataplaneSeconds: 1,
};

const dir = mkdtempSync(join(tmpdir(), "noid-bench-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("bench harness", () => {
  it("percentiles and sustained rate", () => {
    expect(percentile([5, 1, 4, 2, 3], 50)).toBe(3);
    expect(percentile([5, 1, 4, 2, 3], 99)).toBe(5);
    expect(Number.isNaN(percentile([], 50))).toBe(true);
    // 100 completions 10 ms apart: 100/s.
    expect(sustainedRate(Array.from({ length: 100 }, (_, i) => i * 10))).toBeCloseTo(100, 5);
    // Slow samples with fewer than `gap` fast ones between them are one burst.
    expect(slowBursts([1, 90, 80, 1, 70, 1, 1, 1, 60], 50, 3)).toEqual({ slow: 4, bursts: 2, largest: 3 });
    expect(slowBursts([1, 2, 3], 50)).toEqual({ slow: 0, bursts: 0, largest: 0 });
  });

  it("reads how long a process ran and waited for a CPU (Linux schedstat)", () => {
    const a = schedTimes(process.pid)!;
    const until = performance.now() + 50;
    while (performance.now() < until); // runnable for 50 ms: on a CPU, or waiting for one on a loaded machine
    const b = schedTimes(process.pid)!;
    expect(b.mainRunMs - a.mainRunMs).toBeGreaterThan(0);
    expect(b.mainRunMs - a.mainRunMs + (b.mainWaitMs - a.mainWaitMs)).toBeGreaterThanOrEqual(45);
    expect(b.runMs).toBeGreaterThanOrEqual(b.mainRunMs);
    expect(b.waitMs).toBeGreaterThanOrEqual(a.waitMs);
    expect(schedTimes(2 ** 22 + 1)).toBeUndefined(); // past the largest pid Linux gives
    expect(schedLine({ runMs: 0, waitMs: 0, mainRunMs: 0, mainWaitMs: 0 }, { runMs: 1800, waitMs: 600, mainRunMs: 1400, mainWaitMs: 400 }, 2)).toBe("ran 0.90, waited 0.30 (main thread 0.70/0.20)");
    expect(schedLine(undefined, b, 1)).toBe("n/a");
  });

  it("runs every figure on 2 hosts and 20 VMs and writes a well-formed results.json", async () => {
    const lines: string[] = [];
    const figs = await runBench({ sizes: TINY, inline: true, log: (l) => lines.push(l) });
    const file = join(dir, "results.json");
    writeResults(figs, file);
    const parsed = JSON.parse(readFileSync(file, "utf8")) as Figure[];
    expect(Array.isArray(parsed)).toBe(true);
    const names = parsed.map((f) => f.name);
    for (const n of [
      "placement_throughput",
      "create_to_assigned_p99_ms",
      "create_to_running_p99_ms",
      "etcd_writes_per_vm_change",
      "bytes_per_vm_record",
      "grpc_unary_qps",
      "mesh_convergence_p99_ms",
      "coordinator_rss_mb_20_vms",
      "dataplane_vxlan_ratio",
      "dataplane_wg_ratio",
      "dataplane_vxlan_over_wg_ratio",
      "dataplane_vxlan_over_wg_rtt_ms",
    ]) {
      expect(names).toContain(n);
    }
    for (const f of parsed) {
      expect(Object.keys(f)).toEqual(expect.arrayContaining(["name", "value", "unit", "limit", "ratio", "target", "met"]));
      expect(typeof f.unit).toBe("string");
      expect(Number.isFinite(f.value)).toBe(true);
      expect(f.value).toBeGreaterThan(0);
      expect(f.limit).toBeGreaterThan(0);
      expect(Math.abs(f.ratio - f.value / f.limit) / f.ratio).toBeLessThan(1e-3);
      // A figure with a target says whether it was met; one without says nothing.
      expect(f.met === null).toBe(f.target === null);
    }
    const get = (n: string) => parsed.find((f) => f.name === n)!;
    // Writes per change are the revision's growth over the three changes of each VM created.
    const w = get("etcd_writes_per_vm_change");
    const [, grew, changes, vms] = /etcd revision grew (\d+) for (\d+) changes \(created, assigned, RUNNING x (\d+)/.exec(w.notes ?? "") ?? [];
    expect(Number(changes)).toBe(3 * Number(vms));
    expect(Number(vms)).toBeGreaterThan(0);
    expect(w.value).toBeCloseTo(Number(grew) / Number(changes), 6);
    // RUNNING comes after assigned.
    expect(get("create_to_running_p99_ms").value).toBeGreaterThanOrEqual(get("create_to_assigned_p99_ms").value);
    // A VM's record is part of what etcd holds for it.
    expect(get("bytes_per_vm_record").value).toBeLessThan(get("bytes_per_vm_record").limit);
    const table = renderTable(figs);
    for (const n of names) expect(table).toContain(n);
    expect(lines.some((l) => l.startsWith("raw etcd:"))).toBe(true);
  }, 240_000);
});
