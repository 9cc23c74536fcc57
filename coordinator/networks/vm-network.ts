// A VM's place on its network: which network, which address, which MAC.
// This returns the compares and ops to add to the VM's own create or remove
// transaction (VmRepo), so the VM record and its address come and go together.
//
// spec.network:
//   ""         -> the owner's "default" network (created on first use)
//   "isolated" -> an address in the owner's default network too, but the VM
//                 gets no peers: the agent sees spec.network == "isolated"
//                 and gives it egress only. One address space per owner keeps
//                 IPAM, guards and NAT the same for both kinds; a separate
//                 isolated pool per owner would buy nothing.
//   "<name>"   -> that network of the owner; unknown -> INVALID_ARGUMENT.
import type { Logger } from "pino";
import { ReleasedAddressRecord, IpamStateRecord } from "../../gen/noid/v1/records.js";
import type { Network } from "../../gen/noid/v1/network.js";
import type { Vm } from "../../gen/noid/v1/vm.js";
import { NoidError, exhausted, invalid } from "../../common/errors.js";
import type { Compare, KeyValue, Op, Store } from "../store/store.js";
import { netKeys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { gatewayOf, intToIp, ipToInt, isIpv4, parseCidr } from "./cidr.js";
import { allocate, expiredReleases, type Usage } from "./ipam.js";
import { macForVm } from "./mac.js";
import type { Actor, Clock, NetworkRepo, StoredNetwork } from "./network-repo.js";
import { DEFAULT_NETWORK, ISOLATED } from "./validate.js";

/** What VmRepo adds to its transactions; implemented by VmNetworks. */
export interface VmNetworkPort {
  /** Throws INVALID_ARGUMENT (unknown network), RESOURCE_EXHAUSTED (no address), CONFLICT (retry). */
  reserve(owner: string, specNetwork: string, vmId: string, actor: Actor): Promise<NetworkReservation>;
  release(vm: Vm): Promise<{ compares: Compare[]; ops: Op[] }>;
}

export interface NetworkReservation {
  compares: Compare[];
  ops: Op[];
  status: { ip: string; mac: string; networkId: string; networkCidr: string; gateway: string };
  usage: Usage;
}

export interface VmNetworksDeps {
  store: Store;
  clock: Clock;
  repo: NetworkRepo;
  graceSeconds: number;
  logger?: Logger;
  /** Address use after a reservation (a gauge; alert at Usage.nearlyFull). */
  onUsage?: (network: Network, usage: Usage) => void;
}

/** Forgetting old release records rides along on allocations, a few at a time. */
const PRUNE_PER_ALLOCATION = 16;

const text = (kv: KeyValue): string => Buffer.from(kv.value).toString("utf8");

function unchanged(key: string, kv: { modRevision: number } | undefined): Compare {
  return { key, target: "mod", op: "==", value: kv?.modRevision ?? 0 };
}

export class VmNetworks implements VmNetworkPort {
  constructor(private readonly d: VmNetworksDeps) {}

  async resolve(owner: string, specNetwork: string, actor: Actor): Promise<StoredNetwork> {
    if (specNetwork === "" || specNetwork === ISOLATED || specNetwork === DEFAULT_NETWORK) return this.d.repo.ensureDefault(owner, actor);
    const n = await this.d.repo.byName(owner, specNetwork);
    if (!n) throw invalid("spec.network", `no network named "${specNetwork}" for user ${owner} (create it with: noidctl network create ${specNetwork} --cidr ...)`);
    return n;
  }

  async reserve(owner: string, specNetwork: string, vmId: string, actor: Actor): Promise<NetworkReservation> {
    const { network } = await this.resolve(owner, specNetwork, actor);
    const p = parseCidr(network.cidr);
    if (!p.ok) throw new NoidError("INTERNAL", `network ${network.id} has a bad CIDR: ${p.why}`);
    // The state record first: any reservation or release after this read
    // changes it and fails our compare, so the lists below cannot be staler
    // than what the transaction will hold against.
    const stateKv = await this.d.store.get(netKeys.ipamState(network.id));
    if (!stateKv) throw new NoidError("CONFLICT", `network "${network.name}" is being deleted`);
    const state = dec(IpamStateRecord, stateKv.value);
    const [held, released] = await Promise.all([
      this.d.store.list(netKeys.ipamPrefix(network.id)),
      this.d.store.list(netKeys.releasedPrefix(network.id)),
    ]);
    const ipOf = (key: string) => key.slice(key.lastIndexOf("/") + 1);
    const used = new Set(held.kvs.map((kv) => ipToInt(ipOf(kv.key))));
    const releasedAt = new Map(released.kvs.map((kv) => [ipToInt(ipOf(kv.key)), dec(ReleasedAddressRecord, kv.value).releasedAt?.getTime() ?? 0]));
    const nowMs = this.d.clock.now().getTime();
    const graceMs = this.d.graceSeconds * 1000;
    const a = allocate({ cidr: p.cidr, used, releasedAt, last: isIpv4(state.last) ? ipToInt(state.last) : undefined }, nowMs, graceMs);
    if (!a.ok) {
      this.d.onUsage?.(network, a.usage);
      throw exhausted(`network "${network.name}" (${network.cidr}) of user ${owner}: ${a.reason}`);
    }
    const ip = intToIp(a.ip);
    const mac = macForVm(vmId);
    const prune = expiredReleases(releasedAt, nowMs, graceMs)
      .filter((x) => x !== a.ip)
      .slice(0, PRUNE_PER_ALLOCATION);
    const ops: Op[] = [
      { type: "put", key: netKeys.ipam(network.id, ip), value: Buffer.from(vmId) },
      { type: "put", key: netKeys.ipamState(network.id), value: enc(IpamStateRecord, { used: used.size + 1, last: ip }) },
      { type: "put", key: netKeys.mac(mac), value: Buffer.from(vmId) },
      ...[a.ip, ...prune].filter((x) => releasedAt.has(x)).map((x): Op => ({ type: "delete", key: netKeys.released(network.id, intToIp(x)) })),
    ];
    this.d.onUsage?.(network, a.usage);
    if (a.usage.nearlyFull) this.d.logger?.warn({ network: network.id, owner, ...a.usage }, "network is nearly out of addresses");
    return {
      compares: [
        unchanged(netKeys.ipamState(network.id), stateKv),
        { key: netKeys.ipam(network.id, ip), target: "create", op: "==", value: 0 },
        // A MAC is a hash of the id: on the rare clash the VM gets a new id (VmRepo retries).
        { key: netKeys.mac(mac), target: "create", op: "==", value: 0 },
      ],
      ops,
      status: { ip, mac, networkId: network.id, networkCidr: network.cidr, gateway: intToIp(gatewayOf(p.cidr)) },
      usage: a.usage,
    };
  }

  /** Gives the VM's address back (remembering when, for the reuse grace) and frees its MAC. */
  async release(vm: Vm): Promise<{ compares: Compare[]; ops: Op[] }> {
    const st = vm.status;
    const compares: Compare[] = [];
    const ops: Op[] = [];
    if (st?.mac) {
      const macKv = await this.d.store.get(netKeys.mac(st.mac));
      if (macKv && text(macKv) === vm.id) {
        compares.push(unchanged(netKeys.mac(st.mac), macKv));
        ops.push({ type: "delete", key: netKeys.mac(st.mac) });
      }
    }
    if (!st?.networkId || !isIpv4(st.ip)) return { compares, ops };
    const stateKv = await this.d.store.get(netKeys.ipamState(st.networkId));
    if (!stateKv) return { compares, ops }; // the network is gone, and its addresses with it
    const ipKey = netKeys.ipam(st.networkId, st.ip);
    const ipKv = await this.d.store.get(ipKey);
    compares.push(unchanged(netKeys.ipamState(st.networkId), stateKv));
    if (!ipKv || text(ipKv) !== vm.id) return { compares, ops }; // not ours (never reserved): nothing to give back
    const state = dec(IpamStateRecord, stateKv.value);
    ops.push(
      { type: "delete", key: ipKey },
      { type: "put", key: netKeys.released(st.networkId, st.ip), value: enc(ReleasedAddressRecord, { releasedAt: this.d.clock.now() }) },
      { type: "put", key: netKeys.ipamState(st.networkId), value: enc(IpamStateRecord, { ...state, used: Math.max(0, state.used - 1) }) },
    );
    return { compares, ops };
  }
}
