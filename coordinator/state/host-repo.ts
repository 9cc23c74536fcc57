// Host records: hosts/<id> (what the agent registered and operator flags),
// hostnames/<name> -> id, alive/<id> bound to the agent's lease.
import { randomBytes } from "node:crypto";
import type { RegisterHostRequest } from "../../gen/noid/v1/agent.js";
import { Host, HostState } from "../../gen/noid/v1/host.js";
import { NoidError, notFound } from "../../common/errors.js";
import type { Lease, Store } from "../store/store.js";
import { keys } from "./keys.js";
import { dec, enc } from "./codec.js";
import { unchanged, type Clock } from "./vm-repo.js";

export class HostRepo {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

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
  async register(req: RegisterHostRequest): Promise<Host> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const nameKv = await this.store.get(keys.hostName(req.name));
      const id = nameKv ? Buffer.from(nameKv.value).toString("utf8") : randomBytes(8).toString("hex");
      const prev = nameKv ? await this.get(id) : undefined;
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
      };
      const r = await this.store.txn(
        [unchanged(keys.hostName(req.name), nameKv), unchanged(keys.host(id), prev)],
        [
          { type: "put", key: keys.host(id), value: enc(Host, host) },
          { type: "put", key: keys.hostName(req.name), value: Buffer.from(id) },
        ],
      );
      if (r.succeeded) return host;
    }
    throw new NoidError("UNAVAILABLE", `registering host "${req.name}": too much contention, retry`);
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

  /** Marks the host alive for as long as `lease` lives. */
  async markAlive(id: string, lease: Lease): Promise<void> {
    await this.store.put(keys.alive(id), Buffer.from(String(this.clock.now().getTime())), { lease: lease.id });
  }
}
