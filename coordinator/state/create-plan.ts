// Group commit for CreateVm, the pure part (VmRepo does the reading and the
// writing). The creates waiting in the coordinator's queue are decided
// together against one view of the shared state (the cluster's and each
// owner's counters, each network's addresses) and written in one transaction:
// each VM's own keys (record, name, address, MAC, audit event), created only
// if absent, plus every shared key once, compared against the revision the
// view was read at. So the group commits whole or not at all, and a lost race
// (another coordinator replica, a destroy) is decided again from fresh reads.
//
// A request that is bad on its own (name taken, its owner's or the cluster's
// limit reached, no address left, unknown network) is rejected alone and
// takes nothing from the others; what does not fit in one transaction
// (etcd's operation limit) is deferred, in order, to the next one.
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { IpamStateRecord, QuotaRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmDesiredState, VmPhase, type VmSpec } from "../../gen/noid/v1/vm.js";
import { NoidError, alreadyExists, exhausted } from "../../common/errors.js";
import { ETCD_MAX_TXN_OPS, type Compare, type Op } from "../store/store.js";
import { keys, netKeys } from "./keys.js";
import { enc } from "./codec.js";
import { addToQuota, checkCountLimits, type Limits } from "../limits.js";
import { intToIp, ipToInt, isIpv4, type Cidr } from "../networks/cidr.js";
import { allocate, expiredReleases, type Usage } from "../networks/ipam.js";
import { macForVm } from "../networks/mac.js";

/**
 * Operations (and, separately, compares) a create transaction may hold. etcd
 * refuses more than 128 in either list (--max-txn-ops); the audit chain adds
 * one compare and one put (AuditChainStore), the HA fence one compare.
 */
export const MAX_CREATE_TXN_OPS = 100;
/**
 * The room a create transaction leaves for placing its VMs too (the leader
 * does, PlacementController.placeAtCreate): etcd's limit of 128 compares and
 * 128 operations, less the plan's own and the audit chain's one of each, and
 * one spare.
 */
export function placementRoom(plan: { compares: readonly unknown[]; ops: readonly unknown[] }): { ops: number; compares: number } {
  const left = ETCD_MAX_TXN_OPS - 1 - 1;
  return { ops: left - plan.ops.length, compares: left - plan.compares.length };
}

/**
 * A create transaction with its placement (placeAtCreate) in it: the placed
 * VMs' records written instead of the unplaced ones the plan made, the
 * placement's compares and operations added. Pure.
 */
export function withPlacement(
  plan: { compares: Compare[]; ops: Op[] },
  placing: { compares: Compare[]; ops: Op[]; placed: ReadonlyMap<string, Vm> } | undefined,
): [Compare[], Op[]] {
  if (!placing || placing.placed.size === 0) return [plan.compares, plan.ops];
  const byKey = new Map([...placing.placed.values()].map((vm) => [keys.vm(vm.id), vm]));
  const ops = plan.ops.map((op): Op => {
    if (op.type !== "put") return op;
    const vm = byKey.get(op.key);
    return vm ? { type: "put", key: op.key, value: enc(Vm, vm) } : op;
  });
  return [[...plan.compares, ...placing.compares], [...ops, ...placing.ops]];
}

/** Expired release records forgotten per network and transaction (they ride along). */
export const PRUNE_PER_TXN = 16;

export interface Counter {
  record: QuotaRecord;
  /** 0: the key does not exist. */
  modRevision: number;
}

/** One network's address state, as read (or as the last committed transaction left it). */
export interface NetView {
  id: string;
  name: string;
  cidrText: string;
  cidr: Cidr;
  gateway: string;
  state: { record: IpamStateRecord; modRevision: number };
  used: ReadonlySet<number>;
  /** Address -> when it was released (ms since epoch). */
  releasedAt: ReadonlyMap<number, number>;
}

export interface CreateView {
  total: Counter;
  /** Every owner of the group. */
  quotas: ReadonlyMap<string, Counter>;
  /** By netSel (owner and network as asked): the network, or why a VM cannot get one there. */
  nets: ReadonlyMap<string, NetView | NoidError>;
  /** Name keys known to exist. */
  takenNames: ReadonlySet<string>;
  nowMs: number;
  graceMs: number;
}

export interface CreateAsk {
  /** The caller's handle for this request. */
  key: number;
  owner: string;
  name: string;
  spec: VmSpec;
  limits: Limits;
  peer: string;
  desired: VmDesiredState;
  detail: string;
  /** Fresh for every attempt. */
  id: string;
  auditId: string;
  now: Date;
  /** netSel of its network; undefined: the coordinator manages no networks. */
  net: string | undefined;
}

