// The chaos runs: each one starts a storm of creates and destroys, injects one
// fault at a random moment, heals it, lets the cluster settle, then compares
// the history with the final state (chaos/check.ts).
import { AllocationRecord } from "../gen/noid/v1/records.js";
import { Host } from "../gen/noid/v1/host.js";
import { HostLossPolicy, Vm, VmDesiredState, VmPhase } from "../gen/noid/v1/vm.js";
import { createEtcdStore } from "../coordinator/store/index.js";
import type { Store } from "../coordinator/store/store.js";
import { keys } from "../coordinator/state/keys.js";
import { HostState, connect, type NoidClient } from "../sdk/index.js";
import { HOST_CAPACITY, startChaosCluster, type ChaosCluster } from "./cluster.js";
import { checkHistory, viewDifferences, type AllocSample, type ClusterView, type CallRecord, type ChaosHistory, type FinalState, type Resources, type RunningReport, type Violation } from "./check.js";

export const SCENARIOS = ["leader-kill", "agent-kill", "etcd-restart", "coordinator-pause", "underlay-cut"] as const;
export type Scenario = (typeof SCENARIOS)[number];

export interface ChaosOptions {
  scenarios: readonly Scenario[];
  /** Runs of each scenario. */
  repeats: number;
  /** Storm length around the fault (ms). */
  stormMs: number;
  hosts: number;
  seed: number;
  log: (s: string) => void;
  /** Each step of a run as it starts (where a stuck run stopped). */
  progress?: (s: string) => void;
  /** Sabotage: hosts do not fence (the checker must then find VMs run twice after long cuts). */
  noFencing?: boolean;
  /** How long a run may take to settle after the fault healed before it counts as unsettled (default 90 s). */
  settleMs?: number;
}

export interface RunResult {
  scenario: Scenario;
  faults: number;
  calls: number;
  acked: number;
  violations: Violation[];
  /** leader-kill: leader killed -> next placement (ms); undefined when none was seen. */
  failoverMs?: number;
  /** VMs that ran on more than one host during the run (one after the other: rescheduled). */
  moved: number;
  settleMs: number;
  detail: string;
  /** Refused calls by message (trimmed), most frequent first: what the storm ran into. */
  errors: [string, number][];
}

/** mulberry32: a small seeded generator, so a run can be replayed with --seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const VM_SIZE: Resources = { vcpus: 1, memoryMb: 64 };

/** Creates and destroys from `workers` clients until stopped, recording every call. */
class Storm {
  readonly calls: CallRecord[] = [];
  readonly sizes: Record<string, Resources> = {};
  /** Names the storm may destroy, with the id when the create was acknowledged. A create that
   * failed may still have made the VM (e.g. RESOURCE_EXHAUSTED keeps it PENDING): it is destroyed by name. */
  private readonly live = new Map<string, string | undefined>();
  private stopped = false;
  private seq = 0;
  private done: Promise<void>[] = [];

  constructor(
    private readonly clients: NoidClient[],
    private readonly run: number,
    private readonly rand: () => number,
    private readonly graceSeconds: number,
    private readonly maxLive: number,
  ) {}

  /**
   * VMs that live through the whole run (the storm's own live a few seconds, mostly
   * destroyed before a lost host's grace ends): half keep, half reschedule.
   */
  async residents(n: number): Promise<void> {
    for (let i = 0; i < n; i++) await this.create(this.clients[0]!, { resident: true, reschedule: i % 2 === 0 });
  }

  /** Ids of the acknowledged residents whose policy is reschedule. */
  readonly movable = new Set<string>();

