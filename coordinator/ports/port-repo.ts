// Exposed ports and HTTP routes in etcd. Every change is one transaction that also moves the
// VM's list of what it holds (vmports/<vm>) and the owner's counter (portcount/<user>), with
// mod-revision compares on all of them: two exposes of one host port, or a user racing past
// the limit, cannot both win. A VM's removal releases everything through release(), inside
// the VM's own remove transaction (VmRepo), so ports follow the VM.
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { HttpRoute, PortCountRecord, PortMapping, VmPortsRecord } from "../../gen/noid/v1/port.js";
import { Vm, VmDesiredState } from "../../gen/noid/v1/vm.js";
import { NoidError, alreadyExists, notFound, precondition } from "../../common/errors.js";
import { formatPort, type PortSpec, type Protocol } from "../../common/ports.js";
import type { Compare, KeyValue, Op, Store } from "../store/store.js";
import { keys, portKeys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { checkPortLimit, type Limits } from "../limits.js";
import { unchanged } from "../state/vm-repo.js";

/** Host ports of the WireGuard side handed to HTTP routes (one per route on the VM's host). */
export const MESH_PORT_MIN = 40000;
export const MESH_PORT_MAX = 40999;
const MAX_ATTEMPTS = 20;

export interface PortRepoDeps {
  store: Store;
  clock: { now(): Date };
  auditKey: (at: Date) => string;
}

export interface Actor {
  user: string;
  peer: string;
}

const countOf = (kv: KeyValue | undefined): number => (kv ? dec(PortCountRecord, kv.value).count : 0);
const keysOf = (kv: KeyValue | undefined): string[] => (kv ? dec(VmPortsRecord, kv.value).keys : []);
/** Keys that count against the limit: ports and routes (a route's mesh port is part of it). */
const counted = (k: string): boolean => k.startsWith(portKeys.portsPrefix) || k.startsWith(portKeys.routesPrefix);

async function backoff(attempt: number): Promise<void> {
  await new Promise((r) => setTimeout(r, Math.min(50, 2 ** attempt) * Math.random()));
}

/** Pure: the lowest mesh port not in `taken`. */
export function freeMeshPort(taken: ReadonlySet<number>): number | undefined {
  for (let p = MESH_PORT_MIN; p <= MESH_PORT_MAX; p++) if (!taken.has(p)) return p;
  return undefined;
}

/** The VM's host, for an exposure: it must be placed and not being destroyed. */
export function placedHost(vm: Vm): { hostId: string; hostName: string } {
  const st = vm.status;
  if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) throw precondition(`VM "${vm.name}" is being destroyed`);
  if (!st?.hostId) throw precondition(`VM "${vm.name}" is not placed on a host yet; expose its ports once it is`);
  if (!st.ip) throw precondition(`VM "${vm.name}" has no address yet`);
  return { hostId: st.hostId, hostName: st.hostName };
}

export class PortRepo {
  constructor(private readonly d: PortRepoDeps) {}

  private audit(event: Omit<AuditEvent, "id" | "time" | "seq" | "prevHash" | "hash">): Op {
    const time = this.d.clock.now();
    const id = this.d.auditKey(time);
    return { type: "put", key: keys.audit(id), value: enc(AuditEvent, { ...event, id, time, seq: 0, prevHash: "", hash: "" }) };
  }

