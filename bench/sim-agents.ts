// Bench-grade simulated agents: many hosts per process, sharing a few gRPC
// connections, speaking the real AgentService protocol (register, one session
// each, heartbeats at the interval the coordinator asks for, VM status
// reports). Hosts say they take mesh deltas (as the real agent does) and apply
// them to their last view with the agent's code (common/mesh-delta.ts); with
// `meshDeltas: false` they take full snapshots, which are not decoded: a
// predicate looks at their bytes, so thousands of hosts cost the bench
// process little.
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { AgentServiceService, SessionResponse, type MeshSnapshot, type MeshUpdate, type SessionRequest } from "../gen/noid/v1/agent.js";
import { MeshViewTracker } from "../common/mesh-delta.js";
import { VmDesiredState, VmPhase, type Vm } from "../gen/noid/v1/vm.js";

/** First byte of a SessionResponse whose oneof is `mesh` (field 7, length-delimited). */
const MESH_TAG = (7 << 3) | 2;

type Incoming = { mesh: Buffer } | { msg: SessionResponse };

const definition = {
  ...AgentServiceService,
  session: {
    ...AgentServiceService.session,
    responseDeserialize: (b: Buffer): Incoming => (b[0] === MESH_TAG ? { mesh: b } : { msg: SessionResponse.decode(b) }),
  },
} as unknown as grpc.ServiceDefinition;
const Client = grpc.makeGenericClientConstructor(definition, "AgentService") as unknown as new (
  address: string,
  creds: grpc.ChannelCredentials,
  options: grpc.ClientOptions,
) => grpc.Client & {
  registerHost(req: unknown, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r?: { hostId: string; heartbeatIntervalMs: number }) => void): void;
  session(md: grpc.Metadata): grpc.ClientDuplexStream<SessionRequest, Incoming>;
};

export function wgKey(): string {
  return randomBytes(32).toString("base64");
}

export interface VmTimes {
  /** First time a host saw the VM assigned to it (ms, performance clock). */
  assigned: Map<string, number>;
  /** First time the host saw its VM stored as RUNNING. */
  running: Map<string, number>;
}

export class SimHost {
  hostId = "";
  key = wgKey();
  /** Mesh updates received (full snapshots and deltas). */
  meshSnapshots = 0;
  /** With deltas: members in the host's current view (-1 before the first). */
  meshMembers = -1;
  /**
   * Convergence probes: called after each mesh update with a test "does the
   * view show this WireGuard key"; a probe that returns true is removed.
   */
  readonly meshProbes = new Set<(hasKey: (key: string) => boolean, at: number) => boolean>();
  /** With deltas: the view so far (the agent's tracker). */
  private readonly meshView = new MeshViewTracker();
  /** close() was called: no reopening. */
  private ended = false;
  /** Why the session broke (the bench does not reopen an established one). */
  sessionError?: string;
  private stream?: grpc.ClientDuplexStream<SessionRequest, Incoming>;
  private beat?: NodeJS.Timeout;
  private seq = 0;
  private closed = false;
  private readonly reported = new Set<string>();

  constructor(
    readonly name: string,
    private readonly fleet: SimFleet,
    private readonly client: InstanceType<typeof Client>,
  ) {}

