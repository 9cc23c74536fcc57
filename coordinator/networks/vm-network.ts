// A VM's place on its network: which network, which address, which MAC.
// Creates read a network's address state here (snapshot) and the group
// commit (coordinator/state/create-plan.ts) picks addresses and writes them in
// the VMs' create transaction; release returns the compares and ops for a
// VM's remove transaction. So the VM record and its address come and go together.
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
import { NoidError, invalid } from "../../common/errors.js";
import type { Compare, KeyValue, Op, Store } from "../store/store.js";
import { netKeys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { gatewayOf, intToIp, ipToInt, isIpv4, parseCidr } from "./cidr.js";
import type { Usage } from "./ipam.js";
import type { NetView } from "../state/create-plan.js";
import type { Actor, Clock, NetworkRepo, StoredNetwork } from "./network-repo.js";
import { DEFAULT_NETWORK, ISOLATED } from "./validate.js";

/** What VmRepo adds to its transactions; implemented by VmNetworks. */
export interface VmNetworkPort {
  /** Throws INVALID_ARGUMENT (unknown network), RESOURCE_EXHAUSTED (no default network), CONFLICT (retry). */
  snapshot(owner: string, specNetwork: string, actor: Actor): Promise<NetView>;
  /** Address reuse grace (ms). */
  readonly graceMs: number;
  reportUsage(net: NetView, owner: string, usage: Usage): void;
  release(vm: Vm): Promise<{ compares: Compare[]; ops: Op[] }>;
}

export interface VmNetworksDeps {
  store: Store;
  clock: Clock;
  repo: NetworkRepo;
  graceSeconds: number;
  logger?: Logger;
  /** Address use after a reservation (a gauge; alert at Usage.nearlyFull). */
  onUsage?: (network: Pick<Network, "id" | "name" | "cidr">, usage: Usage) => void;
}

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

  /**
   * What a group of creates needs to give VMs addresses on the owner's network (VmRepo,
   * coordinator/state/create-plan.ts decides). Throws INVALID_ARGUMENT (unknown network),
   * RESOURCE_EXHAUSTED (no room for a default network), CONFLICT (being deleted: retry).
   */
  async snapshot(owner: string, specNetwork: string, actor: Actor): Promise<NetView> {
    const { network } = await this.resolve(owner, specNetwork, actor);
    const p = parseCidr(network.cidr);
    if (!p.ok) throw new NoidError("INTERNAL", `network ${network.id} has a bad CIDR: ${p.why}`);
    for (let attempt = 0; ; attempt++) {
      // The state record and the lists in parallel: every reservation and release changes
      // the state record, and the transaction compares it, so lists read at a revision at
      // or after the state's last change hold everything it counts (a later change fails
      // the compare). Lists older than that are read again.
      const [stateKv, held, released] = await Promise.all([
        this.d.store.get(netKeys.ipamState(network.id)),
        this.d.store.list(netKeys.ipamPrefix(network.id)),
        this.d.store.list(netKeys.releasedPrefix(network.id)),
      ]);
      if (!stateKv) throw new NoidError("CONFLICT", `network "${network.name}" is being deleted`);
      if (Math.min(held.revision, released.revision) < stateKv.modRevision) {
        if (attempt < 5) continue;
        throw new NoidError("CONFLICT", `network "${network.name}": its addresses keep changing while read`);
      }
      const ipOf = (key: string) => key.slice(key.lastIndexOf("/") + 1);
      return {
        id: network.id,
        name: network.name,
        cidrText: network.cidr,
        cidr: p.cidr,
        gateway: intToIp(gatewayOf(p.cidr)),
        state: { record: dec(IpamStateRecord, stateKv.value), modRevision: stateKv.modRevision },
        used: new Set(held.kvs.map((kv) => ipToInt(ipOf(kv.key)))),
        releasedAt: new Map(released.kvs.map((kv) => [ipToInt(ipOf(kv.key)), dec(ReleasedAddressRecord, kv.value).releasedAt?.getTime() ?? 0])),
      };
    }
  }

  get graceMs(): number {
    return this.d.graceSeconds * 1000;
  }

  /** After a committed reservation: the usage gauge, and a warning when nearly full. */
  reportUsage(net: NetView, owner: string, u: Usage): void {
    this.d.onUsage?.({ id: net.id, name: net.name, cidr: net.cidrText }, u);
    if (u.nearlyFull) this.d.logger?.warn({ network: net.id, owner, ...u }, "network is nearly out of addresses");
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
