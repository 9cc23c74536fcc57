// What each agent session sends about ports: the host's PortSnapshot (its DNATs: exposed ports
// of its VMs and the mesh side of HTTP routes to them; plus every HTTP route, which only
// ingress hosts use), rebuilt from informers whenever ports, routes or hosts change. And the
// other way: an agent's PortReport lands in portstatus/<host> and the host's `ingress` flag.
import type { Logger } from "pino";
import { HttpRoute, PortMapping, PortSnapshot, PortStatusRecord, type PortReport } from "../../gen/noid/v1/port.js";
import type { Store } from "../store/store.js";
import type { ClusterState } from "../state/cluster.js";
import type { HostRepo } from "../state/host-repo.js";
import { Informer, type Change } from "../state/informer.js";
import type { Host } from "../../gen/noid/v1/host.js";
import { portKeys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { unchanged } from "../state/vm-repo.js";

/** Pure: host `hostId`'s snapshot from all ports and routes and the hosts' mesh addresses. */
export function portSnapshotFor(hostId: string, ports: readonly PortMapping[], routes: readonly HttpRoute[], meshIpOf: (hostId: string) => string | undefined): PortSnapshot {
  const byKey = <T>(list: T[], key: (x: T) => string): T[] => list.sort((a, b) => key(a).localeCompare(key(b)));
  const own = ports
    .filter((p) => p.hostId === hostId)
    .map((p) => ({ vmId: p.vmId, protocol: p.protocol, hostPort: p.hostPort, vmPort: p.vmPort, mesh: false }));
  const mesh = routes.filter((r) => r.hostId === hostId).map((r) => ({ vmId: r.vmId, protocol: "tcp", hostPort: r.meshPort, vmPort: r.vmPort, mesh: true }));
  const all = routes.flatMap((r) => {
    const ip = meshIpOf(r.hostId);
    return ip ? [{ hostname: r.hostname, upstream: `${ip}:${r.meshPort}`, vmId: r.vmId }] : [];
  });
  return {
    ports: byKey([...own, ...mesh], (p) => `${p.mesh ? "mesh" : p.protocol}/${String(p.hostPort).padStart(5, "0")}`),
    routes: byKey(all, (r) => r.hostname),
  };
}

export class PortFeed {
  readonly ports: Informer<PortMapping>;
  readonly routes: Informer<HttpRoute>;

  constructor(
    private readonly d: { store: Store; cluster: ClusterState; hosts: HostRepo; logger: Logger; clock: { now(): Date } },
  ) {
    this.ports = new Informer(d.store, portKeys.portsPrefix, (b) => dec(PortMapping, b), d.logger);
    this.routes = new Informer(d.store, portKeys.routesPrefix, (b) => dec(HttpRoute, b), d.logger);
  }

  async start(): Promise<void> {
    await this.ports.start();
    await this.routes.start();
  }

  async stop(): Promise<void> {
    await this.ports.stop();
    await this.routes.stop();
  }

  snapshotFor(hostId: string): PortSnapshot {
    return portSnapshotFor(
      hostId,
      this.ports.values().map((e) => e.value),
      this.routes.values().map((e) => e.value),
      (id) => this.d.cluster.hostById(id)?.meshIp || undefined,
    );
  }

  /** Calls `f` after anything a snapshot is made of may have changed. */
  onChange(f: () => void): () => void {
    // Of a host record, a snapshot uses only the mesh address (routes' upstreams): a cordon,
    // label or capacity change is no reason for every session to rebuild its snapshot.
    const meshIpChanged = (c: Change<Host>) => {
      const before = c.prev?.value.meshIp;
      const after = c.type === "put" ? c.entry.value.meshIp : undefined;
      if (before !== after) f();
    };
    const offs = [this.ports.onChange(f), this.routes.onChange(f), this.ports.onResync(f), this.routes.onResync(f), this.d.cluster.hosts.onChange(meshIpChanged), this.d.cluster.hosts.onResync(f)];
    return () => offs.forEach((o) => o());
  }

  /** Records what host `hostId` applied (only when it differs from what is recorded). */
  async report(hostId: string, r: PortReport): Promise<void> {
    const clip = (xs: string[]) => xs.slice(0, 5000).map((x) => x.slice(0, 300));
    const next: PortStatusRecord = {
      applied: clip(r.applied),
      error: r.error.slice(0, 1000),
      ingress: r.ingress,
      routes: clip(r.routes),
      ingressError: r.ingressError.slice(0, 1000),
      updatedAt: this.d.clock.now(),
    };
    const key = portKeys.status(hostId);
    const kv = await this.d.store.get(key);
    const same = (a: PortStatusRecord, b: PortStatusRecord) =>
      JSON.stringify({ ...a, updatedAt: undefined }) === JSON.stringify({ ...b, updatedAt: undefined });
    if (!kv || !same(dec(PortStatusRecord, kv.value), next)) {
      await this.d.store.txn([unchanged(key, kv)], [{ type: "put", key, value: enc(PortStatusRecord, next) }]);
    }
    await this.d.hosts.setIngress(hostId, r.ingress);
  }
}
