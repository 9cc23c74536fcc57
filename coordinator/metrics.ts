// The coordinator's metrics: one prom-client Registry per process (never the
// global default), served at /metrics (common/metrics-http.ts). Counters fed
// by hooks (API calls, etcd requests, events) are incremented as things
// happen; gauges over cluster state (VMs by phase, hosts by state, quota use)
// are computed at scrape time from the informers by pure functions.
import { USAGE_LABELS, type HostUsageStore } from "./agents/usage-store.js";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { HostState, type Host } from "../gen/noid/v1/host.js";
import { VmPhase, type Vm } from "../gen/noid/v1/vm.js";
import type { Event } from "../gen/noid/v1/event.js";
import type { Limits } from "./limits.js";
import type { PlacementStats } from "./controllers/placement.js";
import { EXHAUSTION_THRESHOLD, networkUsage } from "./networks/usage.js";
import type { ClusterState } from "./state/cluster.js";
import type { Change } from "./state/informer.js";
import type { Compare, Lease, ListOptions, Op, Store, WatchOptions } from "./store/store.js";
import { phaseName } from "./events/recorder.js";

/** Phases every scrape reports (zero included), so dashboards never see a gap. */
export const PHASES = [
  VmPhase.VM_PHASE_PENDING,
  VmPhase.VM_PHASE_CREATING,
  VmPhase.VM_PHASE_RUNNING,
  VmPhase.VM_PHASE_STOPPING,
  VmPhase.VM_PHASE_STOPPED,
  VmPhase.VM_PHASE_FAILED,
  VmPhase.VM_PHASE_DESTROYING,
  VmPhase.VM_PHASE_UNKNOWN,
  VmPhase.VM_PHASE_PAUSED,
  VmPhase.VM_PHASE_MIGRATING,
].map(phaseName);

/** Pure: VMs per phase name, every known phase present. */
export function vmsByPhase(vms: readonly Vm[]): Map<string, number> {
  const out = new Map(PHASES.map((p) => [p, 0]));
  for (const vm of vms) {
    const p = phaseName(vm.status?.phase);
    out.set(p, (out.get(p) ?? 0) + 1);
  }
  return out;
}

/** Pure: hosts per state ("ready", "unreachable") and how many are cordoned. */
export function hostsByState(hosts: readonly Host[]): { byState: Map<string, number>; cordoned: number } {
  const byState = new Map([
    ["ready", 0],
    ["unreachable", 0],
  ]);
  let cordoned = 0;
  for (const h of hosts) {
    const s = h.state === HostState.HOST_STATE_READY ? "ready" : "unreachable";
    byState.set(s, byState.get(s)! + 1);
    if (h.cordoned) cordoned++;
  }
  return { byState, cordoned };
}

export interface QuotaUse {
  vms: number;
  vcpus: number;
  memoryMb: number;
}

/** Pure: what each user's VMs hold (what the quota counters count). */
export function quotaUse(vms: readonly Vm[]): Map<string, QuotaUse> {
  const out = new Map<string, QuotaUse>();
  for (const vm of vms) {
    const q = out.get(vm.owner) ?? { vms: 0, vcpus: 0, memoryMb: 0 };
    q.vms++;
    q.vcpus += vm.spec?.vcpus ?? 0;
    q.memoryMb += vm.spec?.memoryMb ?? 0;
    out.set(vm.owner, q);
  }
  return out;
}

export function codeName(code: number): string {
  return (GrpcStatus as unknown as Record<number, string>)[code] ?? String(code);
}

/** What the scrape-time collectors read; attached once the coordinator has built them. */
export interface CoordinatorSources {
  cluster: ClusterState;
  placement: { stats: PlacementStats };
  authFailures: () => { byReason: Record<string, number>; lockouts: number };
  limits: () => Limits;
  /** 1 while this coordinator leads (runs the scheduler and controllers). */
  isLeader: () => boolean;
  /** Usage counters hosts' agents sent to this coordinator (absent: none exported). */
  usage?: HostUsageStore;
}