  start(): void {
    this.done = this.clients.map((c) => this.worker(c));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.done);
  }

  private async worker(c: NoidClient): Promise<void> {
    while (!this.stopped) {
      const destroy = this.live.size > 0 && (this.live.size >= this.maxLive || this.rand() < 0.35);
      if (destroy) await this.destroy(c);
      else await this.create(c);
      await sleep(this.rand() * 150);
    }
  }

  private async create(c: NoidClient, o: { resident?: boolean; reschedule?: boolean } = {}): Promise<void> {
    const name = `r${this.run}-${o.resident ? "res" : ""}${++this.seq}`;
    const reschedule = o.reschedule ?? this.rand() < 0.5;
    // Residents spread over the hosts (one anti-affinity group per policy; without it the
    // scheduler's network locality stacks them on one host), so whichever host a fault hits
    // carries VMs of both policies.
    const group = o.resident ? { antiAffinityGroup: `r${this.run}-${reschedule ? "move" : "keep"}` } : {};
    const rec: CallRecord = { op: "create", name, start: Date.now(), end: 0, ok: false };
    this.calls.push(rec);
    try {
      const vm = await c.createVm(name, {
        ...VM_SIZE,
        diskGb: 1,
        hostLoss: { policy: reschedule ? HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE : HostLossPolicy.HOST_LOSS_POLICY_KEEP, graceSeconds: this.graceSeconds },
        ...group,
      });
      rec.ok = true;
      if (o.resident && reschedule) this.movable.add(vm.id);
      rec.vmId = vm.id;
      rec.ip = vm.status?.ip ?? "";
      rec.networkId = vm.status?.networkId ?? "";
      this.sizes[vm.id] = VM_SIZE;
      if (!o.resident) this.live.set(name, vm.id);
    } catch (e) {
      rec.error = e instanceof Error ? e.message : String(e);
      this.live.set(name, undefined);
    } finally {
      rec.end = Date.now();
    }
  }

  private async destroy(c: NoidClient): Promise<void> {
    const names = [...this.live.keys()];
    const name = names[Math.floor(this.rand() * names.length)]!;
    const id = this.live.get(name);
    this.live.delete(name);
    const rec: CallRecord = { op: "destroy", name, ...(id ? { vmId: id } : {}), start: Date.now(), end: 0, ok: false };
    this.calls.push(rec);
    try {
      const vm = await c.destroyVm(id ? { id } : name);
      rec.vmId = vm.id;
      rec.ok = true;
    } catch (e) {
      rec.error = e instanceof Error ? e.message : String(e);
    } finally {
      rec.end = Date.now();
    }
  }
}

/** Samples allocation records and new assignments from etcd while a run lasts. */
class Sampler {
  readonly allocs: AllocSample[] = [];
  /** First time each assign/ key was seen (placements), and the revision that created it. */
  readonly placedAt = new Map<string, { at: number; rev: number }>();
  private names = new Map<string, string>();
  private stopped = false;
  private loop?: Promise<void>;

  constructor(private readonly store: Store) {}

  async start(): Promise<void> {
    // Assignments from before the run are not placements of this run.
    for (const kv of (await this.store.list("assign/")).kvs) this.placedAt.set(kv.key, { at: 0, rev: kv.createRevision });
    this.loop = (async () => {
      while (!this.stopped) {
        await this.sample().catch(() => undefined); // etcd may be partly down: skip this sample
        await sleep(100);
      }
    })();
  }

  private async sample(): Promise<void> {
    const at = Date.now();
    const [allocs, assigns] = await Promise.all([this.store.list(keys.allocPrefix), this.store.list("assign/")]);
    for (const kv of assigns.kvs) if (!this.placedAt.has(kv.key)) this.placedAt.set(kv.key, { at, rev: kv.createRevision });
    for (const kv of allocs.kvs) {
      const id = kv.key.slice(keys.allocPrefix.length);
      if (!this.names.has(id)) {
        const h = await this.store.get(keys.host(id));
        if (h) this.names.set(id, Host.decode(h.value).name);
      }
      const a = AllocationRecord.decode(kv.value).allocated;
      this.allocs.push({ at, host: this.names.get(id) ?? id, allocated: { vcpus: a?.vcpus ?? 0, memoryMb: a?.memoryMb ?? 0 } });
    }
  }

