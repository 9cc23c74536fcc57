// The benchmark: one etcd, one coordinator, a fleet of simulated hosts, and
// the figures of issue 9, each next to the limit it is measured against in
// the same run. Sizes come from the caller (main.ts: --quick or full; the
// harness test: tiny).
import { Buffer } from "node:buffer";
import { Etcd3 } from "etcd3";
import { Role } from "../gen/noid/v1/auth.js";
import { Host, HostState } from "../gen/noid/v1/host.js";
import { Vm, VmPhase } from "../gen/noid/v1/vm.js";
import { keys } from "../coordinator/state/keys.js";
import { connect, isNoidApiError, type NoidClient } from "../sdk/index.js";
import * as grpc from "@grpc/grpc-js";
import { startBenchCoordinator, startBenchEtcd, storeCallsPer, storeMeanMs, type BenchCoordinator, type BenchEtcd } from "./cluster.js";
import { dataplaneFigures, measureDataplane } from "./dataplane.js";
import { placementShapedTxns, sampleAlloc, sampleVm, watchDelivery } from "./raw-etcd.js";
import { SimFleet, wgKey, type SimHost } from "./sim-agents.js";
import { WindowProfiler } from "./window-prof.js";
import { figure, percentile, pool, schedLine, schedTimes, sleep, slowBursts, sustainedRate, until, type Figure } from "./stats.js";

export interface BenchSizes {
  /** Simulated hosts of the main cluster (placement, latency, API). */
  hosts: number;
  /** VMs placed in the throughput figure. */
  placementVms: number;
  /** Creates/s and seconds of the latency figure. */
  createRate: number;
  createSeconds: number;
  /** Hosts of the mesh-convergence figure (all connected). */
  meshHosts: number;
  /** Events of each kind (join, leave, rotate). */
  meshEvents: number;
  /** Hosts and VMs written for the memory figure. */
  rssHosts: number;
  rssVms: number;
  /** Seconds of each throughput measurement (raw etcd, gRPC). */
  measureSeconds: number;
  grpcInFlight: number;
  /** Seconds of each iperf3 run of the data-plane figure (0: skip it). */
  dataplaneSeconds: number;
}

// Sizes are bounded by what the coordinator does today: creates go through a
// cluster-wide counter (see BENCHMARKS.md), so a backlog takes long to build.
export const QUICK: BenchSizes = {
  hosts: 50,
  placementVms: 300,
  createRate: 200,
  createSeconds: 0.5,
  meshHosts: 100,
  meshEvents: 3,
  rssHosts: 1000,
  rssVms: 10_000,
  measureSeconds: 2,
  grpcInFlight: 100,
  dataplaneSeconds: 2,
};

// Full: what completes in under 10 minutes on the 2-core machine
// (BENCHMARKS.md): every figure on 1,000 simulated hosts (about 2 minutes idle).
export const FULL: BenchSizes = {
  hosts: 1000,
  placementVms: 1500,
  createRate: 200,
  createSeconds: 2.5,
  meshHosts: 1000,
  meshEvents: 5,
  rssHosts: 10_000,
  rssVms: 100_000,
  measureSeconds: 5,
  grpcInFlight: 100,
  dataplaneSeconds: 5,
};

export interface BenchOptions {
  sizes: BenchSizes;
  /** Coordinator in this process (the harness test) instead of a child. */
  inline?: boolean;
  fsync?: boolean;
  coordinatorExecArgv?: string[];
  /** Figures to run (default all). */
  only?: string[];
  /** Profile the placement phase (sessions opening until every VM assigned) of the bench process and the coordinator into this directory. */
  profPlacementDir?: string;
  /** Profile the mesh events (joins, rotations, leaves) of the bench process and the coordinator into this directory. */
  profMeshDir?: string;
  /** Profile the creates of the latency figure (bench process and coordinator) into this directory. */
  profLatencyDir?: string;
  log?: (line: string) => void;
  /** Simulated hosts take full mesh snapshots (not deltas). */
  meshFull?: boolean;
}

/** VMs per tenant: each tenant's default network is a /24. */
const VMS_PER_TENANT = 200;
/** The issue's create-to-assigned target (p99), ms. */
const LATENCY_TARGET_MS = 50;
const SPEC = { vcpus: 1, memoryMb: 128, diskGb: 1 };