  /** Records `spec` for `vm`; ALREADY_EXISTS if the host port is taken, RESOURCE_EXHAUSTED over the limit. */
  async expose(vm: Vm, spec: PortSpec, limits: Limits, actor: Actor, reserved: (hostId: string, s: PortSpec) => string | undefined): Promise<PortMapping> {
    const { hostId, hostName } = placedHost(vm);
    const why = reserved(hostId, spec);
    if (why) throw alreadyExists(`${spec.protocol} port ${spec.hostPort} on host ${hostName} (${why})`);
    const key = portKeys.port(hostId, spec.protocol, spec.hostPort);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [portKv, vmKv, listKv, countKv] = await Promise.all([
        this.d.store.get(key),
        this.d.store.get(keys.vm(vm.id)),
        this.d.store.get(portKeys.vmPorts(vm.id)),
        this.d.store.get(portKeys.count(vm.owner)),
      ]);
      if (portKv) throw alreadyExists(`${spec.protocol} port ${spec.hostPort} on host ${hostName}`);
      if (!vmKv) throw notFound(`VM "${vm.name}"`);
      checkPortLimit(limits, vm.owner, countOf(countKv));
      const rec: PortMapping = {
        vmId: vm.id,
        vmName: vm.name,
        owner: vm.owner,
        hostId,
        hostName,
        protocol: spec.protocol,
        hostPort: spec.hostPort,
        vmPort: spec.vmPort,
        createdAt: this.d.clock.now(),
        state: "",
        address: "",
      };
      const r = await this.d.store.txn(
        [{ key, target: "create", op: "==", value: 0 }, ...this.vmAt(vm, vmKv), unchanged(portKeys.vmPorts(vm.id), listKv), unchanged(portKeys.count(vm.owner), countKv)],
        [
          { type: "put", key, value: enc(PortMapping, rec) },
          { type: "put", key: portKeys.vmPorts(vm.id), value: enc(VmPortsRecord, { keys: [...keysOf(listKv), key] }) },
          { type: "put", key: portKeys.count(vm.owner), value: enc(PortCountRecord, { count: countOf(countKv) + 1 }) },
          this.audit({ event: "vm.expose", user: actor.user, vm: vm.name, host: hostName, success: true, detail: formatPort(spec), peer: actor.peer }),
        ],
      );
      if (r.succeeded) return rec;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `exposing a port of VM "${vm.name}": too much contention, retry`);
  }

  /** The VM must be the one we read, still on the host we read (a move or destroy in between loses). */
  private vmAt(vm: Vm, vmKv: KeyValue): Compare[] {
    const now = dec(Vm, vmKv.value);
    if (now.status?.hostId !== vm.status?.hostId || now.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) {
      throw precondition(`VM "${vm.name}" moved or is being destroyed; try again`);
    }
    return [unchanged(keys.vm(vm.id), vmKv)];
  }

  async unexpose(vm: Vm, hostPort: number, protocol: Protocol, actor: Actor): Promise<void> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const listKv = await this.d.store.get(portKeys.vmPorts(vm.id));
      const key = keysOf(listKv).find((k) => k.startsWith(portKeys.portsPrefix) && k.endsWith(`/${protocol}/${hostPort}`));
      const portKv = key ? await this.d.store.get(key) : undefined;
      if (!key || !portKv) throw notFound(`${protocol} port ${hostPort} of VM "${vm.name}"`);
      const rec = dec(PortMapping, portKv.value);
      const r = await this.remove(vm, listKv, [key], [unchanged(key, portKv)], () =>
        this.audit({ event: "vm.unexpose", user: actor.user, vm: vm.name, host: rec.hostName, success: true, detail: formatPort(rec), peer: actor.peer }),
      );
      if (r) return;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `unexposing a port of VM "${vm.name}": too much contention, retry`);
  }

  /** Deletes `gone` keys of the VM with its list and counter in one transaction. */
  private async remove(vm: Vm, listKv: KeyValue | undefined, gone: string[], compares: Compare[], audit: () => Op): Promise<boolean> {
    const countKv = await this.d.store.get(portKeys.count(vm.owner));
    const left = keysOf(listKv).filter((k) => !gone.includes(k));
    const n = gone.filter(counted).length;
    const r = await this.d.store.txn(
      [...compares, unchanged(portKeys.vmPorts(vm.id), listKv), unchanged(portKeys.count(vm.owner), countKv)],
      [
        ...gone.map((k): Op => ({ type: "delete", key: k })),
        left.length > 0 ? { type: "put", key: portKeys.vmPorts(vm.id), value: enc(VmPortsRecord, { keys: left }) } : { type: "delete", key: portKeys.vmPorts(vm.id) },
        { type: "put", key: portKeys.count(vm.owner), value: enc(PortCountRecord, { count: Math.max(0, countOf(countKv) - n) }) },
        audit(),
      ],
    );
    return r.succeeded;
  }

  /** Routes `hostname` to the VM's `vmPort` through the ingress; ALREADY_EXISTS if the name is taken. */
  async exposeHttp(vm: Vm, hostname: string, vmPort: number, limits: Limits, actor: Actor): Promise<HttpRoute> {
    const { hostId, hostName } = placedHost(vm);
    const routeKey = portKeys.route(hostname);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [routeKv, vmKv, listKv, countKv, meshKvs] = await Promise.all([
        this.d.store.get(routeKey),
        this.d.store.get(keys.vm(vm.id)),
        this.d.store.get(portKeys.vmPorts(vm.id)),
        this.d.store.get(portKeys.count(vm.owner)),
        this.d.store.list(portKeys.meshPortsOfHost(hostId)),
      ]);
      if (routeKv) throw alreadyExists(`HTTP route for ${hostname}`);
      if (!vmKv) throw notFound(`VM "${vm.name}"`);
      checkPortLimit(limits, vm.owner, countOf(countKv));
      const meshPort = freeMeshPort(new Set(meshKvs.kvs.map((kv) => Number(kv.key.slice(kv.key.lastIndexOf("/") + 1)))));
      if (meshPort === undefined) throw new NoidError("RESOURCE_EXHAUSTED", `host ${hostName} has no free mesh port for another HTTP route`);
      const meshKey = portKeys.meshPort(hostId, meshPort);
      const rec: HttpRoute = {
        hostname,
        vmId: vm.id,
        vmName: vm.name,
        owner: vm.owner,
        vmPort,
        hostId,
        hostName,
        meshPort,
        createdAt: this.d.clock.now(),
        state: "",
        ingress: [],
      };
      const r = await this.d.store.txn(
        [
          { key: routeKey, target: "create", op: "==", value: 0 },
          { key: meshKey, target: "create", op: "==", value: 0 },
          ...this.vmAt(vm, vmKv),
          unchanged(portKeys.vmPorts(vm.id), listKv),
          unchanged(portKeys.count(vm.owner), countKv),
        ],
        [
          { type: "put", key: routeKey, value: enc(HttpRoute, rec) },
          { type: "put", key: meshKey, value: Buffer.from(hostname) },
          { type: "put", key: portKeys.vmPorts(vm.id), value: enc(VmPortsRecord, { keys: [...keysOf(listKv), routeKey, meshKey] }) },
          { type: "put", key: portKeys.count(vm.owner), value: enc(PortCountRecord, { count: countOf(countKv) + 1 }) },
          this.audit({ event: "vm.expose", user: actor.user, vm: vm.name, host: hostName, success: true, detail: `http ${hostname} -> port ${vmPort}`, peer: actor.peer }),
        ],
      );
      if (r.succeeded) return rec;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `routing ${hostname} to VM "${vm.name}": too much contention, retry`);
  }

  async unexposeHttp(vm: Vm, hostname: string, actor: Actor): Promise<void> {
    const routeKey = portKeys.route(hostname);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [listKv, routeKv] = await Promise.all([this.d.store.get(portKeys.vmPorts(vm.id)), this.d.store.get(routeKey)]);
      if (!routeKv || !keysOf(listKv).includes(routeKey)) throw notFound(`HTTP route ${hostname} of VM "${vm.name}"`);
      const rec = dec(HttpRoute, routeKv.value);
      const meshKey = portKeys.meshPort(rec.hostId, rec.meshPort);
      const r = await this.remove(vm, listKv, [routeKey, meshKey], [unchanged(routeKey, routeKv)], () =>
        this.audit({ event: "vm.unexpose", user: actor.user, vm: vm.name, host: rec.hostName, success: true, detail: `http ${hostname}`, peer: actor.peer }),
      );
      if (r) return;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `removing route ${hostname}: too much contention, retry`);
  }

  /** For VmRepo's remove transaction: everything the VM holds goes, and the owner's count drops. */
  /** The port and route keys a VM holds (empty: it exposes nothing). */
  async heldBy(vmId: string): Promise<string[]> {
    return keysOf(await this.d.store.get(portKeys.vmPorts(vmId))).filter(counted);
  }

  async release(vm: Vm): Promise<{ compares: Compare[]; ops: Op[] }> {
    const [listKv, countKv] = await Promise.all([this.d.store.get(portKeys.vmPorts(vm.id)), this.d.store.get(portKeys.count(vm.owner))]);
    if (!listKv) return { compares: [unchanged(portKeys.vmPorts(vm.id), undefined)], ops: [] };
    const held = keysOf(listKv);
    return {
      compares: [unchanged(portKeys.vmPorts(vm.id), listKv), unchanged(portKeys.count(vm.owner), countKv)],
      ops: [
        ...held.map((k): Op => ({ type: "delete", key: k })),
        { type: "delete", key: portKeys.vmPorts(vm.id) },
        { type: "put", key: portKeys.count(vm.owner), value: enc(PortCountRecord, { count: Math.max(0, countOf(countKv) - held.filter(counted).length) }) },
      ],
    };
  }

  async listPorts(): Promise<PortMapping[]> {
    return (await this.d.store.list(portKeys.portsPrefix)).kvs.map((kv) => dec(PortMapping, kv.value));
  }

  async listRoutes(): Promise<HttpRoute[]> {
    return (await this.d.store.list(portKeys.routesPrefix)).kvs.map((kv) => dec(HttpRoute, kv.value));
  }
}
