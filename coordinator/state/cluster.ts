// The coordinator's current view of the cluster, kept by informers over
// vms/, hosts/, alive/ and alloc/. Readers derive what they need from it
// (host state, allocation, which VMs a host runs) instead of storing it twice.
import type { Logger } from "pino";
import { Host, HostState } from "../../gen/noid/v1/host.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm } from "../../gen/noid/v1/vm.js";
import type { Store } from "../store/store.js";
import type { HostView } from "../scheduler/types.js";
import { Informer } from "./informer.js";
import { keys, lastSegment, netKeys } from "./keys.js";
import { Network } from "../../gen/noid/v1/network.js";
import type { MeshDelta, MeshSnapshot } from "../../gen/noid/v1/agent.js";
import { hostMeshKey, meshHosts, meshSnapshotFromView, MeshDiffMemo, MeshVmIndex, vmMeshKey, type MeshHosts, type MeshView } from "../mesh/snapshot.js";
import { dec } from "./codec.js";

/** The least delay between a mesh-relevant change and the hosts' snapshots being recomputed. */
const MESH_COALESCE_MS = 20;
/** Sessions handed their new snapshot between two yields to the event loop. */
const MESH_SLICE = 50;

/** What a mesh round covers: every host's view, or those of the hosts carrying one of `networks`. */
export interface MeshChange {
  all: boolean;
  networks: ReadonlySet<string>;
}

/** The parts of a host's scheduler view that its allocation record gives. */
function allocationFields(a: AllocationRecord | undefined): Pick<HostView, "allocated" | "vmCount" | "groups" | "networks"> {
  const al = a?.allocated ?? { vcpus: 0, memoryMb: 0, diskGb: 0 };
  return {
    allocated: { vcpus: al.vcpus, memoryMb: al.memoryMb, diskGb: al.diskGb },
    vmCount: a?.vmCount ?? 0,
    groups: { ...(a?.groups ?? {}) },
    networks: { ...(a?.networks ?? {}) },
  };
}

/** `v` with the allocation `a` (as written, ahead of the informer). */
export function viewWithAllocation(v: HostView, a: AllocationRecord): HostView {
  return { ...v, ...allocationFields(a) };
}

/** A point in the history of ClusterState.hostViews' list (see hostViewsSince). */
export interface ViewMark {
  readonly epoch: number;
  readonly seq: number;
}

/** Copies of the host view list whose changed places are remembered (hostViewsSince). */
const VIEW_LOG_MAX = 64;

export class ClusterState {
  readonly vms: Informer<Vm>;
  readonly hosts: Informer<Host>;
  readonly alive: Informer<Uint8Array>;
  readonly alloc: Informer<AllocationRecord>;
  readonly networks: Informer<Network>;

  constructor(
    store: Store,
    logger: Logger,
    private readonly opts: { requirePosture?: boolean } = {},
  ) {
    this.vms = new Informer(store, keys.vmsPrefix, (b) => dec(Vm, b), logger);
    this.hosts = new Informer(store, keys.hostsPrefix, (b) => dec(Host, b), logger);
    this.alive = new Informer(store, keys.alivePrefix, (b) => b, logger);
    this.alloc = new Informer(store, keys.allocPrefix, (b) => dec(AllocationRecord, b), logger);
    this.networks = new Informer(store, netKeys.networksPrefix, (b) => dec(Network, b), logger);
    // A host's scheduler view changes only with its record, its allocation or its liveness.
    const stale = (key: string) => {
      const id = lastSegment(key);
      this.viewOf.delete(id);
      if (this.viewList && this.viewIndex.has(id)) this.viewStale.add(id);
    };
    const all = () => {
      this.viewOf.clear();
      this.viewList = undefined;
    };
    for (const inf of [this.alloc, this.alive] as Informer<unknown>[]) {
      inf.onChange((ch) => stale(ch.type === "put" ? ch.entry.key : ch.key));
      inf.onResync(all);
    }
    // A host added or removed changes the list itself; a host's record changed, only its view.
    this.hosts.onChange((ch) => {
      if (ch.type === "put" && ch.prev) stale(ch.entry.key);
      else all();
    });
    this.hosts.onResync(all);
  }