class Ctx {
  tenants: NoidClient[] = [];
  /** Calls the SDK retried (UNAVAILABLE: contention in the coordinator). */
  apiRetries = 0;
  private clients: NoidClient[] = [];
  admin: NoidClient;
  constructor(
    readonly etcd: BenchEtcd,
    readonly coord: BenchCoordinator,
    readonly fleet: SimFleet,
    readonly log: (s: string) => void,
  ) {
    this.admin = this.client(coord.adminToken);
  }
  client(token: string): NoidClient {
    // Retries as a user's SDK would: the API answers UNAVAILABLE when its transactions contend.
    const c = connect({
      address: this.coord.address,
      token,
      insecure: true,
      retries: 8,
      deadlineMs: 60_000,
      backoff: { baseDelayMs: 20, maxDelayMs: 1000, onRetry: () => void this.apiRetries++ },
    });
    this.clients.push(c);
    return c;
  }
  /** Enough tenants (each with its own default network) for `vms` VMs. */
  async tenantsFor(vms: number): Promise<NoidClient[]> {
    const need = Math.max(1, Math.ceil(vms / VMS_PER_TENANT));
    while (this.tenants.length < need) {
      const i = this.tenants.length;
      const t = await this.admin.createToken({ name: `bench-t${i}`, role: Role.ROLE_USER, user: `tenant${i}` });
      this.tenants.push(this.client(t.secret));
    }
    return this.tenants.slice(0, need);
  }
  /** Hosts alive (alive/<id> keys: their leases not expired), sessions the coordinator ended, heartbeats acknowledged. */
  async liveness(): Promise<string> {
    const alive = await this.etcd.client.getAll().prefix(`/noid/v1/${keys.alivePrefix}`).count();
    const f = this.fleet;
    return `${alive} of ${f.hosts.length} hosts alive, ${f.sessionsBroken} sessions ended by the coordinator, heartbeats acked ${f.heartbeatAcks} of ${f.heartbeatsSent}`;
  }
  /**
   * Waits (at most 60 s) until every host holds its lease and none is still
   * marked unreachable: hosts registered long before their session opened
   * were marked lost, and the host-loss controller's clearing of those marks
   * (one write per host) would otherwise land inside the next figure.
   */
  async settle(what: string): Promise<void> {
    const t = performance.now();
    const marked = async () => {
      const all = await this.etcd.client.getAll().prefix(`/noid/v1/${keys.hostsPrefix}`).buffers();
      return Object.values(all).filter((b) => Host.decode(b).unreachableSince !== undefined).length;
    };
    let left = await marked();
    let alive = 0;
    while (performance.now() - t < 60_000) {
      alive = await this.etcd.client.getAll().prefix(`/noid/v1/${keys.alivePrefix}`).count();
      if (left === 0 && alive === this.fleet.hosts.length) break;
      await sleep(250);
      left = await marked();
    }
    this.log(`${what}: ${left === 0 && alive === this.fleet.hosts.length ? "settled" : "NOT settled"} after ${((performance.now() - t) / 1000).toFixed(1)} s (${alive} of ${this.fleet.hosts.length} hosts alive, ${left} still marked unreachable)`);
  }
  close(): void {
    this.clients.forEach((c) => c.close());
  }
}

export async function runBench(o: BenchOptions): Promise<Figure[]> {
  const s = o.sizes;
  const log = o.log ?? (() => undefined);
  const want = (name: string) => !o.only || o.only.includes(name);
  const figs: Figure[] = [];
  const etcd = await startBenchEtcd({ fsync: o.fsync ?? false });
  const watchClient = new Etcd3({ hosts: etcd.endpoints });
  let coord: BenchCoordinator | undefined;
  let fleet: SimFleet | undefined;
  let ctx: Ctx | undefined;
  try {
    log(`etcd at ${etcd.endpoints[0]} (fsync ${o.fsync ? "on" : "off"})`);
    // Limits first, on an idle etcd.
    const serial = await placementShapedTxns(etcd.client, "/rawbench/s/", s.measureSeconds * 1000, 1);
    const raw = await placementShapedTxns(etcd.client, "/rawbench/c/", s.measureSeconds * 1000, 64);
    const watch = await watchDelivery(etcd.client, watchClient, "/rawbench/w/", 50);
    log(`raw etcd: ${raw.txnPerSec.toFixed(0)} placement-shaped txn/s at 64 in flight, ${serial.txnPerSec.toFixed(0)}/s serial (p99 ${serial.p99Ms.toFixed(1)} ms); watch p99 ${watch.p99Ms.toFixed(1)} ms`);

    coord = await startBenchCoordinator({ endpoints: etcd.endpoints, inline: o.inline, execArgv: o.coordinatorExecArgv });
    fleet = new SimFleet({ address: coord.address, token: coord.adminToken, prefix: "sim", meshDeltas: !(o.meshFull ?? false) });
    ctx = new Ctx(etcd, coord, fleet, log);
    let t = performance.now();
    const hosts = await fleet.registerNew(s.hosts);
    log(`${s.hosts} simulated hosts registered in ${((performance.now() - t) / 1000).toFixed(1)} s (${fleet.registerRetries} registrations turned away as contended, retried)`);
    // Figure 1 opens the sessions, cordons every host, creates its backlog, then uncordons them.
    if (want("placement_throughput")) figs.push(...(await placementThroughput(ctx, s, raw.txnPerSec, serial.txnPerSec, o.profPlacementDir)));
    else {
      t = performance.now();
      await fleet.connectAll(hosts);
      log(`${hosts.length} sessions open after ${((performance.now() - t) / 1000).toFixed(1)} s; ${await ctx.liveness()}`);
    }
    if (want("create_latency")) await ctx.settle("latency");
    if (want("create_latency")) figs.push(...(await createLatency(ctx, s, serial.p99Ms, watch.p99Ms, o.profLatencyDir)));
    if (want("grpc_unary_qps")) figs.push(...(await grpcUnary(ctx, s)));
    if (want("mesh_convergence")) {
      t = performance.now();
      if (s.meshHosts > fleet.hosts.length) await fleet.grow(s.meshHosts - fleet.hosts.length);
      log(`mesh: ${fleet.hosts.length} hosts in session (${((performance.now() - t) / 1000).toFixed(1)} s to add; ${fleet.connectRetries} session opens retried after UNAVAILABLE)`);
      figs.push(...(await meshConvergence(ctx, s, watch.p99Ms, o.profMeshDir)));
    }
    fleet.close();
    fleet = undefined;
    await coord.stop();
    coord = undefined;
    if (want("coordinator_rss")) figs.push(...(await coordinatorRss(etcd, s, o, log)));
    if (want("dataplane") && s.dataplaneSeconds > 0) {
      figs.push(...dataplaneFigures(await measureDataplane({ seconds: s.dataplaneSeconds, log }), s.dataplaneSeconds));
    }
    return figs;
  } finally {
    ctx?.close();
    fleet?.close();
    await coord?.stop().catch(() => undefined);
    watchClient.close();
    await etcd.stop();
  }
}

