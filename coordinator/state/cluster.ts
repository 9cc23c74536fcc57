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
import type { MeshSnapshot } from "../../gen/noid/v1/agent.js";
import { meshSnapshotFor } from "../mesh/snapshot.js";
import { dec } from "./codec.js";

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

  /** The scheduler's input. */
  hostViews(): HostView[] {
    return this.hosts.values().map(({ value: h }) => {
      const a = this.allocationOf(h.id).record;
      const cap = h.capacity ?? { vcpus: 0, memoryMb: 0, diskGb: 0 };
      const al = a?.allocated ?? { vcpus: 0, memoryMb: 0, diskGb: 0 };
      return {
        id: h.id,
        name: h.name,
        labels: h.labels,
        drivers: h.drivers,
        capacity: { vcpus: cap.vcpus, memoryMb: cap.memoryMb, diskGb: cap.diskGb },
        allocated: { vcpus: al.vcpus, memoryMb: al.memoryMb, diskGb: al.diskGb },
        vmCount: a?.vmCount ?? 0,
        cordoned: h.cordoned,
        postureBlocked: (this.opts.requirePosture ?? false) && !(h.posture?.ok ?? false),
        ready: this.isAlive(h.id),
        groups: { ...(a?.groups ?? {}) },
        networks: { ...(a?.networks ?? {}) },
      };
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
    return meshSnapshotFor(hostId, {
      hosts: this.hosts.values().map((e) => ({ host: e.value, alive: this.isAlive(e.value.id) })),
      vms: this.vms.values().map((e) => e.value),
      networks: this.networks.values().map((e) => e.value),
      meshPrefixLen,
    });
  }

  /** Calls `f` after any change that can alter a host's mesh view. */
  onMeshChange(f: () => void): () => void {
    const offs = [this.hosts.onChange(f), this.alive.onChange(f), this.networks.onChange(f), this.vms.onChange(f)];
    return () => offs.forEach((o) => o());
  }

  vmEntry(id: string) {
    return this.vms.get(keys.vm(id));
  }

  static vmIdOfKey(key: string): string {
    return lastSegment(key);
  }
}
