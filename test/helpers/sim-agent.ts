// A simulated agent: speaks the real AgentService protocol (register, one
// session, heartbeats, status reports) but runs no VMs. With `autoRun` it
// reports each assigned VM RUNNING and confirms destroys, as a real agent would.
import * as grpc from "@grpc/grpc-js";
import { AgentServiceClient, type MeshSnapshot, type MeshUpdate, type SessionRequest, type SessionResponse } from "../../gen/noid/v1/agent.js";
import { applyMeshDelta } from "../../common/mesh-delta.js";
import type { HostPosture } from "../../gen/noid/v1/host.js";
import { VmDesiredState, VmPhase, type Vm } from "../../gen/noid/v1/vm.js";
import { coordinatorTarget } from "../../sdk/targets.js";

export interface SimAgentOptions {
  address: string;
  /** Bearer token (plaintext coordinators); omit with mTLS `credentials`. */
  token?: string;
  /** Channel credentials (default: plaintext). */
  credentials?: grpc.ChannelCredentials;
  name: string;
  capacity?: { vcpus: number; memoryMb: number; diskGb: number };
  labels?: Record<string, string>;
  drivers?: string[];
  autoRun?: boolean;
  wireguardPublicKey?: string;
  posture?: HostPosture;
  /** Say Hello.mesh_deltas and apply the deltas to `mesh` (default: take full snapshots). */
  meshDeltas?: boolean;
  /** Say Hello.batches and take batched messages (default true, as the real agent). */
  batches?: boolean;
}

export class SimAgent {
  hostId = "";
  readonly vms = new Map<string, Vm>();
  snapshots = 0;
  /** Messages received (a batch counts itself and each message in it). */
  received = 0;
  /** Batches received (SessionResponse.batch). */
  batchesReceived = 0;
  /** The last mesh view the coordinator sent (with meshDeltas: the deltas applied to the last full one). */
  mesh?: MeshSnapshot;
  /** With meshDeltas: every mesh update received on the current stream, in order. */
  meshUpdates: MeshUpdate[] = [];
  /** With meshDeltas: the version `mesh` is at (0: no view). */
  meshVersion = 0;
  /** With meshDeltas: why the first delta that did not fit `mesh` did not (a test must see it). */
  meshError?: string;
  private client: AgentServiceClient;
  private stream?: grpc.ClientDuplexStream<SessionRequest, SessionResponse>;
  private beat?: NodeJS.Timeout;
  private seq = 0;
  private readonly md = new grpc.Metadata();

  constructor(private readonly o: SimAgentOptions) {
    // A comma list of coordinator replicas works like the real agent's (one channel, a live replica), but in the given order.
    const t = coordinatorTarget(o.address, { shuffle: false });
    this.client = new AgentServiceClient(t.target, o.credentials ?? grpc.credentials.createInsecure(), t.options);
    if (o.token) this.md.set("authorization", `Bearer ${o.token}`);
  }

  async register(): Promise<string> {
    const res = await new Promise<{ hostId: string; heartbeatIntervalMs: number }>((resolve, reject) =>
      this.client.registerHost(
        {
          name: this.o.name,
          address: "10.77.0.1",
          labels: this.o.labels ?? {},
          drivers: this.o.drivers ?? ["sandbox"],
          capacity: this.o.capacity ?? { vcpus: 8, memoryMb: 16384, diskGb: 100 },
          wireguardPublicKey: this.o.wireguardPublicKey ?? "",
          wireguardPort: this.o.wireguardPublicKey ? 51820 : 0,
          agentVersion: "sim",
          posture: this.o.posture,
        },
        this.md,
        (err, r) => (err ? reject(err) : resolve(r!)),
      ),
    );
    this.hostId = res.hostId;
    return res.hostId;
  }

  private closed = false;
  reconnects = 0;

  /**
   * Opens the session and resolves once the first snapshot arrived. Like the
   * real agent, it reconnects (and resyncs) when an established session breaks.
   */
  async connect(): Promise<void> {
    if (!this.hostId) await this.register();
    const stream = this.client.session(this.md);
    this.stream = stream;
    let established = false;
    const first = new Promise<void>((resolve, reject) => {
      stream.on("data", (m: SessionResponse) => {
        this.onMessage(m);
        if (m.kind?.$case === "snapshot") {
          established = true;
          resolve();
        }
      });
      stream.on("error", (e) => reject(e));
    });
    const lost = () => {
      if (this.closed || !established || this.stream !== stream) return;
      this.stream = undefined;
      setTimeout(() => {
        if (this.closed) return;
        this.reconnects++;
        this.connect().catch(() => {
          // The new session failed before it was established: keep trying, like the real agent.
          this.stream = undefined;
          if (!this.closed) this.scheduleRetry();
        });
      }, 200);
    };
    stream.on("error", lost);
    stream.on("end", lost);
    this.meshUpdates = [];
    this.meshVersion = 0;
    stream.write({ kind: { $case: "hello", value: { hostId: this.hostId, meshDeltas: this.o.meshDeltas ?? false, batches: this.o.batches ?? true } } });
    if (!this.beat) this.beat = setInterval(() => this.send({ kind: { $case: "heartbeat", value: { sequence: ++this.seq } } }), 500);
    await first;
  }