async function createOne(c: NoidClient, name: string, acceptExhausted: boolean): Promise<void> {
  try {
    await c.createVm(name, SPEC);
  } catch (e) {
    // With every host cordoned the API says so, and keeps the VM pending.
    if (!(acceptExhausted && isNoidApiError(e) && e.code === "RESOURCE_EXHAUSTED")) throw e;
  }
}

/**
 * Cordons or uncordons every host by writing their records in a few etcd
 * transactions (as a bulk uncordon would): through the API each is an audited
 * change, and audited changes are serial cluster-wide (the audit hash chain),
 * so 500 of them take seconds and would be what the figure measures.
 */
async function setCordoned(client: Etcd3, cordoned: boolean): Promise<void> {
  const all = await client.getAll().prefix(`/noid/v1/${keys.hostsPrefix}`).buffers();
  const entries = Object.entries(all);
  for (let i = 0; i < entries.length; i += 100) {
    const ops = entries.slice(i, i + 100).map(([k, v]) => client.put(k).value(Buffer.from(Host.encode({ ...Host.decode(v), cordoned }).finish())));
    await client.if(`/noid/v1/${keys.hostsPrefix}`, "Mod", ">", -1).then(...ops).commit();
  }
}

/**
 * Figure 1: every host in session but cordoned, a backlog created through the
 * API (kept PENDING: nothing may take it), then every host uncordoned at once
 * (as when maintenance ends): the rate at which the scheduler drains the
 * backlog, not the rate at which hosts open sessions.
 */
