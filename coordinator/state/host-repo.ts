// Host records: hosts/<id> (what the agent registered and operator flags),
// hostnames/<name> -> id, alive/<id> bound to the agent's lease.
import { randomBytes } from "node:crypto";
import type { RegisterHostRequest } from "../../gen/noid/v1/agent.js";
import { type DriverCapabilities, Host, type HostPosture, HostState } from "../../gen/noid/v1/host.js";
import { NoidError, notFound } from "../../common/errors.js";
import type { Compare, Lease, Store } from "../store/store.js";
import { keys, lastSegment } from "./keys.js";
import { formatCidr, intToIp, parseCidr, type Cidr } from "../networks/cidr.js";

export function parseMeshCidr(s: string): Cidr {
  const p = parseCidr(s);
  if (!p.ok) throw new NoidError("INVALID_ARGUMENT", `mesh.cidr: ${p.why}`);
  if (p.cidr.prefix > 28) throw new NoidError("INVALID_ARGUMENT", `mesh.cidr: ${s} is too small for a mesh`);
  return p.cidr;
}
import { dec, enc } from "./codec.js";
import { unchanged, type Clock } from "./vm-repo.js";

export class HostRepo {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    /** The mesh's address range; each host gets one address in it for life. */
    private readonly meshCidr: Cidr = parseMeshCidr("100.64.0.0/16"),
  ) {}

  /** Mesh addresses picked by registrations of this process that have not committed yet. */
  private readonly reserved = new Set<string>();

  /**
   * The lowest mesh address no host holds and no registration in flight here
   * has picked (the first usable one is .1), reserved until `release`. So
   * concurrent registrations through one coordinator never pick the same
   * address; after a lost race (another coordinator took it), `skip` more
   * free addresses are passed over at random, so two racers part ways.
   */
  private async freeMeshIp(skip: number): Promise<string> {
    const used = new Set((await this.store.list(keys.meshIpsPrefix)).kvs.map((kv) => lastSegment(kv.key)));
    const size = 2 ** (32 - this.meshCidr.prefix);
    let pass = skip > 0 ? Math.floor(Math.random() * (skip + 1)) : 0;
    let fallback: string | undefined;
    for (let i = 1; i < size - 1; i++) {
      const ip = intToIp(this.meshCidr.base + i);
      if (used.has(ip) || this.reserved.has(ip)) continue;
      fallback ??= ip;
      if (pass-- > 0) continue;
      this.reserved.add(ip);
      return ip;
    }
    if (fallback) {
      this.reserved.add(fallback);
      return fallback;
    }
    throw new NoidError("RESOURCE_EXHAUSTED", `the mesh range ${formatCidr(this.meshCidr)} has no free address for another host`);
  }

  async idByName(name: string): Promise<string | undefined> {
    const kv = await this.store.get(keys.hostName(name));
    return kv ? Buffer.from(kv.value).toString("utf8") : undefined;
  }

  async get(id: string): Promise<{ host: Host; modRevision: number } | undefined> {
    const kv = await this.store.get(keys.host(id));
    return kv ? { host: dec(Host, kv.value), modRevision: kv.modRevision } : undefined;
  }

  async getByName(name: string): Promise<{ host: Host; modRevision: number }> {
    const id = await this.idByName(name);
    const h = id ? await this.get(id) : undefined;
    if (!h) throw notFound(`host "${name}"`);
    return h;
  }

  /** Registers a host, or refreshes the record of a host that registered before under the same name. */
  async register(req: RegisterHostRequest, also: Compare[] = []): Promise<Host> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const nameKv = await this.store.get(keys.hostName(req.name));
      const id = nameKv ? Buffer.from(nameKv.value).toString("utf8") : randomBytes(8).toString("hex");
      const prev = nameKv ? await this.get(id) : undefined;
      const kept = prev?.host.meshIp ?? "";
      const meshIp = kept || (await this.freeMeshIp(attempt));
      const now = this.clock.now();
      const host: Host = {
        id,
        name: req.name,
        address: req.address,
        labels: req.labels,
        drivers: req.drivers,
        capacity: req.capacity ?? { vcpus: 0, memoryMb: 0, diskGb: 0 },
        allocated: undefined,
        vmCount: 0,
        cordoned: prev?.host.cordoned ?? false,
        state: HostState.HOST_STATE_UNSPECIFIED,
        wireguardPublicKey: req.wireguardPublicKey,
        wireguardPort: req.wireguardPort,
        agentVersion: req.agentVersion,
        registeredAt: prev?.host.registeredAt ?? now,
        lastSeenAt: now,
        meshIp,
        posture: req.posture ? { ...req.posture, checkedAt: now } : undefined,
        degradedReason: prev?.host.degradedReason ?? "",
        ingress: prev?.host.ingress ?? false,
        driverCapabilities: prev?.host.driverCapabilities ?? [],
        // Kept: the leader's host-loss controller clears it once the host holds a lease again.
        unreachableSince: prev?.host.unreachableSince,
      };
      const r = await this.store
        .txn(
          [
            ...also,
            unchanged(keys.hostName(req.name), nameKv),
            unchanged(keys.host(id), prev),
            // A new mesh address must still be free; a kept one is ours already.
            ...(kept ? [] : [{ key: keys.meshIp(meshIp), target: "create" as const, op: "==" as const, value: 0 }]),
          ],
          [
            { type: "put", key: keys.host(id), value: enc(Host, host) },
            { type: "put", key: keys.hostName(req.name), value: Buffer.from(id) },
            { type: "put", key: keys.meshIp(meshIp), value: Buffer.from(id) },
          ],
        )
        .finally(() => {
          if (!kept) this.reserved.delete(meshIp);
        });
      if (r.succeeded) return host;
    }
    throw new NoidError("UNAVAILABLE", `registering host "${req.name}": too much contention, retry`);
  }

  /** Records the posture the host's agent reported (its own host only: the session says which). */
  async setPosture(id: string, posture: HostPosture): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`host ${id}`);
      const next: Host = { ...cur.host, posture: { ...posture, checkedAt: this.clock.now() } };
      const r = await this.store.txn([unchanged(keys.host(id), cur)], [{ type: "put", key: keys.host(id), value: enc(Host, next) }]);
      if (r.succeeded) return;
    }
    throw new NoidError("UNAVAILABLE", `updating host ${id}: too much contention, retry`);
  }

  /** Records whether the host runs an HTTP ingress (its agent's port report says so). */
  async setIngress(id: string, ingress: boolean): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`host ${id}`);
      if (cur.host.ingress === ingress) return;
      const next: Host = { ...cur.host, ingress };
      const r = await this.store.txn([unchanged(keys.host(id), cur)], [{ type: "put", key: keys.host(id), value: enc(Host, next) }]);
      if (r.succeeded) return;
    }
    throw new NoidError("UNAVAILABLE", `updating host ${id}: too much contention, retry`);
  }

  /** What each driver of the host can do, as its agent reported it after hello. */
  async setCapabilities(id: string, caps: DriverCapabilities[]): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`host ${id}`);
      if (JSON.stringify(cur.host.driverCapabilities) === JSON.stringify(caps)) return;
      const next: Host = { ...cur.host, driverCapabilities: caps };
      const r = await this.store.txn([unchanged(keys.host(id), cur)], [{ type: "put", key: keys.host(id), value: enc(Host, next) }]);
      if (r.succeeded) return;
    }
    throw new NoidError("UNAVAILABLE", `updating host ${id}: too much contention, retry`);
  }

  async setCordoned(name: string, cordoned: boolean): Promise<Host> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await this.getByName(name);
      if (cur.host.cordoned === cordoned) return cur.host;
      const next = { ...cur.host, cordoned };
      const r = await this.store.txn([unchanged(keys.host(next.id), cur)], [{ type: "put", key: keys.host(next.id), value: enc(Host, next) }]);
      if (r.succeeded) return next;
    }
    throw new NoidError("UNAVAILABLE", `updating host "${name}": too much contention, retry`);
  }

  /**
   * Forgets a host: its record, name, mesh address, liveness and allocation,
   * in one transaction that fails if the record changed meanwhile.
   */
  async remove(name: string): Promise<Host> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await this.getByName(name);
      const h = cur.host;
      const r = await this.store.txn(
        [unchanged(keys.host(h.id), cur)],
        [
          { type: "delete", key: keys.host(h.id) },
          { type: "delete", key: keys.hostName(name) },
          ...(h.meshIp ? [{ type: "delete" as const, key: keys.meshIp(h.meshIp) }] : []),
          { type: "delete", key: keys.alive(h.id) },
          { type: "delete", key: keys.alloc(h.id) },
        ],
      );
      if (r.succeeded) return h;
    }
    throw new NoidError("UNAVAILABLE", `removing host "${name}": too much contention, retry`);
  }

  /** Sets why the host's mesh is degraded ("" = it is not); a no-op when unchanged or the host is gone. */
  async setDegraded(id: string, reason: string): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await this.get(id);
      if (!cur || cur.host.degradedReason === reason) return;
      const next = { ...cur.host, degradedReason: reason };
      const r = await this.store.txn([unchanged(keys.host(id), cur)], [{ type: "put", key: keys.host(id), value: enc(Host, next) }]);
      if (r.succeeded) return;
    }
    throw new NoidError("UNAVAILABLE", `updating host ${id}: too much contention, retry`);
  }

  /** Marks the host alive for as long as `lease` lives. */
  async markAlive(id: string, lease: Lease): Promise<number> {
    return this.store.put(keys.alive(id), Buffer.from(String(this.clock.now().getTime())), { lease: lease.id });
  }

  /**
   * Marks the host alive only if no liveness key exists (a session whose lease
   * expired takes a new one this way: if the key exists, a newer session wrote
   * it). Returns the revision written, undefined if the key existed.
   */
  async markAliveIfAbsent(id: string, lease: Lease): Promise<number | undefined> {
    const r = await this.store.txn(
      [{ key: keys.alive(id), target: "create", op: "==", value: 0 }],
      [{ type: "put", key: keys.alive(id), value: Buffer.from(String(this.clock.now().getTime())), lease: lease.id }],
    );
    return r.succeeded ? r.revision : undefined;
  }
}