  /** When the first placement written after etcd revision `rev` was seen (polled every 100 ms). */
  firstPlacementAfter(rev: number): number | undefined {
    const after = [...this.placedAt.values()].filter((x) => x.rev > rev).map((x) => x.at);
    return after.length ? Math.min(...after) : undefined;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

async function readFinal(store: Store): Promise<FinalState> {
  const hosts = (await store.list(keys.hostsPrefix)).kvs.map((kv) => Host.decode(kv.value));
  const nameOf = new Map(hosts.map((h) => [h.id, h.name]));
  const vms = (await store.list(keys.vmsPrefix)).kvs.map((kv) => Vm.decode(kv.value));
  return {
    vms: vms.map((v) => ({
      id: v.id,
      name: v.name,
      hostId: v.status?.hostId ?? "",
      ip: v.status?.ip ?? "",
      networkId: v.status?.networkId ?? "",
      resources: { vcpus: v.spec?.vcpus ?? 0, memoryMb: v.spec?.memoryMb ?? 0 },
    })),
    assignments: (await store.list("assign/")).kvs.map((kv) => {
      const [, hostId = "", vmId = ""] = kv.key.split("/");
      return { host: nameOf.get(hostId) ?? hostId, vmId };
    }),
    capacity: Object.fromEntries(hosts.map((h) => [h.name, { vcpus: h.capacity?.vcpus ?? 0, memoryMb: h.capacity?.memoryMb ?? 0 }])),
  };
}

/** What etcd holds, as a replica would show it. */
async function truthView(store: Store): Promise<ClusterView> {
  const [hosts, alive, allocs, vms] = await Promise.all([store.list(keys.hostsPrefix), store.list(keys.alivePrefix), store.list(keys.allocPrefix), store.list(keys.vmsPrefix)]);
  const aliveIds = new Set(alive.kvs.map((kv) => kv.key.slice(keys.alivePrefix.length)));
  const count = new Map(allocs.kvs.map((kv) => [kv.key.slice(keys.allocPrefix.length), AllocationRecord.decode(kv.value).vmCount]));
  const view: ClusterView = { hosts: {}, vms: {} };
  for (const kv of hosts.kvs) {
    const h = Host.decode(kv.value);
    view.hosts[h.name] = { ready: aliveIds.has(h.id), vmCount: count.get(h.id) ?? 0 };
  }
  for (const kv of vms.kvs) {
    const v = Vm.decode(kv.value);
    view.vms[v.id] = { phase: VmPhase[v.status?.phase ?? 0] ?? "?", host: v.status?.hostName ?? "" };
  }
  return view;
}

/**
 * Once settled, every running replica must show what etcd holds (its informers
 * caught up): compared for up to `waitMs` (a replica may lag a moment), then
 * the differences of each replica still off. Empty: all agree.
 */
async function replicaDivergence(c: ChaosCluster, store: Store, waitMs = 10_000): Promise<string[]> {
  const end = Date.now() + waitMs;
  for (;;) {
    const truth = await truthView(store);
    const out: string[] = [];
    for (const co of c.coords) {
      if (!c.alive(co) || co.paused) continue;
      const client = connect({ address: `127.0.0.1:${co.port}`, token: c.token, insecure: true, deadlineMs: 3000, retries: 0 });
      try {
        const [hosts, vms] = await Promise.all([client.listHosts(), client.listVms()]);
        const view: ClusterView = { hosts: {}, vms: {} };
        for (const h of hosts) view.hosts[h.name] = { ready: h.state === HostState.HOST_STATE_READY, vmCount: h.vmCount };
        for (const v of vms) view.vms[v.id] = { phase: VmPhase[v.status?.phase ?? 0] ?? "?", host: v.status?.hostName ?? "" };
        const diff = viewDifferences(view, truth);
        if (diff.length > 0) out.push(`replica c${co.index}: ${diff.join("; ")}`);
      } catch (e) {
        out.push(`replica c${co.index}: ${(e as Error).message}`);
      } finally {
        client.close();
      }
    }
    if (out.length === 0 || Date.now() > end) return out;
    await sleep(500);
  }
}

/** Settled: every coordinator and host back, every VM where it should be (RUNNING on a host, or gone). */
async function settled(c: ChaosCluster, admin: NoidClient): Promise<string | undefined> {
  const hosts = await admin.listHosts();
  const ready = hosts.filter((h) => h.state === HostState.HOST_STATE_READY).length;
  if (ready < c.hosts.length) return `${ready}/${c.hosts.length} hosts ready`;
  if ((await c.leader()) === undefined) return "no single leader";
  const vms = await admin.listVms();
  const waiting = vms.filter((v) => v.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED || v.status?.phase !== VmPhase.VM_PHASE_RUNNING || !v.status.hostId);
  if (waiting.length > 0) {
    const w = waiting[0]!;
    const on = w.status?.hostName ?? "";
    const host = c.hosts.find((h) => h.name === on);
    const where = on ? ` on ${on} (which ${host?.running.includes(w.id) ? "runs" : "does not run"} it)` : " unplaced";
    return `${waiting.length} VMs not settled (e.g. ${w.name} ${w.id}: ${VmPhase[w.status?.phase ?? 0]}${where} ${w.status?.reason ?? ""})`;
  }
  // Every host runs exactly what it is assigned.
  const want = new Map<string, string[]>();
  for (const v of vms) want.set(v.status!.hostName, [...(want.get(v.status!.hostName) ?? []), v.id]);
  for (const h of c.hosts) {
    const w = (want.get(h.name) ?? []).sort().join(",");
    if (h.running.join(",") !== w) return `host ${h.name} runs [${h.running.length}], assigned [${(want.get(h.name) ?? []).length}]`;
  }
  return undefined;
}

async function waitSettled(c: ChaosCluster, admin: NoidClient, timeoutMs: number): Promise<{ ok: boolean; ms: number; why: string }> {
  const t0 = Date.now();
  let why = "";
  while (Date.now() - t0 < timeoutMs) {
    why = (await settled(c, admin).catch((e: unknown) => `error: ${(e as Error).message}`)) ?? "";
    if (!why) return { ok: true, ms: Date.now() - t0, why };
    await sleep(250);
  }
  return { ok: false, ms: Date.now() - t0, why };
}

/** Injects one fault of `scenario` at a random moment of the storm and heals it; returns what it did. */
interface Injected {
  detail: string;
  failoverMs?: number;
  heal: () => Promise<void>;
  /** A host cut off long enough that its reschedule-policy VMs must have moved, and what it ran before. */
  lostHost?: { name: string; ranBefore: string[] };
}

async function inject(c: ChaosCluster, store: Store, scenario: Scenario, rand: () => number, sampler: Sampler): Promise<Injected> {
  const t = c.timings;
  const between = (a: number, b: number) => Math.round(a + rand() * (b - a));
  switch (scenario) {
    case "leader-kill": {
      const l = (await c.leader()) ?? 0;
      const at = Date.now();
      await c.killCoordinator(l);
      // Failover: the storm keeps creating; the next placement written after the old leader died ends it.
      const rev = await store.revision();
      let failoverMs: number | undefined;
      const until = Date.now() + 30_000;
      while (Date.now() < until) {
        const p = sampler.firstPlacementAfter(rev);
        if (p !== undefined) {
          failoverMs = p - at;
          break;
        }
        await sleep(50);
      }
      return { detail: `SIGKILL leader c${l}`, ...(failoverMs !== undefined ? { failoverMs } : {}), heal: () => c.startCoordinator(l) };
    }
    case "agent-kill": {
      const i = Math.floor(rand() * c.hosts.length);
      const down = between(200, (t.agentLeaseSeconds + t.graceSeconds) * 500);
      await c.killHost(i);
      await sleep(down);
      return { detail: `SIGKILL ${c.hosts[i]!.name}, restarted after ${down} ms`, heal: () => c.startHost(i) };
    }
    case "etcd-restart": {
      const i = Math.floor(rand() * c.etcd.members.length);
      const down = between(300, 3000);
      await c.etcd.stopMember(i);
      await sleep(down);
      return { detail: `etcd ${c.etcd.members[i]!.name} stopped for ${down} ms`, heal: () => c.etcd.startMember(i) };
    }
    case "coordinator-pause": {
      const l = rand() < 0.7 ? ((await c.leader()) ?? 0) : Math.floor(rand() * c.coords.length);
      const down = t.leaderLeaseSeconds * 1000 + between(300, 3000);
      c.signalCoordinator(l, "SIGSTOP");
      await sleep(down);
      return { detail: `SIGSTOP c${l} for ${down} ms (lease ${t.leaderLeaseSeconds} s)`, heal: async () => c.signalCoordinator(l, "SIGCONT") };
    }
    case "underlay-cut": {
      const i = Math.floor(rand() * c.hosts.length);
      // Half the time shorter than lease + grace (the VMs stay), half longer (reschedule-policy VMs move, fenced first).
      // A long cut outlasts lease + grace by at least 3 s: the reschedule is due about
      // lease + grace after the cut, and the check below holds the cluster to it.
      const lost = (t.agentLeaseSeconds + t.graceSeconds) * 1000;
      const long = rand() >= 0.5;
      const down = long ? between(lost + 3000, lost + 5000) : between(500, lost - 500);
      const h = c.hosts[i]!;
      const ranBefore = [...h.running];
      await Promise.all(h.relays.map((r) => r.cut()));
      await sleep(down);
      return {
        detail: `cut ${h.name} off for ${down} ms`,
        heal: async () => void (await Promise.all(h.relays.map((r) => r.restore()))),
        ...(long ? { lostHost: { name: h.name, ranBefore } } : {}),
      };
    }
  }
}

/** Refused calls grouped by message (ids and names stripped so alike errors group), most frequent first. */
export function topErrors(calls: readonly CallRecord[], n = 3): [string, number][] {
  const by = new Map<string, number>();
  for (const c of calls) {
    if (c.ok || c.error === undefined) continue;
    const m = `${c.op}: ${c.error.replace(/r\d+-(res)?\d+/g, "<vm>").replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, "<id>").slice(0, 160)}`;
    by.set(m, (by.get(m) ?? 0) + 1);
  }
  return [...by.entries()].sort((a, b) => b[1] - a[1]).slice(0, n);
}

/**
 * After a host was lost past lease + grace: every reschedule-policy resident it ran
 * must end the run on another host (fenced there, placed elsewhere). Pure.
 */
export function notRescheduled(lostHost: Injected["lostHost"], movable: ReadonlySet<string>, final: FinalState): Violation[] {
  if (!lostHost) return [];
  const ran = new Set(lostHost.ranBefore);
  return final.vms
    .filter((v) => movable.has(v.id) && ran.has(v.id) && final.assignments.some((a) => a.vmId === v.id && a.host === lostHost.name))
    .map((v) => ({ kind: "not-rescheduled" as const, detail: `VM ${v.name} (${v.id}, policy reschedule) is still on ${lostHost.name}, lost past its grace` }));
}

/** VMs seen running on more than one host over the run. */
export function movedVms(running: readonly RunningReport[]): number {
  const hostsOf = new Map<string, Set<string>>();
  for (const r of running) for (const id of r.running) hostsOf.set(id, (hostsOf.get(id) ?? new Set()).add(r.host));
  return [...hostsOf.values()].filter((s) => s.size > 1).length;
}

async function oneRun(c: ChaosCluster, store: Store, scenario: Scenario, run: number, o: ChaosOptions, rand: () => number): Promise<RunResult> {
  const admin = c.client();
  const clients = [c.client(), c.client(), c.client()];
  const running: RunningReport[] = c.hosts.map((h) => ({ at: Date.now(), host: h.name, running: [...h.running] }));
  c.onRunning = (host, ids, at) => running.push({ at, host, running: [...ids] });
  const step = (what: string): void => o.progress?.(`run ${run} ${scenario}: ${what}`);
  const sampler = new Sampler(store);
  step("sampler");
  await sampler.start();
  const storm = new Storm(clients, run, rand, c.timings.graceSeconds, Math.floor((c.hosts.length * HOST_CAPACITY.vcpus) / 2));
  step("residents");
  await storm.residents(6);
  storm.start();
  await sleep(o.stormMs * (0.2 + rand() * 0.3));
  step("fault");
  const fault = await inject(c, store, scenario, rand, sampler);
  step("heal");
  await fault.heal();
  await sleep(o.stormMs * 0.4);
  step("storm stop");
  await storm.stop();
  step("settle");
  const settleMs = o.settleMs ?? 90_000;
  const settle = await waitSettled(c, admin, settleMs);
  step("replicas");
  const diverged = await replicaDivergence(c, store);
  step("sampler stop");
  await sampler.stop();
  c.onRunning = undefined;
  const final = await readFinal(store);
  const history: ChaosHistory = { calls: storm.calls, running, allocs: sampler.allocs, final, sizes: { ...storm.sizes } };
  for (const v of final.vms) history.sizes[v.id] ??= v.resources;
  const violations = checkHistory(history);
  if (!settle.ok) violations.push({ kind: "unsettled", detail: `not settled within ${settleMs / 1000} s: ${settle.why}` });
  for (const d of diverged) violations.push({ kind: "diverged", detail: `${d} (10 s after settling)` });
  violations.push(...notRescheduled(fault.lostHost, storm.movable, final));
  // Clean slate for the next run: destroy what is left and wait until it is gone.
  step("clean up");
  for (const v of await admin.listVms().catch(() => [])) await admin.destroyVm({ id: v.id }).catch(() => undefined);
  await waitSettled(c, admin, Math.min(60_000, settleMs));
  return {
    scenario,
    faults: 1,
    calls: storm.calls.length,
    acked: storm.calls.filter((x) => x.ok).length,
    violations,
    ...(fault.failoverMs !== undefined ? { failoverMs: fault.failoverMs } : {}),
    moved: movedVms(running),
    settleMs: settle.ms,
    detail: fault.detail,
    errors: topErrors(storm.calls),
  };
}

export async function runChaos(o: ChaosOptions): Promise<RunResult[]> {
  const rand = rng(o.seed);
  const c = await startChaosCluster({ hosts: o.hosts, log: o.log, noFencing: o.noFencing ?? false });
  const store = await createEtcdStore({ endpoints: c.etcd.endpoints, prefix: c.prefix });
  const results: RunResult[] = [];
  // Interrupted: remove the cluster (processes, data) before leaving.
  const interrupted = (sig: NodeJS.Signals) => {
    o.log(`${sig}: stopping the cluster`);
    void c.stop().finally(() => process.exit(130));
  };
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  try {
    let run = 0;
    for (let r = 0; r < o.repeats; r++) {
      for (const s of o.scenarios) {
        const res = await oneRun(c, store, s, ++run, o, rand);
        results.push(res);
        o.log(
          `run ${run} ${s}: ${res.detail}; ${res.calls} calls (${res.acked} acknowledged), settled in ${res.settleMs} ms` +
            (res.failoverMs !== undefined ? `, failover ${res.failoverMs} ms` : "") +
            (res.moved ? `, ${res.moved} VMs rescheduled` : "") +
            `, ${res.violations.length} violations`,
        );
        for (const v of res.violations) o.log(`  VIOLATION ${v.kind}: ${v.detail}`);
        for (const [m, n] of res.errors) o.log(`  refused ${n}x ${m}`);
      }
    }
  } finally {
    process.off("SIGINT", interrupted);
    process.off("SIGTERM", interrupted);
    await store.close();
    await c.stop();
  }
  return results;
}