async function placementThroughput(ctx: Ctx, s: BenchSizes, rawTxnPerSec: number, serialTxnPerSec: number, profDir?: string): Promise<Figure[]> {
  const { fleet } = ctx;
  const n = s.placementVms;
  const tenants = await ctx.tenantsFor(n);
  const names = Array.from({ length: n }, (_, i) => `p-${i}`);
  let t = performance.now();
  await fleet.connectAll(fleet.hosts);
  ctx.log(`placement: ${fleet.hosts.length} sessions open after ${((performance.now() - t) / 1000).toFixed(1)} s; ${await ctx.liveness()}`);
  t = performance.now();
  await setCordoned(ctx.etcd.client, true);
  ctx.log(`placement: ${fleet.hosts.length} hosts cordoned in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  t = performance.now();
  const retries0 = ctx.apiRetries;
  let made = 0;
  const progress = setInterval(() => ctx.log(`placement: ${made}/${n} created`), 10_000);
  await pool(n, 8, async (i) => {
    await createOne(tenants[i % tenants.length]!, names[i]!, true);
    made++;
  }).finally(() => clearInterval(progress));
  const createSecs = (performance.now() - t) / 1000;
  const createRetries = ctx.apiRetries - retries0;
  ctx.log(`placement: ${n} VMs created through the API in ${createSecs.toFixed(1)} s (${(n / createSecs).toFixed(0)}/s, 8 in flight, ${createRetries} retried on contention), every host cordoned`);
  await sleep(1000); // let the scheduler's why-unplaced writes of the backlog land
  const before = await ctx.coord.stats();
  const prof = profDir ? new WindowProfiler() : undefined;
  if (prof) await Promise.all([prof.start(), ctx.coord.profileStart()]);
  const t0 = performance.now();
  await setCordoned(ctx.etcd.client, false);
  const tOpen = performance.now();
  const assignedAtOpen = names.filter((x) => fleet.times.assigned.has(x)).length;
  ctx.log(`placement: ${fleet.hosts.length} hosts uncordoned in ${((tOpen - t0) / 1000).toFixed(2)} s (${assignedAtOpen} VMs assigned by then)`);
  await until(() => names.every((x) => fleet.times.assigned.has(x)), 300_000, "every VM assigned");
  const t1 = performance.now();
  if (prof) {
    const files = [await prof.stop(profDir!, "placement-bench"), await ctx.coord.profileStop(profDir!, "placement-coordinator")].filter((f) => f);
    ctx.log(`placement: profiles of the placement phase in ${files.join(", ")}${ctx.coord.inline ? " (coordinator inline: in the bench profile)" : ""}`);
  }
  const after = await ctx.coord.stats();
  const done = names.map((x) => fleet.times.assigned.get(x)!);
  const sustained = sustainedRate(done);
  const overall = n / ((t1 - t0) / 1000);
  const conflicts = after.placement.conflicts - before.placement.conflicts;
  const at = (q: number) => ((percentile(done, q) - t0) / 1000).toFixed(2);
  const txns = (after.placement.txns ?? 0) - (before.placement.txns ?? 0);
  ctx.log(`placement: ${overall.toFixed(0)}/s from the first uncordon to the last assignment, ${sustained.toFixed(0)}/s sustained; assignments at 10/50/90%: ${at(10)}/${at(50)}/${at(90)} s after the first uncordon; ${txns} transactions, ${conflicts} lost races`);
  // The backlog's RUNNING reports (and their events) must not land in the next figure's write count.
  await until(() => names.every((x) => fleet.times.running.has(x)), 300_000, "every VM RUNNING");
  await sleep(500);
  return [
    figure({
      name: "placement_throughput",
      value: sustained,
      unit: "placements/s",
      limit: rawTxnPerSec,
      limitOf: `raw etcd placement-shaped txn/s at 64 in flight, same etcd, same run (serial: ${serialTxnPerSec.toFixed(0)}/s)`,
      target: 0.5,
      targetOn: "ratio",
      direction: "min",
      notes: `backlog of ${n} VMs created while all ${fleet.hosts.length} simulated hosts (in session) were cordoned, then every host uncordoned at once (their records written in transactions of 100); middle 80% of assignments; ${overall.toFixed(0)}/s uncordon-to-last; API creates ${(n / createSecs).toFixed(0)}/s at 8 in flight (${createRetries} retried on contention); anchors: kube-scheduler 680-810 pods/s, Nomad 1500/s`,
    }),
    figure({
      name: "placement_throughput_absolute",
      value: sustained,
      unit: "placements/s",
      limit: 2000,
      limitOf: "the absolute target 2000/s (kube-scheduler 680-810 pods/s, Nomad 1500/s)",
      target: 2000,
      targetOn: "value",
      direction: "min",
    }),
  ];
}

/** Figure 2 (and 4's writes per change): creates at a fixed rate, open loop. */
async function createLatency(ctx: Ctx, s: BenchSizes, rawTxnP99Ms: number, rawWatchP99Ms: number, profDir?: string): Promise<Figure[]> {
  const { fleet } = ctx;
  const n = Math.round(s.createRate * s.createSeconds);
  // A warm-up at the same rate, not measured: the first VM of each tenant makes its default
  // network (an audited write and a mesh change for every host), and a coordinator that has
  // not created VMs yet runs its create path unoptimised (measured: the first 50 creates of a
  // cold run took 150-170 ms on average, the last ones 20-30 ms). Its own figures are logged.
  const warm = Math.min(n, s.createRate);
  const base = Math.ceil(s.placementVms / VMS_PER_TENANT);
  const tenants = await ctx.tenantsFor(base * VMS_PER_TENANT + warm + n);
  // Fresh tenants, so the quota and network records are not shared with figure 1's VMs.
  const mine = tenants.slice(base).length > 0 ? tenants.slice(base) : tenants;
  /** Creates `names` at the figure's rate, open loop; times from each scheduled send. */
  const createAtRate = async (names: string[]) => {
    const t0 = performance.now() + 20;
    const sched: number[] = [];
    /** Per create: ms from its scheduled send to the API's answer. */
    const calls: Promise<number>[] = [];
    for (let i = 0; i < names.length; i++) {
      const at = t0 + (i * 1000) / s.createRate;
      const wait = at - performance.now();
      if (wait > 1) await sleep(wait);
      sched.push(at);
      calls.push(createOne(mine[i % mine.length]!, names[i]!, false).then(() => performance.now() - at));
    }
    const results = await Promise.allSettled(calls);
    const errors = results.flatMap((r) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
    const done = names.flatMap((name, i) => (results[i]!.status === "fulfilled" ? [{ name, at: sched[i]!, api: (results[i] as PromiseFulfilledResult<number>).value }] : []));
    if (done.length === 0) throw new Error(`bench: every create failed, first: ${errors[0]}`);
    await until(() => done.every((d) => fleet.times.running.has(d.name)), 300_000, "every VM RUNNING");
    return {
      t0,
      created: done.length,
      errors,
      api: done.map((d) => d.api),
      assigned: done.map((d) => fleet.times.assigned.get(d.name)! - d.at),
      running: done.map((d) => fleet.times.running.get(d.name)! - d.at),
    };
  };
  const w = await createAtRate(Array.from({ length: warm }, (_, i) => `w-${i}`));
  const warmNote = `warm-up before it, not counted: ${warm} creates at the same rate (the tenants' first VMs, whose networks they create), assigned p50 ${percentile(w.assigned, 50).toFixed(1)} p99 ${percentile(w.assigned, 99).toFixed(1)} ms`;
  ctx.log(`latency: ${warmNote}`);
  await sleep(500);
  const names = Array.from({ length: n }, (_, i) => `l-${i}`);
  // Which keys the writes touch, by their first segment (vms, assign, alloc, ...), for the log.
  const byPrefix = new Map<string, number>();
  const spy = await ctx.etcd.client
    .watch()
    .prefix("/noid/v1/")
    .create();
  spy.on("put", (kv) => {
    let seg = kv.key.toString().slice("/noid/v1/".length).split("/")[0] ?? "";
    if (seg === "vms") {
      // Which kind of VM write: phase, placed or not, with a reason or not.
      const v = Vm.decode(kv.value);
      seg = `vms[${VmPhase[v.status?.phase ?? 0]?.replace("VM_PHASE_", "") ?? "?"}${v.status?.hostId ? "" : ",unplaced"}${v.status?.reason ? ",reason" : ""}]`;
    }
    byPrefix.set(seg, (byPrefix.get(seg) ?? 0) + 1);
  });
  const rev0 = await ctx.etcd.revision();
  const m0 = await ctx.etcd.metrics();
  const prof = profDir ? new WindowProfiler() : undefined;
  // The coordinator's own cost with every host in session and nothing asked of it, for comparison.
  if (prof) await ctx.coord.profileStart();
  // How much each process ran and how long it was ready to run but waited for a CPU (2 cores
  // shared by etcd, the coordinator and this process with its simulated hosts).
  const pids = { coordinator: ctx.coord.pid, etcd: ctx.etcd.etcd.pid, "bench (client and simulated hosts)": process.pid };
  const schedAll = () => Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, schedTimes(pid)]));
  const schedNoteOf = (a: ReturnType<typeof schedAll>, secs: number) =>
    Object.entries(pids)
      .map(([k, pid]) => `${k} ${schedLine(a[k], schedTimes(pid), secs)}`)
      .join("; ");
  const i0 = await ctx.coord.stats();
  const broken0 = fleet.sessionsBroken;
  const schedIdle = schedAll();
  const ti = performance.now();
  await sleep(2000);
  const c0 = await ctx.coord.stats();
  const idleSecs = (performance.now() - ti) / 1000;
  const idleSched = schedNoteOf(schedIdle, idleSecs);
  if (prof) await ctx.coord.profileStop(profDir!, "idle-coordinator");
  if (prof) await Promise.all([prof.start(), ctx.coord.profileStart()]);
  const idleCpu = (c0.cpu.user + c0.cpu.system - i0.cpu.user - i0.cpu.system) / 1000 / (performance.now() - ti);
  ctx.log(`latency: coordinator idle with ${fleet.hosts.length} hosts in session: CPU ${(idleCpu * 100).toFixed(0)}% of a core, event loop ${(c0.loop.utilisation * 100).toFixed(0)}% busy, delay p99 ${c0.loop.delayP99Ms.toFixed(1)} ms, ${fleet.sessionsBroken - broken0} sessions broken meanwhile; CPU seconds per second meanwhile: ${idleSched}`);
  const broken1 = fleet.sessionsBroken;
  const meshMsgs = () => fleet.hosts.reduce((a, h) => a + h.meshSnapshots, 0);
  const mesh0 = meshMsgs();
  const sched0 = schedAll();
  const { t0, created, errors, api, assigned, running } = await createAtRate(names);
  const c1 = await ctx.coord.stats();
  const wall = performance.now() - t0;
  const schedNote = schedNoteOf(sched0, wall / 1000);
  const meshPer = (meshMsgs() - mesh0) / n;
  ctx.log(`latency: CPU seconds per second over the creates (all threads; ${ctx.coord.inline ? "coordinator inline: counted in the bench" : "main thread in brackets"}): ${schedNote}; "waited": ready to run, no CPU free; mesh updates sent to hosts per VM created: ${meshPer.toFixed(1)}`);
  ctx.log(
    `latency: coordinator CPU ${(((c1.cpu.user + c1.cpu.system - c0.cpu.user - c0.cpu.system) / 1000 / wall) * 100).toFixed(0)}% of a core over ${(wall / 1000).toFixed(1)} s (${((c1.cpu.user + c1.cpu.system - c0.cpu.user - c0.cpu.system) / 1000 / n).toFixed(2)} ms per VM), event loop ${(c1.loop.utilisation * 100).toFixed(0)}% busy, delay p99 ${c1.loop.delayP99Ms.toFixed(1)} ms, max ${c1.loop.delayMaxMs.toFixed(1)} ms; etcd requests per VM: ${storeCallsPer(c0.storeCalls, c1.storeCalls, n)}, mean ms per request as the coordinator timed it (queueing included): ${storeMeanMs(c0, c1)}; idle, per second: ${storeCallsPer(i0.storeCalls, c0.storeCalls, idleSecs)}; ${fleet.sessionsBroken - broken1} sessions broken during the creates`,
  );
  if (prof) {
    const files = [await prof.stop(profDir!, "latency-bench"), await ctx.coord.profileStop(profDir!, "latency-coordinator")].filter((f) => f);
    ctx.log(`latency: profiles of the creates in ${files.join(", ")}${ctx.coord.inline ? " (coordinator inline: in the bench profile)" : ""}`);
  }
  await sleep(300); // let the last writes land before counting them
  const rev1 = await ctx.etcd.revision();
  const m1 = await ctx.etcd.metrics();
  await spy.cancel();
  const writes = rev1 - rev0;
  const changes = 3 * created; // created, assigned, RUNNING
  const puts = (m1.etcd_mvcc_put_total ?? 0) - (m0.etcd_mvcc_put_total ?? 0);
  const sb = slowBursts(assigned, LATENCY_TARGET_MS);
  const slowNote = `${sb.slow} above ${LATENCY_TARGET_MS} ms, in ${sb.bursts} burst${sb.bursts === 1 ? "" : "s"} of consecutive creates, the largest ${sb.largest}`;
  ctx.log(
    `latency: ${n} creates (${errors.length} failed) at ${s.createRate}/s: API answered p50 ${percentile(api, 50).toFixed(1)} p99 ${percentile(api, 99).toFixed(1)} ms; assigned p50 ${percentile(assigned, 50).toFixed(1)} p90 ${percentile(assigned, 90).toFixed(1)} p95 ${percentile(assigned, 95).toFixed(1)} p99 ${percentile(assigned, 99).toFixed(1)} ms (${slowNote}); RUNNING p50 ${percentile(running, 50).toFixed(1)} p99 ${percentile(running, 99).toFixed(1)} ms; ${writes} etcd write txns, ${puts} keys put (${[...byPrefix].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ")})`,
  );
  const sizes = await ctx.etcd.client.getAll().prefix("/noid/v1/vms/").buffers();
  const vmBytes = Object.values(sizes).reduce((a, b) => a + b.length, 0) / Math.max(1, Object.keys(sizes).length);
  const perVmKeys = await bytesPerVm(ctx.etcd.client);
  return [
    figure({
      name: "create_to_assigned_p99_ms",
      value: percentile(assigned, 99),
      unit: "ms",
      limit: rawTxnP99Ms + rawWatchP99Ms,
      limitOf: `one raw etcd txn (the create, which places the VM) and one watch delivery (to the host's session) at their p99 ${rawTxnP99Ms.toFixed(1)} and ${rawWatchP99Ms.toFixed(1)} ms, same run`,
      target: LATENCY_TARGET_MS,
      targetOn: "value",
      direction: "max",
      notes: `p50 ${percentile(assigned, 50).toFixed(1)} ms; ${slowNote}; ${n} creates at ${s.createRate}/s open loop, timed from the scheduled send; ${errors.length} failed (${errors[0] ?? "none"}); ${warmNote}`,
    }),
    figure({
      name: "create_to_running_p99_ms",
      value: percentile(running, 99),
      unit: "ms",
      limit: 2 * rawTxnP99Ms + 2 * rawWatchP99Ms,
      limitOf: "two raw etcd txns (create with placement, status) and two watch deliveries at their p99",
      target: NaN,
      targetOn: "value",
      direction: "max",
      notes: `p50 ${percentile(running, 50).toFixed(1)} ms; simulated agent reports RUNNING at once (a real sandbox VM adds its boot)`,
    }),
    figure({
      name: "etcd_writes_per_vm_change",
      value: writes / changes,
      unit: "txn/change",
      limit: 1,
      limitOf: "one write per change (a create that places its VM writes two changes at once, and group commits write many VMs')",
      target: 1.2,
      targetOn: "value",
      direction: "max",
      notes: `etcd revision grew ${writes} for ${changes} changes (created, assigned, RUNNING x ${created}; failed creates' writes count too); ${(puts / changes).toFixed(2)} keys put per change`,
    }),
    figure({
      name: "bytes_per_vm_record",
      value: vmBytes,
      unit: "bytes",
      limit: perVmKeys,
      limitOf: `all etcd bytes (keys and values) held per VM: ${perVmKeys.toFixed(0)} B`,
      target: NaN,
      targetOn: "value",
      direction: "max",
    }),
  ];
}

