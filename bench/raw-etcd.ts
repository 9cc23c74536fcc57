// The limits the coordinator is measured against, taken from the same etcd in
// the same run: compare-and-put transactions of the placement's shape, and
// how fast a watch delivers a change.
import type { Etcd3 } from "etcd3";
import { Vm, VmDesiredState, VmPhase } from "../gen/noid/v1/vm.js";
import { AllocationRecord } from "../gen/noid/v1/records.js";
import { percentile, pool, sleep } from "./stats.js";

/** A VM record as the placement writes it (same fields, same sizes). */
export function sampleVm(i: number): Uint8Array {
  const now = new Date();
  return Vm.encode({
    id: (0x1000000000000000n + BigInt(i)).toString(16),
    name: `bench-vm-${i}`,
    owner: "tenant0",
    spec: { vcpus: 1, memoryMb: 128, diskGb: 1, driver: "sandbox", image: "", labels: {}, hostSelector: {}, host: "", antiAffinityGroup: "", network: "", networkGroup: "", sshAuthorizedKeys: [], hostLoss: undefined },
    desiredState: VmDesiredState.VM_DESIRED_STATE_RUNNING,
    createdAt: now,
    status: {
      phase: VmPhase.VM_PHASE_PENDING,
      hostId: "0123456789abcdef",
      hostName: "sim-123",
      reason: "",
      ip: "10.0.0.17",
      mac: "02:00:0a:00:00:11",
      updatedAt: now,
      networkId: "fedcba9876543210",
      networkCidr: "10.0.0.0/24",
      gateway: "10.0.0.1",
      restartPending: false,
      migrationId: "",
      migrationSha256: "",
    },
  }).finish();
}

export function sampleAlloc(n: number): Uint8Array {
  return AllocationRecord.encode({ allocated: { vcpus: n, memoryMb: 128 * n, diskGb: n }, vmCount: n, groups: {}, networks: { fedcba9876543210: n } }).finish();
}

export interface TxnResult {
  txnPerSec: number;
  p50Ms: number;
  p99Ms: number;
  count: number;
}

/**
 * Placement-shaped transactions (VM unchanged, host allocation unchanged, host
 * exists; then put VM, put assignment, put allocation) for `durationMs`,
 * `concurrency` in flight. Each worker owns its hosts, so none conflict.
 */
export async function placementShapedTxns(client: Etcd3, prefix: string, durationMs: number, concurrency: number): Promise<TxnResult> {
  const vm = Buffer.from(sampleVm(1));
  const lat: number[] = [];
  const hostKey = (w: number) => `${prefix}hosts/${w}`;
  const allocKey = (w: number) => `${prefix}alloc/${w}`;
  await pool(concurrency, 16, async (w) => {
    await client.put(hostKey(w)).value("h");
  });
  const allocRev = new Map<number, string>();
  let count = 0;
  const end = performance.now() + durationMs;
  const worker = async (w: number) => {
    for (let i = 0; performance.now() < end; i++) {
      const vmKey = `${prefix}vms/${w}-${i}`;
      const t = performance.now();
      const r = await client
        .if(vmKey, "Mod", "==", 0)
        .and(allocKey(w), "Mod", "==", allocRev.get(w) ?? 0)
        .and(hostKey(w), "Create", ">", 0)
        .then(
          client.put(vmKey).value(vm),
          client.put(`${prefix}assign/${w}/${i}`).value(vmKey),
          client.put(allocKey(w)).value(Buffer.from(sampleAlloc(i + 1))),
        )
        .commit();
      lat.push(performance.now() - t);
      if (!r.succeeded) throw new Error("bench: raw placement-shaped transaction failed its compares");
      allocRev.set(w, r.header.revision);
      count++;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)));
  const secs = (performance.now() - t0) / 1000;
  await client.delete().prefix(prefix);
  return { txnPerSec: count / secs, p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99), count };
}

/** Time from a put until a watcher on another connection sees it (p50/p99 over `n`). */
export async function watchDelivery(client: Etcd3, watchClient: Etcd3, prefix: string, n: number): Promise<{ p50Ms: number; p99Ms: number }> {
  const seen = new Map<string, number>();
  const w = await watchClient.watch().prefix(prefix).create();
  w.on("put", (kv) => seen.set(kv.key.toString(), performance.now()));
  const lat: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const key = `${prefix}${i}`;
      const t = performance.now();
      await client.put(key).value("x");
      const until = t + 5000;
      while (!seen.has(key) && performance.now() < until) await sleep(0.2);
      if (seen.has(key)) lat.push(seen.get(key)! - t);
      await sleep(10);
    }
  } finally {
    await w.cancel();
    await client.delete().prefix(prefix);
  }
  return { p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99) };
}