  private scheduleRetry(): void {
    setTimeout(() => {
      if (this.closed || this.stream) return;
      this.reconnects++;
      this.connect().catch(() => {
        this.stream = undefined;
        if (!this.closed) this.scheduleRetry();
      });
    }, 300);
  }

  send(m: SessionRequest): void {
    this.stream?.write(m);
  }

  report(vmId: string, phase: VmPhase, extra: { ip?: string; destroyed?: boolean; reason?: string } = {}): void {
    this.send({
      kind: {
        $case: "vmStatus",
        value: { vmId, phase, reason: extra.reason ?? "", ip: extra.ip ?? "", mac: "", destroyed: extra.destroyed ?? false },
      },
    });
  }

  private onMessage(m: SessionResponse): void {
    const k = m.kind;
    if (!k) return;
    this.received++;
    if (k.$case === "batch") {
      this.batchesReceived++;
      for (const item of k.value.items) this.onMessage(item);
    } else if (k.$case === "snapshot") {
      this.snapshots++;
      this.vms.clear();
      for (const vm of k.value.vms) this.onVm(vm);
    } else if (k.$case === "vm") this.onVm(k.value);
    else if (k.$case === "vmRemoved") this.vms.delete(k.value.vmId);
    else if (k.$case === "mesh") this.mesh = k.value;
    else if (k.$case === "meshUpdate") this.onMeshUpdate(k.value);
    // Operations a simulated host cannot do: refused as the real agent refuses them when it has no such capability.
    else if (k.$case === "checkpoint") {
      this.send({ kind: { $case: "checkpointResult", value: { opId: k.value.opId, error: "this agent does not run checkpoints", errorCode: "FAILED_PRECONDITION", driver: "", sizeBytes: 0, sha256: "" } } });
    } else if (k.$case === "migration") {
      this.send({ kind: { $case: "migrationResult", value: { opId: k.value.opId, error: "this agent does not run migrations", errorCode: "FAILED_PRECONDITION", url: "", sizeBytes: 0, sha256: "", driver: "" } } });
    } else if (k.$case === "exec") {
      this.send({ kind: { $case: "execOutput", value: { execId: k.value.execId, output: undefined, error: "this agent does not run exec" } } });
    }
  }

  /** Like the real agent (agent/session.ts), but a delta that does not fit is recorded in meshError (and not resynced). */
  private onMeshUpdate(u: MeshUpdate): void {
    this.meshUpdates.push(u);
    try {
      if (u.kind?.$case === "full") this.mesh = u.kind.value;
      else if (u.kind?.$case === "delta") {
        if (u.kind.value.baseVersion !== this.meshVersion || !this.mesh) throw new Error(`mesh delta ${u.version} applies to ${u.kind.value.baseVersion}, have ${this.meshVersion}`);
        this.mesh = applyMeshDelta(this.mesh, u.kind.value);
      }
      this.meshVersion = u.version;
    } catch (e) {
      this.meshError ??= e instanceof Error ? e.message : String(e);
    }
  }

  get name(): string {
    return this.o.name;
  }

  /** Registers again with another WireGuard key (what an agent does on key rotation). */
  async rotateKey(key: string): Promise<void> {
    this.o.wireguardPublicKey = key;
    await this.register();
  }

  private onVm(vm: Vm): void {
    this.vms.set(vm.id, vm);
    if (!this.o.autoRun) return;
    if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) {
      this.report(vm.id, VmPhase.VM_PHASE_STOPPED, { destroyed: true });
    } else if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_STOPPED && vm.status?.phase !== VmPhase.VM_PHASE_STOPPED) {
      this.report(vm.id, VmPhase.VM_PHASE_STOPPED);
    } else if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_RUNNING && vm.status?.phase !== VmPhase.VM_PHASE_RUNNING) {
      this.report(vm.id, VmPhase.VM_PHASE_RUNNING, { ip: "10.0.0.2" });
    }
  }

  close(): void {
    this.closed = true;
    if (this.beat) clearInterval(this.beat);
    this.stream?.end();
    this.stream?.cancel();
    this.client.close();
  }
}