/** Mean bytes (key + value) per VM over the key families a VM owns. */
async function bytesPerVm(client: Etcd3): Promise<number> {
  // One prefix at a time: the whole keyspace (events, audit, 1,000 hosts) is past a gRPC message's 4 MB.
  let vms = 0;
  let bytes = 0;
  for (const family of ["vms", "names", "assign", "ipam", "macs"]) {
    const all = await client.getAll().prefix(`/noid/v1/${family}/`).buffers();
    for (const [k, v] of Object.entries(all)) {
      if (family === "vms") vms++;
      bytes += k.length + v.length;
    }
  }
  return vms ? bytes / vms : NaN;
}

/** Figure 6 (gRPC API): GetVm with auth and validation vs the bare health check, same server. */
async function grpcUnary(ctx: Ctx, s: BenchSizes): Promise<Figure[]> {
  const c = (await ctx.tenantsFor(1))[0]!;
  const vm = (await c.listVms())[0] ?? (await c.createVm("grpc-probe", SPEC).catch(() => c.getVm("grpc-probe")));
  const run = async (call: () => Promise<unknown>) => {
    const lat: number[] = [];
    const end = performance.now() + s.measureSeconds * 1000;
    let count = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: s.grpcInFlight }, async () => {
        while (performance.now() < end) {
          const t = performance.now();
          await call();
          lat.push(performance.now() - t);
          count++;
        }
      }),
    );
    return { qps: count / ((performance.now() - t0) / 1000), p99: percentile(lat, 99) };
  };
  const health = new grpc.Client(ctx.coord.address, grpc.credentials.createInsecure());
  const check = () =>
    new Promise((resolve, reject) =>
      health.makeUnaryRequest("/grpc.health.v1.Health/Check", () => Buffer.alloc(0), (b: Buffer) => b, {}, (e, r) => (e ? reject(e) : resolve(r))),
    );
  try {
    const bare = await run(check);
    const api = await run(() => c.getVm(vm.name));
    ctx.log(`grpc: GetVm ${api.qps.toFixed(0)}/s p99 ${api.p99.toFixed(1)} ms; bare health check ${bare.qps.toFixed(0)}/s p99 ${bare.p99.toFixed(1)} ms`);
    return [
      figure({
        name: "grpc_unary_qps",
        value: api.qps,
        unit: "calls/s",
        limit: bare.qps,
        limitOf: `bare grpc.health.v1 Check on the same server at ${s.grpcInFlight} in flight (p99 ${bare.p99.toFixed(1)} ms)`,
        target: NaN,
        targetOn: "ratio",
        direction: "min",
        notes: `GetVm (token auth, name validation, ownership) at ${s.grpcInFlight} in flight, p99 ${api.p99.toFixed(1)} ms`,
      }),
      figure({
        name: "grpc_unary_p99_ms",
        value: api.p99,
        unit: "ms",
        limit: bare.p99,
        limitOf: "bare health check p99, same run",
        target: NaN,
        targetOn: "value",
        direction: "max",
      }),
    ];
  } finally {
    health.close();
  }
}