const STORE_OPS = ["get", "list", "txn", "put", "delete", "watch", "lease_grant", "lease_ttl", "compact", "revision"] as const;

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class CoordinatorMetrics {
  readonly registry = new Registry();
  private sources?: CoordinatorSources;
  private readonly apiRequests: Counter<"method" | "code">;
  private readonly apiLatency: Histogram<"method">;
  private readonly etcdLatency: Histogram<"op">;
  private readonly etcdErrors: Counter<"op">;
  private readonly schedulingLatency: Histogram;
  private readonly events: Counter<"kind">;

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: "noid_coordinator_" });
    const self = this;
    this.apiRequests = new Counter({ name: "noid_api_requests_total", help: "API calls finished, by RPC method and gRPC status code", labelNames: ["method", "code"], registers });
    this.apiLatency = new Histogram({ name: "noid_api_request_duration_seconds", help: "API call latency, by RPC method", labelNames: ["method"], buckets: LATENCY_BUCKETS, registers });
    this.etcdLatency = new Histogram({ name: "noid_etcd_request_duration_seconds", help: "etcd request latency, by store operation", labelNames: ["op"], buckets: LATENCY_BUCKETS, registers });
    this.etcdErrors = new Counter({ name: "noid_etcd_request_errors_total", help: "etcd requests that failed, by store operation", labelNames: ["op"], registers });
    this.schedulingLatency = new Histogram({ name: "noid_scheduling_latency_seconds", help: "Time from a VM's creation to its placement on a host", buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers });
    // Every operation's error series exists from the start (at 0), so rate() and dashboards see it.
    for (const op of STORE_OPS) this.etcdErrors.inc({ op }, 0);
    this.events = new Counter({ name: "noid_events_recorded_total", help: "Events written to the event log, by kind", labelNames: ["kind"], registers });

    new Counter({
      name: "noid_auth_failures_total",
      help: "Failed authentications (tokens and logins), by reason",
      labelNames: ["reason"],
      registers,
      collect() {
        if (!self.sources) return;
        this.reset();
        for (const [reason, n] of Object.entries(self.sources.authFailures().byReason)) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: "noid_auth_lockouts_total",
      help: "Sources locked out for failing authentication too often",
      registers,
      collect() {
        if (!self.sources) return;
        this.reset();
        this.inc(self.sources.authFailures().lockouts);
      },
    });
    new Gauge({
      name: "noid_host_usage",
      help: "What each host's NAT, firewall and guards carried and stopped, as its agent last sent it to this coordinator: the agent counter (metric: network_traffic_bytes_total, network_traffic_packets_total, guard_drops_total, security_detections_total) with its labels",
      labelNames: ["host", "metric", ...USAGE_LABELS],
      registers,
      collect() {
        this.reset();
        const usage = self.sources?.usage;
        if (!usage) return;
        const names = new Map(self.sources!.cluster.hosts.values().map((e) => [e.value.id, e.value.name]));
        for (const { hostId, sample } of usage.samples()) {
          const labels: Record<string, string> = { host: names.get(hostId) ?? hostId, metric: sample.metric };
          for (const l of USAGE_LABELS) labels[l] = sample.labels[l] ?? "";
          this.set(labels, sample.value);
        }
      },
    });
    new Gauge({
      name: "noid_vms",
      help: "VMs by phase",
      labelNames: ["phase"],
      registers,
      collect() {
        if (!self.sources) return;
        for (const [phase, n] of vmsByPhase(self.sources.cluster.vms.values().map((e) => e.value))) this.set({ phase }, n);
      },
    });
    const usage = () => (self.sources ? networkUsage(self.sources.cluster.networks.values().map((e) => e.value), self.sources.cluster.vms.values().map((e) => e.value)) : []);
    new Gauge({
      name: "noid_network_addresses_used",
      help: "Addresses of a tenant network held by VMs",
      labelNames: ["network", "owner"],
      registers,
      collect() {
        this.reset();
        for (const u of usage()) this.set({ network: u.name, owner: u.owner }, u.used);
      },
    });
    new Gauge({
      name: "noid_network_addresses_total",
      help: "Addresses of a tenant network that VMs can get",
      labelNames: ["network", "owner"],
      registers,
      collect() {
        this.reset();
        for (const u of usage()) this.set({ network: u.name, owner: u.owner }, u.total);
      },
    });
    new Gauge({
      name: "noid_network_nearly_exhausted",
      help: `1 when a tenant network has ${EXHAUSTION_THRESHOLD * 100}% or more of its addresses in use (alert before IPAM runs out)`,
      labelNames: ["network", "owner"],
      registers,
      collect() {
        this.reset();
        for (const u of usage()) this.set({ network: u.name, owner: u.owner }, u.nearlyExhausted ? 1 : 0);
      },
    });
    new Gauge({
      name: "noid_hosts",
      help: "Registered hosts by state",
      labelNames: ["state"],
      registers,
      collect() {
        if (!self.sources) return;
        for (const [state, n] of hostsByState(self.sources.cluster.listHosts()).byState) this.set({ state }, n);
      },
    });
    new Gauge({
      name: "noid_hosts_cordoned",
      help: "Hosts cordoned (no new placements)",
      registers,
      collect() {
        if (self.sources) this.set(hostsByState(self.sources.cluster.listHosts()).cordoned);
      },
    });
    const placementCounter = (name: string, help: string, pick: (s: PlacementStats) => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          if (!self.sources) return;
          this.reset();
          this.inc(pick(self.sources.placement.stats));
        },
      });
    placementCounter("noid_scheduling_attempts_total", "Placement decisions attempted", (s) => s.attempts);
    placementCounter("noid_scheduling_placements_total", "VMs placed on a host", (s) => s.placed);
    new Counter({
      name: "noid_scheduling_failures_total",
      help: "Placement attempts that failed: no host fits (unplaceable) or a concurrent change (conflict)",
      labelNames: ["reason"],
      registers,
      collect() {
        if (!self.sources) return;
        this.reset();
        this.inc({ reason: "unplaceable" }, self.sources.placement.stats.unplaceable);
        this.inc({ reason: "conflict" }, self.sources.placement.stats.conflicts);
      },
    });
    new Gauge({
      name: "noid_coordinator_leader",
      help: "1 while this coordinator is the leader",
      registers,
      collect() {
        if (self.sources) this.set(self.sources.isLeader() ? 1 : 0);
      },
    });
    new Gauge({
      name: "noid_quota_used",
      help: "What each user's VMs hold, by resource (vms, vcpus, memory_mb)",
      labelNames: ["user", "resource"],
      registers,
      collect() {
        if (!self.sources) return;
        this.reset(); // users whose last VM is gone disappear
        for (const [user, q] of quotaUse(self.sources.cluster.vms.values().map((e) => e.value))) {
          this.set({ user, resource: "vms" }, q.vms);
          this.set({ user, resource: "vcpus" }, q.vcpus);
          this.set({ user, resource: "memory_mb" }, q.memoryMb);
        }
      },
    });
    new Gauge({
      name: "noid_quota_limit",
      help: "Per-user limits, by resource",
      labelNames: ["resource"],
      registers,
      collect() {
        if (self.sources) this.set({ resource: "vms" }, self.sources.limits().max_vms_per_user);
      },
    });
  }

  attach(sources: CoordinatorSources): void {
    this.sources = sources;
    // Scheduling latency: from created_at to the change that gave the VM a host.
    sources.cluster.vms.onChange((c) => this.observePlacement(c));
  }

  private observePlacement(c: Change<Vm>): void {
    // Placed by this change: an unplaced VM given a host, or a VM created placed (the leader places in the create).
    if (c.type !== "put" || c.prev?.value.status?.hostId || !c.entry.value.status?.hostId) return;
    const created = c.entry.value.createdAt?.getTime();
    const placed = c.entry.value.status.updatedAt?.getTime() ?? Date.now();
    if (created !== undefined) this.schedulingLatency.observe(Math.max(0, (placed - created) / 1000));
  }

  /** The HandlerDeps.onCall hook: one finished API call. */
  onCall = (method: string, code: number, ms: number): void => {
    this.apiRequests.inc({ method, code: codeName(code) });
    this.apiLatency.observe({ method }, ms / 1000);
  };

  onEvent = (ev: Event): void => {
    this.events.inc({ kind: ev.kind });
  };

  /** Times one store operation. */
  async timeStore<T>(op: string, f: () => Promise<T>): Promise<T> {
    const end = this.etcdLatency.startTimer({ op });
    try {
      return await f();
    } catch (e) {
      this.etcdErrors.inc({ op });
      throw e;
    } finally {
      end();
    }
  }
}