  /** Each host's scheduler view, built once per change of its record, allocation or liveness. */
  private readonly viewOf = new Map<string, HostView>();
  /**
   * The list hostViews returned last, each host's place in it, and the hosts
   * whose view changed since. With placements landing every few milliseconds,
   * rebuilding the list of a thousand hosts for each change was a visible
   * part of every create and placement pass (BENCHMARKS.md, finding 14): the
   * list is copied and only the changed hosts' views are built again.
   */
  private viewList: readonly HostView[] | undefined;
  private readonly viewIndex = new Map<string, number>();
  private readonly viewStale = new Set<string>();
  /**
   * Which places of the list each copy replaced, for hostViewsSince: a new
   * list (hosts added or removed, a resync) starts a new epoch; each copy
   * after it is one more seq. Only the last VIEW_LOG_MAX copies are kept.
   */
  private viewMark: ViewMark = { epoch: 0, seq: 0 };
  private viewLog: { seq: number; idx: number[] }[] = [];

  /**
   * After a transaction lost a race: waits (bounded) until the informers show
   * each key it compared as etcd holds it now (present at its revision, or
   * gone). Waiting for etcd's latest revision instead never ended early when
   * that write was outside every informer's prefix (an event, an audit
   * record): a controller on a quiet cluster sat out the full timeout.
   * Returns how many keys were not caught up in time.
   */
  async catchUp(store: Store, raced: readonly string[], timeoutMs = 5000): Promise<number> {
    const informers = [this.vms, this.hosts, this.alive, this.alloc, this.networks] as Informer<unknown>[];
    let late = 0;
    await Promise.all(
      [...new Set(raced)].map(async (key) => {
        const inf = informers.find((i) => key.startsWith(i.prefix));
        if (!inf) return;
        const kv = await store.get(key);
        await inf.waitForKey(key, kv?.modRevision, timeoutMs).catch(() => void late++);
      }),
    );
    return late;
  }

  async start(): Promise<void> {
    await Promise.all([this.vms.start(), this.hosts.start(), this.alive.start(), this.alloc.start(), this.networks.start()]);
  }

  async stop(): Promise<void> {
    await Promise.all([this.vms.stop(), this.hosts.stop(), this.alive.stop(), this.alloc.stop(), this.networks.stop()]);
  }

  isAlive(hostId: string): boolean {
    return this.alive.get(keys.alive(hostId)) !== undefined;
  }

  allocationOf(hostId: string): { record: AllocationRecord | undefined; modRevision: number } {
    const e = this.alloc.get(keys.alloc(hostId));
    return { record: e?.value, modRevision: e?.modRevision ?? 0 };
  }

  /** A host as the API shows it: registered record + liveness + allocation. */
  hostForApi(h: Host): Host {
    const a = this.allocationOf(h.id).record;
    return {
      ...h,
      state: this.isAlive(h.id) ? HostState.HOST_STATE_READY : HostState.HOST_STATE_UNREACHABLE,
      allocated: a?.allocated ?? { vcpus: 0, memoryMb: 0, diskGb: 0 },
      vmCount: a?.vmCount ?? 0,
    };
  }