/** Figure 3: joins, key rotations and leaves in a mesh of simulated hosts. */
async function meshConvergence(ctx: Ctx, s: BenchSizes, watchP99Ms: number, profDir?: string): Promise<Figure[]> {
  const { fleet } = ctx;
  // Start from a settled mesh: every host alive and (with deltas) every host's
  // view showing all of them. After many sessions open at once some leases
  // expire and come back for a while; the events below measure one change in a
  // settled mesh, and how long settling took is logged (not waited for longer than 60 s).
  const tSettle = performance.now();
  for (;;) {
    const alive = await ctx.etcd.client.getAll().prefix(`/noid/v1/${keys.alivePrefix}`).count();
    const n = fleet.hosts.length;
    const viewsDone = !fleet.meshDeltas || fleet.hosts.every((h) => h.meshMembers === n);
    const waited = performance.now() - tSettle;
    if ((alive === n && viewsDone) || waited > 60_000) {
      ctx.log(`mesh: ${alive === n && viewsDone ? "settled" : "NOT settled"} after ${(waited / 1000).toFixed(1)} s (${alive} of ${n} hosts alive${fleet.meshDeltas ? `, ${fleet.hosts.filter((h) => h.meshMembers === n).length} views showing all` : ""}); ${await ctx.liveness()}`);
      break;
    }
    await sleep(250);
  }
  const prof = profDir ? new WindowProfiler() : undefined;
  if (prof) await Promise.all([prof.start(), ctx.coord.profileStart()]);
  const samples: Record<"join" | "rotate" | "leave", number[]> = { join: [], rotate: [], leave: [] };
  // A join's two parts: registering and opening the session (the host is alive
  // from then), and from there until every other host's view shows it.
  const joinParts = { open: [] as number[], spread: [] as number[] };
  // Every host but `except` must see a snapshot for which `ok` holds; resolves with the time of the last.
  const converge = (ok: (hasKey: (key: string) => boolean) => boolean, except: SimHost | undefined): Promise<number> => {
    const rest = fleet.hosts.filter((h) => h !== except && !gone.has(h));
    let left = rest.length;
    let last = 0;
    return new Promise((resolve) => {
      for (const h of rest) {
        h.meshProbes.add((hasKey, at) => {
          if (!ok(hasKey)) return false;
          last = Math.max(last, at);
          if (--left === 0) resolve(last);
          return true;
        });
      }
    });
  };
  const gone = new Set<SimHost>();
  const timeout = (p: Promise<number>, what: string) =>
    Promise.race([
      p,
      sleep(60_000).then(() => {
        const waiting = fleet.hosts.filter((h) => h.meshProbes.size > 0 && !gone.has(h));
        const broken = waiting.filter((h) => h.sessionError !== undefined);
        const why = broken[0]?.sessionError;
        return Promise.reject(
          new Error(`bench: mesh did not converge on a ${what} within 60 s (${waiting.length} hosts still waiting, ${broken.length} of them with a broken session${why ? `: ${why}` : ""}; ${fleet.meshResyncs} resyncs asked)`),
        );
      }),
    ]);

  for (let e = 0; e < s.meshEvents; e++) {
    // Join: a new host registers and opens its session.
    const h = fleet.add(`mesh-join-${e}`);
    const key = h.key;
    const done = converge((has) => has(key), h);
    const t0 = performance.now();
    await h.register();
    await h.connect();
    const tOpen = performance.now();
    const joined = await timeout(done, "join");
    samples.join.push(joined - t0);
    joinParts.open.push(tOpen - t0);
    joinParts.spread.push(Math.max(0, joined - tOpen));
    // Rotate: an existing host registers again with a new WireGuard key.
    const r = fleet.hosts[e % fleet.hosts.length]!;
    const next = wgKey();
    const done2 = converge((has) => has(next), r);
    const t1 = performance.now();
    r.key = next;
    await r.register();
    samples.rotate.push((await timeout(done2, "key rotation")) - t1);
  }
  // Leave: sessions end; the coordinator learns it when the host's lease
  // expires (alive/<id> deleted). Timed from that deletion, seen by our own watch.
  // Hosts that neither joined nor rotated above.
  const leaving = fleet.hosts.slice(s.meshEvents, 2 * s.meshEvents);
  const deletedAt = new Map<string, number>();
  const w = await ctx.etcd.client.watch().prefix(`/noid/v1/${keys.alivePrefix}`).create();
  w.on("delete", (kv) => deletedAt.set(kv.key.toString().slice(`/noid/v1/${keys.alivePrefix}`.length), performance.now()));
  try {
    // The leaving hosts get no snapshots once closed: only the others must converge.
    leaving.forEach((h) => gone.add(h));
    const waits = leaving.map((h) => {
      const k = h.key;
      return converge((has) => !has(k), h);
    });
    const closedAt = performance.now();
    leaving.forEach((h) => h.close());
    const ends2 = await Promise.race([
      Promise.all(waits),
      sleep(45_000).then(() => {
        const pending = fleet.hosts.filter((h) => h.meshProbes.size > 0 && !gone.has(h)).length;
        throw new Error(`bench: mesh did not converge on leaves within 45 s (lease expiries seen: ${deletedAt.size}/${leaving.length}; hosts still waiting: ${pending})`);
      }),
    ]);
    const detect: number[] = [];
    leaving.forEach((h, i) => {
      const d = deletedAt.get(h.hostId);
      if (d === undefined) throw new Error(`bench: never saw host ${h.hostId}'s lease expire`);
      samples.leave.push(ends2[i]! - d);
      detect.push(d - closedAt);
    });
    ctx.log(`mesh: lease expiry took ${percentile(detect, 50).toFixed(0)} ms after the session ended (the lease TTL)`);
  } finally {
    await w.cancel();
  }
  if (prof) {
    const files = [await prof.stop(profDir!, "mesh-bench"), await ctx.coord.profileStop(profDir!, "mesh-coordinator")].filter((f) => f);
    ctx.log(`mesh: profiles of the mesh events in ${files.join(", ")}${ctx.coord.inline ? " (coordinator inline: in the bench profile)" : ""}`);
  }
  const all = [...samples.join, ...samples.rotate, ...samples.leave];
  const p = (xs: number[]) => `p50 ${percentile(xs, 50).toFixed(0)} / p99 ${percentile(xs, 99).toFixed(0)} ms`;
  const mode = `${fleet.meshDeltas ? `deltas (${fleet.meshResyncs} resyncs asked)` : "full snapshots"}, ${fleet.sessionsReopened} broken sessions reopened`;
  const joinSplit = `join = register + session open ${p(joinParts.open)} then spread ${p(joinParts.spread)}`;
  ctx.log(`mesh: ${joinSplit}`);
  ctx.log(`mesh: each join ${samples.join.map((x) => x.toFixed(0)).join(" ")}; each rotation ${samples.rotate.map((x) => x.toFixed(0)).join(" ")} ms`);
  ctx.log(`mesh: join ${p(samples.join)}, rotate ${p(samples.rotate)}, leave ${p(samples.leave)}; hosts took ${mode}; at the end ${await ctx.liveness()}`);
  return [
    figure({
      name: "mesh_convergence_p99_ms",
      value: percentile(all, 99),
      unit: "ms",
      limit: watchP99Ms,
      limitOf: `etcd watch delivery p99 ${watchP99Ms.toFixed(1)} ms (the floor of any propagation), same run`,
      target: 1000,
      targetOn: "value",
      direction: "max",
      notes: `${fleet.hosts.length} hosts taking ${mode}; until every other host's view showed the change; join ${p(samples.join)} (${joinSplit}), rotate ${p(samples.rotate)}, leave ${p(samples.leave)} (leave timed from lease expiry); anchors: Kilo resyncs every 30 s, Nebula 60 s`,
    }),
  ];
}

