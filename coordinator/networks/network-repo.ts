// Tenant network records. Every write is one etcd transaction guarded by
// compares: the name index and the VNI are created only if absent, the
// owner's network list (TenantNetworksRecord) must not have moved since the
// overlap check read it, and a delete holds only while no address is held.
// Nothing is ever half-created.
import { randomBytes, randomInt } from "node:crypto";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { Network } from "../../gen/noid/v1/network.js";
import { IpamStateRecord, TenantNetworksRecord } from "../../gen/noid/v1/records.js";
import { NoidError, alreadyExists, exhausted, invalid, notFound, precondition } from "../../common/errors.js";
import type { Compare, KeyValue, Op, Store } from "../store/store.js";
import { keys, netKeys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { formatCidr, gatewayOf, intToIp, parseCidr, type Cidr } from "./cidr.js";
import { usage } from "./ipam.js";
import { pickVni } from "./vni.js";
import { pickDefaultCidr } from "./default-cidr.js";
import { DEFAULT_NETWORK, checkEgress, findOverlap, type NetworkInput } from "./validate.js";
import type { NetworkSettings } from "./settings.js";

export interface Clock {
  now(): Date;
}

export interface NetworkRepoDeps {
  store: Store;
  clock: Clock;
  settings: NetworkSettings;
  /** Audit events are written in the same transaction as the change they record. */
  auditKey: (at: Date) => string;
  newId?: () => string;
}

export interface StoredNetwork {
  network: Network;
  modRevision: number;
}

export interface Actor {
  user: string;
  peer: string;
}

const MAX_ATTEMPTS = 40;

export function newNetworkId(): string {
  return randomBytes(8).toString("hex");
}

function unchanged(key: string, kv: { modRevision: number } | undefined): Compare {
  return { key, target: "mod", op: "==", value: kv?.modRevision ?? 0 };
}

function absent(key: string): Compare {
  return { key, target: "create", op: "==", value: 0 };
}

async function backoff(attempt: number): Promise<void> {
  await new Promise((r) => setTimeout(r, Math.min(50, 2 ** attempt) * Math.random()));
}

const text = (kv: KeyValue): string => Buffer.from(kv.value).toString("utf8");
const ownerRecord = (kv: KeyValue | undefined): TenantNetworksRecord => (kv ? dec(TenantNetworksRecord, kv.value) : { cidrs: {} });

export class NetworkRepo {
  private readonly newId: () => string;

  constructor(private readonly d: NetworkRepoDeps) {
    this.newId = d.newId ?? newNetworkId;
  }

  private auditOp(event: Omit<AuditEvent, "id" | "time" | "vm" | "host" | "success">): Op {
    const time = this.d.clock.now();
    const key = this.d.auditKey(time);
    return { type: "put", key: keys.audit(key), value: enc(AuditEvent, { ...event, vm: "", host: "", success: true, id: key, time }) };
  }

  async get(id: string): Promise<StoredNetwork | undefined> {
    const kv = await this.d.store.get(netKeys.network(id));
    return kv ? { network: dec(Network, kv.value), modRevision: kv.modRevision } : undefined;
  }

  async byName(owner: string, name: string): Promise<StoredNetwork | undefined> {
    const idKv = await this.d.store.get(netKeys.netName(owner, name));
    return idKv ? this.get(text(idKv)) : undefined;
  }

  /** The network as the API shows it: with its address use. */
  async withUsage(n: Network): Promise<Network> {
    const kv = await this.d.store.get(netKeys.ipamState(n.id));
    const p = parseCidr(n.cidr);
    if (!p.ok) return n;
    const u = usage(p.cidr, kv ? dec(IpamStateRecord, kv.value).used : 0);
    return { ...n, ipsUsed: u.used, ipsTotal: u.total };
  }

  async listOwner(owner: string): Promise<Network[]> {
    const names = await this.d.store.list(netKeys.netNamesPrefix(owner));
    const nets = await Promise.all(names.kvs.map((kv) => this.get(text(kv))));
    return Promise.all(nets.flatMap((n) => (n ? [this.withUsage(n.network)] : [])));
  }

  async listAll(): Promise<Network[]> {
    const all = await this.d.store.list(netKeys.networksPrefix);
    return Promise.all(all.kvs.map((kv) => this.withUsage(dec(Network, kv.value))));
  }

  /**
   * Creates a network: name index, VNI, owner's list, address bookkeeping and
   * audit event in one transaction. The VNI is the lowest free one; losers of
   * a race on it re-read and spread over the next few free ones.
   */
  async create(owner: string, input: NetworkInput, actor: Actor, detail = ""): Promise<Network> {
    const nameKey = netKeys.netName(owner, input.name);
    const ownerKey = netKeys.netOwner(owner);
    const { vni_min: min, vni_max: max } = this.d.settings;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [nameKv, ownerKv, vnis] = await Promise.all([
        this.d.store.get(nameKey),
        this.d.store.get(ownerKey),
        this.d.store.list(netKeys.vniPrefix),
      ]);
      if (nameKv) throw alreadyExists(`network "${input.name}" of user ${owner}`);
      const mine = ownerRecord(ownerKv);
      if (Object.keys(mine.cidrs).length >= this.d.settings.max_networks_per_user) {
        throw exhausted(`user ${owner} already has ${Object.keys(mine.cidrs).length} networks (limit networks.max_networks_per_user)`);
      }
      const clash = findOverlap(input.cidr, mine.cidrs);
      if (clash !== undefined) {
        const other = (await this.get(clash))?.network;
        throw invalid("cidr", `${formatCidr(input.cidr)} overlaps network "${other?.name ?? clash}" (${mine.cidrs[clash]}) of user ${owner}`);
      }
      const taken = new Set(vnis.kvs.map((kv) => Number(kv.key.slice(kv.key.lastIndexOf("/") + 1))));
      const vni = pickVni(taken, { min, max }, attempt === 0 ? 0 : randomInt(0, Math.min(attempt, 8) + 1));
      if (vni === undefined) throw exhausted(`no free VNI left in ${min}..${max} (networks.vni_min/vni_max)`);
      const network: Network = {
        id: this.newId(),
        name: input.name,
        owner,
        cidr: formatCidr(input.cidr),
        vni,
        createdAt: this.d.clock.now(),
        gateway: intToIp(gatewayOf(input.cidr)),
        egress: input.egress,
        mode: input.mode,
        ipsUsed: 0,
        ipsTotal: 0,
      };
      const r = await this.d.store.txn(
        [absent(nameKey), unchanged(ownerKey, ownerKv), absent(netKeys.vni(vni)), absent(netKeys.network(network.id))],
        [
          { type: "put", key: netKeys.network(network.id), value: enc(Network, network) },
          { type: "put", key: nameKey, value: Buffer.from(network.id) },
          { type: "put", key: netKeys.vni(vni), value: Buffer.from(network.id) },
          { type: "put", key: ownerKey, value: enc(TenantNetworksRecord, { cidrs: { ...mine.cidrs, [network.id]: network.cidr } }) },
          { type: "put", key: netKeys.ipamState(network.id), value: enc(IpamStateRecord, { used: 0, last: "" }) },
          this.auditOp({
            event: "network.create",
            user: actor.user,
            detail: `network ${owner}/${network.name} ${network.cidr} vni ${vni} ${network.mode}${detail ? `; ${detail}` : ""}`,
            peer: actor.peer,
          }),
        ],
      );
      if (r.succeeded) return this.withUsage(network);
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `creating network "${input.name}": too much contention, retry`);
  }

  /**
   * The owner's "default" network, created on first use from
   * networks.default_cidr (or the next free block of that size if the owner
   * already has a network there).
   */
  async ensureDefault(owner: string, actor: Actor): Promise<StoredNetwork> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.byName(owner, DEFAULT_NETWORK);
      if (cur) return cur;
      const mine = ownerRecord(await this.d.store.get(netKeys.netOwner(owner)));
      const taken = Object.values(mine.cidrs).flatMap((s) => {
        const p = parseCidr(s);
        return p.ok ? [p.cidr] : [];
      });
      const preferred = parseCidr(this.d.settings.default_cidr);
      const cidr: Cidr | undefined = preferred.ok ? pickDefaultCidr(preferred.cidr, taken) : undefined;
      if (!cidr) throw exhausted(`no room for a default network for user ${owner}: its networks cover the private range of ${this.d.settings.default_cidr}`);
      try {
        await this.create(owner, { name: DEFAULT_NETWORK, cidr, egress: checkEgress("egress", undefined), mode: "wireguard" }, actor, "default network, created on first use");
      } catch (e) {
        // Someone else created it (or another network) meanwhile: read again.
        if (!(e instanceof NoidError && (e.code === "ALREADY_EXISTS" || e.code === "INVALID_ARGUMENT"))) throw e;
        await backoff(attempt);
      }
    }
    throw new NoidError("UNAVAILABLE", `creating the default network of user ${owner}: too much contention, retry`);
  }

  /** Deletes a network no VM holds an address in; everything it owned goes in the same transaction. */
  async delete(owner: string, name: string, actor: Actor): Promise<Network> {
    const nameKey = netKeys.netName(owner, name);
    const ownerKey = netKeys.netOwner(owner);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const nameKv = await this.d.store.get(nameKey);
      if (!nameKv) throw notFound(`network "${name}" of user ${owner}`);
      const id = text(nameKv);
      const [netKv, stateKv, ownerKv] = await Promise.all([
        this.d.store.get(netKeys.network(id)),
        this.d.store.get(netKeys.ipamState(id)),
        this.d.store.get(ownerKey),
      ]);
      if (!netKv) {
        await backoff(attempt);
        continue;
      }
      const network = dec(Network, netKv.value);
      const used = stateKv ? dec(IpamStateRecord, stateKv.value).used : 0;
      if (used > 0) {
        throw precondition(`network "${name}" of user ${owner} is in use by ${used} VM${used === 1 ? "" : "s"}; destroy them first`);
      }
      const mine = ownerRecord(ownerKv);
      const cidrs = { ...mine.cidrs };
      delete cidrs[id];
      const r = await this.d.store.txn(
        [unchanged(nameKey, nameKv), unchanged(netKeys.network(id), netKv), unchanged(netKeys.ipamState(id), stateKv), unchanged(ownerKey, ownerKv)],
        [
          { type: "delete", key: netKeys.network(id) },
          { type: "delete", key: nameKey },
          { type: "delete", key: netKeys.vni(network.vni) },
          { type: "delete", key: netKeys.ipamState(id) },
          { type: "deletePrefix", prefix: netKeys.ipamPrefix(id) },
          { type: "deletePrefix", prefix: netKeys.releasedPrefix(id) },
          { type: "put", key: ownerKey, value: enc(TenantNetworksRecord, { cidrs }) },
          this.auditOp({ event: "network.delete", user: actor.user, detail: `network ${owner}/${name} ${network.cidr} vni ${network.vni}`, peer: actor.peer }),
        ],
      );
      if (r.succeeded) return network;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `deleting network "${name}": too much contention, retry`);
  }
}