/** The Store port with every request timed (noid_etcd_request_duration_seconds). Watches are not requests and are passed through. */
export class InstrumentedStore implements Store {
  constructor(
    private readonly inner: Store,
    private readonly m: Pick<CoordinatorMetrics, "timeStore">,
  ) {}

  get(key: string) {
    return this.m.timeStore("get", () => this.inner.get(key));
  }
  list(prefix: string, opts?: ListOptions) {
    return this.m.timeStore("list", () => this.inner.list(prefix, opts));
  }
  txn(compares: Compare[], success: Op[], failure?: Op[]) {
    return this.m.timeStore("txn", () => this.inner.txn(compares, success, failure));
  }
  put(key: string, value: Uint8Array, opts?: { lease?: number }) {
    return this.m.timeStore("put", () => this.inner.put(key, value, opts));
  }
  delete(key: string) {
    return this.m.timeStore("delete", () => this.inner.delete(key));
  }
  watch(prefix: string, opts: WatchOptions) {
    return this.m.timeStore("watch", () => this.inner.watch(prefix, opts));
  }
  async grantLease(ttlSeconds: number, opts?: { dedicated?: boolean }): Promise<Lease> {
    const lease = await this.m.timeStore("lease_grant", () => this.inner.grantLease(ttlSeconds, opts));
    // Renewals (every heartbeat) are requests too, though etcd carries them on one shared stream.
    return {
      id: lease.id,
      keepAliveOnce: () => this.m.timeStore("lease_keepalive", () => lease.keepAliveOnce()),
      revoke: () => lease.revoke(),
    };
  }
  leaseTimeToLive(id: number) {
    return this.m.timeStore("lease_ttl", () => this.inner.leaseTimeToLive(id));
  }
  compact(revision: number) {
    return this.m.timeStore("compact", () => this.inner.compact(revision));
  }
  revision() {
    return this.m.timeStore("revision", () => this.inner.revision());
  }
  answeredWithin(ms: number): boolean {
    return this.inner.answeredWithin?.(ms) ?? false;
  }
  close() {
    return this.inner.close();
  }
}