  /** Registers; like an agent, retries what the coordinator says to retry (UNAVAILABLE). */
  async register(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.registerOnce();
      } catch (e) {
        if ((e as grpc.ServiceError).code !== grpc.status.UNAVAILABLE || attempt >= 30) throw e;
        this.fleet.registerRetries++;
        await new Promise((r) => setTimeout(r, 10 + Math.random() * 50 * Math.min(attempt + 1, 10)));
      }
    }
  }

  private registerOnce(): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.registerHost(
        {
          name: this.name,
          address: "10.77.0.1",
          labels: {},
          drivers: ["sandbox"],
          capacity: { vcpus: 512, memoryMb: 1 << 20, diskGb: 10_000 },
          wireguardPublicKey: this.key,
          wireguardPort: 51820,
          agentVersion: "bench",
        },
        this.fleet.md,
        (err, r) => {
          if (err) return reject(err);
          this.hostId = r!.hostId;
          this.fleet.heartbeatMs = r!.heartbeatIntervalMs || 2000;
          resolve();
        },
      ),
    );
  }

  /** Registers again with a new WireGuard key (what an agent does on key rotation). */
  async rotateKey(): Promise<string> {
    this.key = wgKey();
    await this.register();
    return this.key;
  }

  /**
   * Opens the session; resolves on the first desired-state snapshot. Like an
   * agent, opens it again when the coordinator says UNAVAILABLE (on this
   * loaded machine its etcd calls in hello can time out).
   */
  async connect(): Promise<void> {
    this.ended = false;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.connectOnce();
      } catch (e) {
        if ((e as grpc.ServiceError).code !== grpc.status.UNAVAILABLE || attempt >= 10) throw e;
        this.teardown();
        if (this.ended) throw e;
        this.fleet.connectRetries++;
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 200 * Math.min(attempt + 1, 10)));
      }
    }
  }

  private connectOnce(): Promise<void> {
    this.closed = false;
    this.sessionError = undefined;
    const stream = this.client.session(this.fleet.md);
    this.stream = stream;
    let established = false;
    const first = new Promise<void>((resolve, reject) => {
      stream.on("data", (m: Incoming) => {
        if ("mesh" in m) {
          this.meshSnapshots++;
          const at = performance.now();
          const raw = m.mesh;
          this.probe((key) => raw.includes(Buffer.from(key)), at);
          return;
        }
        const handle = (msg: SessionResponse): void => {
          const k = msg.kind;
          if (k?.$case === "batch") for (const item of k.value.items) handle(item);
          else if (k?.$case === "meshUpdate") this.onMeshUpdate(k.value);
          else if (k?.$case === "snapshot") {
            for (const vm of k.value.vms) this.onVm(vm);
            established = true;
            resolve();
          } else if (k?.$case === "vm") this.onVm(k.value);
          else if (k?.$case === "heartbeatAck") this.fleet.heartbeatAcks++;
        };
        handle(m.msg);
      });
      stream.on("error", (e: grpc.ServiceError) => {
        if (this.closed || this.stream !== stream) return;
        if (established) this.fleet.sessionsBroken++;
        this.sessionError = `${e.code}: ${e.details}`;
        reject(e);
        // Established and broken (e.g. the coordinator's etcd calls timed out): like an
        // agent, open it again; the new session starts with a full mesh snapshot.
        if (established) {
          this.fleet.sessionsReopened++;
          this.teardown();
          setTimeout(() => {
            if (!this.ended) void this.connect().catch(() => undefined);
          }, 200 + Math.random() * 300).unref();
        }
      });
    });
    this.meshView.reset();
    stream.write({ kind: { $case: "hello", value: { hostId: this.hostId, meshDeltas: this.fleet.meshDeltas, batches: this.fleet.batches } } });
    // Spread heartbeats over the interval so they do not arrive in bursts.
    const every = this.fleet.heartbeatMs;
    setTimeout(() => {
      if (this.closed || this.stream !== stream) return;
      this.beat = setInterval(() => {
        this.fleet.heartbeatsSent++;
        this.send({ kind: { $case: "heartbeat", value: { sequence: ++this.seq } } });
      }, every);
    }, Math.random() * every).unref();
    return first;
  }

  private probe(hasKey: (key: string) => boolean, at: number): void {
    for (const p of this.meshProbes) if (p(hasKey, at)) this.meshProbes.delete(p);
  }

  /** With the agent's own tracker: apply a delta to the last view, or ask for a full one when it does not fit. */
  private onMeshUpdate(u: MeshUpdate): void {
    this.meshSnapshots++;
    const at = performance.now();
    const r = this.meshView.take(u);
    if (r.kind === "resync") {
      this.fleet.meshResyncs++;
      this.send({ kind: { $case: "meshResync", value: { haveVersion: r.haveVersion, reason: r.reason } } });
      return;
    }
    if (r.kind !== "snapshot") return;
    const members = r.snapshot.members;
    this.meshMembers = members.length;
    this.probe((key) => members.some((m) => m.wireguardPublicKey === key), at);
  }

  send(m: SessionRequest): void {
    this.stream?.write(m);
  }

  private onVm(vm: Vm): void {
    if (vm.status?.hostId !== this.hostId) return;
    const now = performance.now();
    const t = this.fleet.times;
    if (!t.assigned.has(vm.name)) t.assigned.set(vm.name, now);
    const phase = vm.status.phase;
    if (phase === VmPhase.VM_PHASE_RUNNING && !t.running.has(vm.name)) t.running.set(vm.name, now);
    if (!this.fleet.autoRun) return;
    if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) {
      this.report(vm.id, VmPhase.VM_PHASE_STOPPED, true);
    } else if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_RUNNING && phase !== VmPhase.VM_PHASE_RUNNING && !this.reported.has(vm.id)) {
      // Like the sandbox driver once the VM is up: report RUNNING once.
      this.reported.add(vm.id);
      this.report(vm.id, VmPhase.VM_PHASE_RUNNING, false);
    }
  }

  private report(vmId: string, phase: VmPhase, destroyed: boolean): void {
    this.send({ kind: { $case: "vmStatus", value: { vmId, phase, reason: "", ip: "", mac: "", destroyed } } });
  }

  /** Ends the session (the host's lease then expires on the coordinator's side). */
  close(): void {
    this.ended = true;
    this.teardown();
  }

  private teardown(): void {
    this.closed = true;
    if (this.beat) clearInterval(this.beat);
    this.beat = undefined;
    this.stream?.end();
    this.stream?.cancel();
    this.stream = undefined;
  }
}