export interface CreatePlan {
  compares: Compare[];
  ops: Op[];
  created: { key: number; vm: Vm; net?: { network: NetView; usage: Usage } }[];
  rejected: { key: number; error: NoidError }[];
  /** Did not fit in this transaction; in the order given. */
  deferred: number[];
  /** The shared state as it is once the transaction commits (revisions: the caller sets them). */
  after: { total: QuotaRecord; quotas: Map<string, QuotaRecord>; nets: Map<string, NetView> };
}

/** The owner's network as a request names it: "", "default" and "isolated" are the default network. */
export function netSel(owner: string, specNetwork: string): string {
  const n = specNetwork === "" || specNetwork === "isolated" ? "default" : specNetwork;
  return `${owner}/${n}`;
}

/** A network's addresses as the group has taken them so far. */
interface NetState {
  view: NetView;
  used: Set<number>;
  releasedAt: Map<number, number>;
  last: number | undefined;
}

function unchanged(key: string, modRevision: number): Compare {
  return { key, target: "mod", op: "==", value: modRevision };
}

function absent(key: string): Compare {
  return { key, target: "create", op: "==", value: 0 };
}

function pendingVm(a: CreateAsk, net: NetView | undefined, ip: string, mac: string): Vm {
  return {
    id: a.id,
    name: a.name,
    owner: a.owner,
    spec: a.spec,
    desiredState: a.desired,
    createdAt: a.now,
    status: {
      phase: VmPhase.VM_PHASE_PENDING,
      hostId: "",
      hostName: "",
      reason: "",
      ip: net ? ip : "",
      mac: net ? mac : "",
      updatedAt: a.now,
      networkId: net?.id ?? "",
      networkCidr: net?.cidrText ?? "",
      gateway: net?.gateway ?? "",
      restartPending: false,
      migrationId: "",
      migrationSha256: "",
    },
  };
}

/**
 * Decides the group (in order: earlier requests get their name, quota and
 * address first) and builds its one transaction. Pure.
 */