/** Figure 4: coordinator memory with many hosts and VMs (records written as the API would hold them). */
async function coordinatorRss(etcd: BenchEtcd, s: BenchSizes, o: BenchOptions, log: (s: string) => void): Promise<Figure[]> {
  const prefix = "/rss/";
  const t = performance.now();
  let bytes = 0;
  const puts: { key: string; value: Uint8Array }[] = [];
  const flush = async () => {
    const batch = puts.splice(0, puts.length);
    await pool(Math.ceil(batch.length / 100), 8, async (b) => {
      const part = batch.slice(b * 100, b * 100 + 100);
      await etcd.client.kv.txn({ compare: [], success: part.map((p) => ({ request_put: { key: Buffer.from(p.key), value: Buffer.from(p.value) } })), failure: [] });
    });
  };
  const add = async (key: string, value: Uint8Array) => {
    puts.push({ key: prefix + key, value });
    bytes += prefix.length + key.length + value.length;
    if (puts.length >= 20_000) await flush();
  };
  const hostIds: string[] = [];
  const now = new Date();
  for (let i = 0; i < s.rssHosts; i++) {
    const id = (0x2000000000000000n + BigInt(i)).toString(16);
    hostIds.push(id);
    const meshIp = `100.64.${(i >> 8) & 255}.${i & 255}`;
    // fromPartial: every field a Host has, whatever is added to it later.
    const h: Host = Host.fromPartial({
      id,
      name: `rss-${i}`,
      address: `10.1.${(i >> 8) & 255}.${i & 255}`,
      labels: {},
      drivers: ["sandbox"],
      capacity: { vcpus: 512, memoryMb: 1 << 20, diskGb: 10_000 },
      allocated: undefined,
      vmCount: 0,
      cordoned: false,
      state: HostState.HOST_STATE_UNSPECIFIED,
      wireguardPublicKey: wgKey(),
      wireguardPort: 51820,
      agentVersion: "bench",
      registeredAt: now,
      lastSeenAt: now,
      meshIp,
      posture: undefined,
    });
    await add(keys.host(id), Host.encode(h).finish());
    await add(keys.hostName(h.name), Buffer.from(id));
    await add(keys.meshIp(meshIp), Buffer.from(id));
    await add(keys.alloc(id), sampleAlloc(Math.ceil(s.rssVms / s.rssHosts)));
  }
  for (let i = 0; i < s.rssVms; i++) {
    const rec = Vm.decode(sampleVm(i));
    const host = hostIds[i % hostIds.length]!;
    rec.status!.hostId = host;
    rec.status!.phase = VmPhase.VM_PHASE_RUNNING;
    rec.owner = `tenant${Math.floor(i / VMS_PER_TENANT)}`;
    await add(keys.vm(rec.id), Vm.encode(rec).finish());
    await add(keys.vmName(rec.owner, rec.name), Buffer.from(rec.id));
    await add(keys.assign(host, rec.id), Buffer.from(rec.id));
  }
  await flush();
  log(`rss: ${s.rssHosts} hosts and ${s.rssVms} VMs written (${(bytes / 2 ** 20).toFixed(1)} MiB) in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  const coord = await startBenchCoordinator({ endpoints: etcd.endpoints, prefix, inline: o.inline, execArgv: o.coordinatorExecArgv });
  try {
    await sleep(500);
    const st = await coord.stats({ gc: true });
    const mb = st.rss / 2 ** 20;
    log(`rss: coordinator RSS ${mb.toFixed(0)} MiB (heap ${(st.heapUsed / 2 ** 20).toFixed(0)} MiB) holding them`);
    return [
      figure({
        name: s.rssVms >= 100_000 ? "coordinator_rss_mb_100k_vms" : `coordinator_rss_mb_${s.rssVms}_vms`,
        value: mb,
        unit: "MiB",
        limit: bytes / 2 ** 20,
        limitOf: `the state it holds: ${(bytes / 2 ** 20).toFixed(1)} MiB of keys and values in etcd`,
        target: NaN,
        targetOn: "value",
        direction: "max",
        notes: `${s.rssHosts} hosts, ${s.rssVms} VMs (written to etcd directly with the coordinator's codec, no sessions)${coord.inline ? "; coordinator inline: RSS includes the bench" : ""}; after a GC`,
      }),
    ];
  } finally {
    await coord.stop();
  }
}