export interface FleetOptions {
  address: string;
  token: string;
  /** Hosts per gRPC connection. */
  hostsPerConnection?: number;
  autoRun?: boolean;
  prefix?: string;
  /** Say Hello.mesh_deltas and apply the deltas (default true, as the agent); false: full snapshots. */
  meshDeltas?: boolean;
  /** Say Hello.batches and take batched messages (default true, as the agent). */
  batches?: boolean;
}

/** Many simulated hosts in this process. */
export class SimFleet {
  readonly hosts: SimHost[] = [];
  readonly md = new grpc.Metadata();
  readonly times: VmTimes = { assigned: new Map(), running: new Map() };
  readonly autoRun: boolean;
  heartbeatMs = 2000;
  /** Registrations the coordinator turned away as contended (and the host retried). */
  registerRetries = 0;
  /** Heartbeats sent and acknowledged (an ack means the coordinator renewed the host's lease). */
  heartbeatsSent = 0;
  heartbeatAcks = 0;
  /** Sessions the coordinator ended after they had opened. */
  sessionsBroken = 0;
  /** Sessions opened again after UNAVAILABLE. */
  connectRetries = 0;
  /** Established sessions that broke and were opened again. */
  sessionsReopened = 0;
  /** Mesh deltas that did not fit a host's view (it asked for a full snapshot). */
  meshResyncs = 0;
  readonly meshDeltas: boolean;
  readonly batches: boolean;
  private readonly clients: InstanceType<typeof Client>[] = [];

  constructor(private readonly o: FleetOptions) {
    this.md.set("authorization", `Bearer ${o.token}`);
    this.autoRun = o.autoRun ?? true;
    this.meshDeltas = o.meshDeltas ?? true;
    this.batches = o.batches ?? true;
  }

  private clientFor(i: number): InstanceType<typeof Client> {
    const per = this.o.hostsPerConnection ?? 50;
    const c = Math.floor(i / per);
    while (this.clients.length <= c) {
      // A local subchannel pool gives each client its own HTTP/2 connection.
      this.clients.push(
        new Client(this.o.address, grpc.credentials.createInsecure(), {
          "grpc.use_local_subchannel_pool": 1,
          "grpc.max_receive_message_length": 256 * 1024 * 1024,
        }),
      );
    }
    return this.clients[c]!;
  }

  /** Creates a host (not yet registered). */
  add(name?: string): SimHost {
    const i = this.hosts.length;
    const h = new SimHost(name ?? `${this.o.prefix ?? "sim"}-${i}`, this, this.clientFor(i));
    this.hosts.push(h);
    return h;
  }

  /** Registers and connects `n` new hosts, `concurrency` at a time. */
  async grow(n: number, concurrency = 16): Promise<SimHost[]> {
    const fresh = Array.from({ length: n }, () => this.add());
    await each(fresh, concurrency, async (h) => {
      await h.register();
      await h.connect();
    });
    return fresh;
  }

  /** Registers `n` new hosts without opening sessions (they are not alive yet). */
  async registerNew(n: number, concurrency = 16): Promise<SimHost[]> {
    const fresh = Array.from({ length: n }, () => this.add());
    await each(fresh, concurrency, (h) => h.register());
    return fresh;
  }

  async connectAll(hosts: SimHost[], concurrency = 64): Promise<void> {
    await each(hosts, concurrency, (h) => h.connect());
  }

  close(): void {
    for (const h of this.hosts) h.close();
    for (const c of this.clients) c.close();
  }
}

async function each<T>(items: T[], concurrency: number, f: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await f(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}