export function planCreateTxn(asks: readonly CreateAsk[], view: CreateView, maxOps = MAX_CREATE_TXN_OPS): CreatePlan {
  let total = view.total.record;
  const quotas = new Map<string, QuotaRecord>();
  const nets = new Map<string, NetState>();
  const names = new Set<string>();
  const macs = new Set<string>();
  const created: CreatePlan["created"] = [];
  const rejected: CreatePlan["rejected"] = [];
  const deferred: number[] = [];
  const perVm: { compares: Compare[]; ops: Op[] }[] = [];
  // Shared keys: one compare and one put each (quota per owner, the total, the IPAM state per network).
  let nOps = 1;
  let nCompares = 1;

  for (let i = 0; i < asks.length; i++) {
    const a = asks[i]!;
    if (deferred.length > 0) {
      deferred.push(a.key);
      continue;
    }
    const nameKey = keys.vmName(a.owner, a.name);
    if (view.takenNames.has(nameKey) || names.has(nameKey)) {
      rejected.push({ key: a.key, error: alreadyExists(`VM "${a.name}" of user ${a.owner}`) });
      continue;
    }
    const userRead = view.quotas.get(a.owner);
    if (!userRead) throw new NoidError("INTERNAL", `create plan: no quota read for user ${a.owner}`);
    const userQ = quotas.get(a.owner) ?? userRead.record;
    try {
      checkCountLimits(a.limits, a.owner, userQ, total);
    } catch (e) {
      rejected.push({ key: a.key, error: e as NoidError });
      continue;
    }
    let net: NetState | undefined;
    if (a.net !== undefined) {
      const read = view.nets.get(a.net);
      if (!read) throw new NoidError("INTERNAL", `create plan: no network read for ${a.net}`);
      if (read instanceof NoidError) {
        rejected.push({ key: a.key, error: read });
        continue;
      }
      net = nets.get(a.net) ?? {
        view: read,
        used: new Set(read.used),
        releasedAt: new Map(read.releasedAt),
        last: isIpv4(read.state.record.last) ? ipToInt(read.state.record.last) : undefined,
      };
    }
    const mac = macForVm(a.id);
    if (net && macs.has(mac)) {
      // Two ids of this group hash to one MAC: the later one waits for a new id.
      deferred.push(a.key);
      continue;
    }
    let ipNum: number | undefined;
    let usage: Usage | undefined;
    if (net) {
      const got = allocate({ cidr: net.view.cidr, used: net.used, releasedAt: net.releasedAt, last: net.last }, view.nowMs, view.graceMs);
      if (!got.ok) {
        rejected.push({ key: a.key, error: exhausted(`network "${net.view.name}" (${net.view.cidrText}) of user ${a.owner}: ${got.reason}`) });
        continue;
      }
      ipNum = got.ip;
      usage = got.usage;
    }
    // What this VM adds to the transaction.
    const newOwner = !quotas.has(a.owner);
    const newNet = net !== undefined && !nets.has(a.net!);
    const ip = ipNum !== undefined ? intToIp(ipNum) : "";
    const vm = pendingVm(a, net?.view, ip, mac);
    const compares: Compare[] = [absent(nameKey), absent(keys.vm(a.id))];
    const ops: Op[] = [
      { type: "put", key: keys.vm(a.id), value: enc(Vm, vm) },
      { type: "put", key: nameKey, value: Buffer.from(a.id) },
    ];
    if (net && ipNum !== undefined) {
      compares.push(absent(netKeys.ipam(net.view.id, ip)), absent(netKeys.mac(mac)));
      ops.push({ type: "put", key: netKeys.ipam(net.view.id, ip), value: Buffer.from(a.id) }, { type: "put", key: netKeys.mac(mac), value: Buffer.from(a.id) });
      if (net.releasedAt.has(ipNum)) ops.push({ type: "delete", key: netKeys.released(net.view.id, ip) });
    }
    const detail = `${a.spec.vcpus} vCPU, ${a.spec.memoryMb} MB${net ? `, ${ip} on network ${net.view.id}` : ""}${a.detail ? `, ${a.detail}` : ""}`;
    ops.push({
      type: "put",
      key: keys.audit(a.auditId),
      value: enc(AuditEvent, { event: "vm.create", user: a.owner, vm: a.name, host: "", success: true, detail, peer: a.peer, id: a.auditId, time: a.now, seq: 0, prevHash: "", hash: "" }),
    });
    const addOps = ops.length + (newOwner ? 1 : 0) + (newNet ? 1 : 0);
    const addCompares = compares.length + (newOwner ? 1 : 0) + (newNet ? 1 : 0);
    if (nOps + addOps > maxOps || nCompares + addCompares > maxOps) {
      deferred.push(a.key);
      continue;
    }
    // Taken: commit this request's effects to the group's running state.
    nOps += addOps;
    nCompares += addCompares;
    names.add(nameKey);
    const ask = { vcpus: a.spec.vcpus, memoryMb: a.spec.memoryMb, diskGb: a.spec.diskGb };
    quotas.set(a.owner, addToQuota(userQ, ask, 1));
    total = addToQuota(total, ask, 1);
    if (net && ipNum !== undefined) {
      nets.set(a.net!, net);
      macs.add(mac);
      net.used.add(ipNum);
      net.releasedAt.delete(ipNum);
      net.last = ipNum;
    }
    perVm.push({ compares, ops });
    created.push({ key: a.key, vm, ...(net && usage ? { net: { network: net.view, usage } } : {}) });
  }

  const after: CreatePlan["after"] = { total, quotas, nets: new Map() };
  if (created.length === 0) return { compares: [], ops: [], created, rejected, deferred, after };

  const compares: Compare[] = [unchanged(keys.total, view.total.modRevision)];
  const ops: Op[] = [{ type: "put", key: keys.total, value: enc(QuotaRecord, total) }];
  for (const [owner, q] of quotas) {
    compares.push(unchanged(keys.quota(owner), view.quotas.get(owner)!.modRevision));
    ops.push({ type: "put", key: keys.quota(owner), value: enc(QuotaRecord, q) });
  }
  for (const [sel, n] of nets) {
    const stateKey = netKeys.ipamState(n.view.id);
    compares.push(unchanged(stateKey, n.view.state.modRevision));
    const record: IpamStateRecord = { ...n.view.state.record, used: n.used.size, last: n.last !== undefined ? intToIp(n.last) : "" };
    ops.push({ type: "put", key: stateKey, value: enc(IpamStateRecord, record) });
    // Old release records are forgotten a few at a time, in the room left.
    const room = Math.min(PRUNE_PER_TXN, maxOps - nOps);
    const prune = room > 0 ? expiredReleases(n.releasedAt, view.nowMs, view.graceMs).slice(0, room) : [];
    for (const x of prune) {
      ops.push({ type: "delete", key: netKeys.released(n.view.id, intToIp(x)) });
      n.releasedAt.delete(x);
    }
    nOps += prune.length;
    after.nets.set(sel, { ...n.view, state: { record, modRevision: n.view.state.modRevision }, used: n.used, releasedAt: n.releasedAt });
  }
  for (const v of perVm) {
    compares.push(...v.compares);
    ops.push(...v.ops);
  }
  return { compares, ops, created, rejected, deferred, after };
}