  listHosts(): Host[] {
    return this.hosts
      .values()
      .map((e) => this.hostForApi(e.value))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  hostByName(name: string): Host | undefined {
    const e = this.hosts.values().find((x) => x.value.name === name);
    return e ? this.hostForApi(e.value) : undefined;
  }

  hostById(id: string): Host | undefined {
    const e = this.hosts.get(keys.host(id));
    return e ? this.hostForApi(e.value) : undefined;
  }

  /**
   * The scheduler's input: one view per registered host. Kept between calls
   * (a host's view is rebuilt only when its record, allocation or liveness
   * changed), so the views are frozen: callers derive new ones
   * (applyPlacement) instead of changing them.
   */
  hostViews(): readonly HostView[] {
    if (this.viewList && this.viewStale.size === 0) return this.viewList;
    if (this.viewList) {
      const list = this.viewList.slice();
      const idx: number[] = [];
      for (const id of this.viewStale) {
        const i = this.viewIndex.get(id)!;
        list[i] = this.viewFor(this.hosts.get(keys.host(id))!.value);
        idx.push(i);
      }
      this.viewStale.clear();
      // Not frozen: Object.freeze of a 1,000-host list took 45 µs per copy, twenty times the
      // copy itself (the views in it are frozen; the list is readonly to every caller).
      this.viewList = list;
      this.viewMark = { epoch: this.viewMark.epoch, seq: this.viewMark.seq + 1 };
      this.viewLog.push({ seq: this.viewMark.seq, idx });
      if (this.viewLog.length > VIEW_LOG_MAX) this.viewLog.shift();
      return this.viewList;
    }
    const list: HostView[] = [];
    this.viewIndex.clear();
    this.viewStale.clear();
    for (const { value: h } of this.hosts.values()) {
      this.viewIndex.set(h.id, list.length);
      list.push(this.viewFor(h));
    }
    this.viewList = list;
    this.viewMark = { epoch: this.viewMark.epoch + 1, seq: 0 };
    this.viewLog = [];
    return this.viewList;
  }

  /**
   * hostViews, and which places of the list hold another view than they did
   * at `mark` (a mark this returned before): undefined when that is not
   * known (no mark, another list since, or more copies than are kept), and
   * then any of them may differ. Every other place holds the same object.
   */
  hostViewsSince(mark: ViewMark | undefined): { list: readonly HostView[]; mark: ViewMark; changed: ReadonlySet<number> | undefined } {
    const list = this.hostViews();
    const now = this.viewMark;
    if (mark === undefined || mark.epoch !== now.epoch) return { list, mark: now, changed: undefined };
    if (mark.seq < now.seq && (this.viewLog.length === 0 || this.viewLog[0]!.seq > mark.seq + 1)) return { list, mark: now, changed: undefined };
    const changed = new Set<number>();
    for (const e of this.viewLog) if (e.seq > mark.seq) for (const i of e.idx) changed.add(i);
    return { list, mark: now, changed };
  }

  /** Host `id`'s place in the list hostViews last returned. */
  hostViewIndex(id: string): number | undefined {
    return this.viewList ? this.viewIndex.get(id) : undefined;
  }

  private viewFor(h: Host): HostView {
    let v = this.viewOf.get(h.id);
    if (!v) {
      v = this.buildView(h);
      this.viewOf.set(h.id, v);
    }
    return v;
  }

  private buildView(h: Host): HostView {
    const cap = h.capacity ?? { vcpus: 0, memoryMb: 0, diskGb: 0 };
    const a = allocationFields(this.allocationOf(h.id).record);
    return Object.freeze({
      id: h.id,
      name: h.name,
      labels: Object.freeze({ ...h.labels }),
      drivers: Object.freeze([...h.drivers]) as string[],
      capacity: Object.freeze({ vcpus: cap.vcpus, memoryMb: cap.memoryMb, diskGb: cap.diskGb }),
      allocated: Object.freeze(a.allocated),
      vmCount: a.vmCount,
      cordoned: h.cordoned,
      postureBlocked: (this.opts.requirePosture ?? false) && !(h.posture?.ok ?? false),
      ready: this.isAlive(h.id),
      groups: Object.freeze(a.groups),
      networks: Object.freeze(a.networks),
    });
  }


  vmsOnHost(hostId: string): Vm[] {
    return this.vms
      .values()
      .map((e) => e.value)
      .filter((v) => v.status?.hostId === hostId);
  }

  /** What host `hostId` must know of the mesh now. */
  meshFor(hostId: string, meshPrefixLen: number): MeshSnapshot {
    return this.meshWithKey(hostId, meshPrefixLen).snapshot;
  }

  /**
   * The mesh view of `hostId` and a short key that is equal exactly when the
   * view is (for "send only when different"). The parts every host shares
   * (members, the VMs of each host by network) are computed once per state
   * of the informers, not once per host: a burst of changes costs one pass
   * over the cluster plus, per host, only the networks it carries.
   */
  meshWithKey(hostId: string, meshPrefixLen: number): { snapshot: MeshSnapshot; key: string; networks: ReadonlySet<string> } {
    const view = this.meshView();
    return meshSnapshotFromView(hostId, view, meshPrefixLen);
  }

  /** The tenant networks host `hostId` carries now (those it has VMs in). */
  meshNetworksOf(hostId: string): Iterable<string> {
    return this.meshView().byHost.get(hostId)?.keys() ?? [];
  }

  private meshCache?: { version: string; view: MeshView };
  private roundView?: MeshView;
  private readonly meshDiffs = new MeshDiffMemo();

  /** diffMesh(a, b), once for all sessions sent the same lists (MeshDiffMemo). */
  meshDiff(a: MeshSnapshot, b: MeshSnapshot): MeshDelta {
    return this.meshDiffs.diff(a, b);
  }

  private meshView(): MeshView {
    // During a round every session is given the view the round began with
    // (changes meanwhile run another round, which covers them).
    if (this.roundView) return this.roundView;
    const version = `${this.hosts.revision}/${this.alive.revision}/${this.networks.revision}/${this.vms.revision}/${this.resyncs}`;
    if (this.meshCache?.version === version) return this.meshCache.view;
    // Each part rebuilt only when its own informers moved; the VMs never regrouped (MeshVmIndex).
    const hostsVersion = `${this.hosts.revision}/${this.alive.revision}/${this.resyncs}`;
    if (this.meshHostsCache?.version !== hostsVersion) {
      this.meshHostsCache = { version: hostsVersion, part: meshHosts(this.hosts.values().map((e) => ({ host: e.value, alive: this.isAlive(e.value.id) }))) };
    }
    const netsVersion = `${this.networks.revision}/${this.resyncs}`;
    if (this.meshNetsCache?.version !== netsVersion) {
      this.meshNetsCache = { version: netsVersion, part: new Map(this.networks.values().map((e) => [e.value.id, e.value])) };
    }
    const view: MeshView = { ...this.meshHostsCache.part, networks: this.meshNetsCache.part, byHost: this.meshVms().snapshot() };
    this.meshCache = { version, view };
    return view;
  }

  private meshHostsCache?: { version: string; part: MeshHosts };
  private meshNetsCache?: { version: string; part: Map<string, Network> };
  private meshIndex?: MeshVmIndex;

  /** The VMs by host and network, built on first use and then kept up to date change by change. */
  private meshVms(): MeshVmIndex {
    if (!this.meshIndex) {
      const build = () => new MeshVmIndex(this.vms.values().map((e) => e.value));
      this.meshIndex = build();
      this.vms.onChange((c) => this.meshIndex!.change(c.prev?.value, c.type === "put" ? c.entry.value : undefined));
      this.vms.onResync(() => {
        this.meshIndex = build();
      });
    }
    return this.meshIndex;
  }

  private resyncs = 0;
  private readonly meshSubs = new Set<(c: MeshChange) => void>();
  /** What changed since the last round began. */
  private meshPending: { all: boolean; networks: Set<string> } = { all: false, networks: new Set() };
  private meshTimer?: NodeJS.Timeout;
  private meshNextAt = 0;
  /** A change arrived while a round was running. */
  private meshDirty = false;
  private meshRunning = false;
  private meshUnwatch?: () => void;

  /**
   * Calls `f` after changes that can alter a host's mesh view: host and
   * network records, liveness, and the VM fields a snapshot shows (host,
   * network, address; not phase or timestamps). Coalesced for all
   * subscribers together: one call each per burst, at least MESH_COALESCE_MS
   * after the first change and never sooner than the time the last
   * round's calls ran (their CPU time, not the wall time between their
   * slices), so a large mesh cannot keep the process more than half busy.
   * `f` is told what the round covers: every host (members, liveness,
   * resyncs) or only the hosts that carry one of the networks named (a VM
   * placed, moved or removed, a network record), so the sessions of hosts
   * that carry none of them need not compute their view at all.
   */
  onMeshChange(f: (c: MeshChange) => void): () => void {
    this.meshSubs.add(f);
    if (!this.meshUnwatch) {
      const all = () => {
        this.meshPending.all = true;
        this.meshChanged();
      };
      const nets = (...ids: string[]) => {
        for (const id of ids) if (id !== "") this.meshPending.networks.add(id);
        this.meshChanged();
      };
      const offs = [
        this.hosts.onChange((c) => {
          if (c.type === "delete" || !c.prev || hostMeshKey(c.prev.value) !== hostMeshKey(c.entry.value)) all();
        }),
        this.alive.onChange((c) => {
          if (c.type === "delete" || !c.prev) all();
        }),
        this.networks.onChange((c) => nets(lastSegment(c.type === "put" ? c.entry.key : c.key))),
        this.vms.onChange((c) => {
          const before = c.prev ? vmMeshKey(c.prev.value) : "";
          const now = c.type === "put" ? vmMeshKey(c.entry.value) : "";
          if (before === now) return;
          nets(before === "" ? "" : (c.prev!.value.status?.networkId ?? ""), now === "" || c.type !== "put" ? "" : (c.entry.value.status?.networkId ?? ""));
        }),
        ...[this.hosts, this.alive, this.networks, this.vms].map((i) =>
          i.onResync(() => {
            this.resyncs++;
            all();
          }),
        ),
      ];
      this.meshUnwatch = () => offs.forEach((o) => o());
    }
    return () => {
      this.meshSubs.delete(f);
      if (this.meshSubs.size === 0) {
        this.meshUnwatch?.();
        this.meshUnwatch = undefined;
        if (this.meshTimer) clearTimeout(this.meshTimer);
        this.meshTimer = undefined;
      }
    };
  }

  private meshChanged(): void {
    if (this.meshTimer) {
      // Already scheduled: that round sees this change, unless it is running now.
      if (this.meshRunning) this.meshDirty = true;
      return;
    }
    const delay = Math.max(MESH_COALESCE_MS, this.meshNextAt - Date.now());
    this.meshTimer = setTimeout(() => {
      void (async () => {
        this.meshRunning = true;
        // In slices, yielding between them: with a thousand sessions one
        // round takes long, and etcd answers and heartbeats must get through.
        // The next round waits as long as this one's slices ran (the time
        // spent in them, not the time others ran between them: counting that
        // made a loaded coordinator's rounds seconds apart).
        let busy = 0;
        const subs = [...this.meshSubs];
        const change = this.meshPending;
        this.meshPending = { all: false, networks: new Set() };
        const t0 = performance.now();
        this.roundView = undefined;
        this.roundView = this.meshView();
        busy += performance.now() - t0;
        for (let i = 0; i < subs.length; i += MESH_SLICE) {
          if (i > 0) await new Promise((r) => setImmediate(r));
          const t = performance.now();
          for (const f of subs.slice(i, i + MESH_SLICE)) if (this.meshSubs.has(f)) f(change);
          busy += performance.now() - t;
        }
        this.roundView = undefined;
        this.meshNextAt = Date.now() + busy;
        // Changes during the round scheduled nothing (the timer was still set): run one more.
        this.meshRunning = false;
        this.meshTimer = undefined;
        if (this.meshDirty) {
          this.meshDirty = false;
          this.meshChanged();
        }
      })();
    }, delay);
  }

  vmEntry(id: string) {
    return this.vms.get(keys.vm(id));
  }

  static vmIdOfKey(key: string): string {
    return lastSegment(key);
  }
}
