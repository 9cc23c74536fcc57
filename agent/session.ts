// The agent's session with the coordinator: RegisterHost, then one bidi Session stream
// carrying hello, heartbeats and VM status up, and the desired state down (a snapshot,
// then deltas). On any break: back off (capped at 10 s), register again, reopen, and let
// the fresh snapshot replace the desired set; the last status of every VM is resent.
//
// Session states (explicit, see SessionState): idle -> registering -> streaming ->
// backoff -> registering ... ; stop() from any state -> stopped.
import { Metadata, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import type { Logger } from "../common/logger.js";
import {
  type AgentServiceClient,
  type RegisterHostRequest,
  type RegisterHostResponse,
  type SessionRequest,
  type SessionResponse,
  type AgentExecCommand,
  type AgentExecOutput,
  type AgentExecInput,
  type HostCondition,
  type MeshSnapshot,
  type SecurityEvent,
  type AgentCheckpointCommand,
  type AgentCheckpointResult,
  type VmStatusReport,
  type AgentStreamOpen,
  type AgentStreamInput,
  type AgentStreamOutput,
  type MeshUpdate,
} from "../gen/noid/v1/agent.js";
import { MeshViewTracker } from "../common/mesh-delta.js";
import type { DriverCapabilities, HostPosture, HostUsage } from "../gen/noid/v1/host.js";
import type { PortReport, PortSnapshot } from "../gen/noid/v1/port.js";
import type { AgentMigrationCommand, AgentMigrationResult } from "../gen/noid/v1/migration.js";
import { type BackoffPolicy, DEFAULT_BACKOFF, backoffDelay } from "./backoff.js";
import { desiredFromVm } from "./reconcile/desired.js";
import type { DesiredVm } from "./reconcile/types.js";

/** Where the desired state goes (the reconcile loop). */
export interface DesiredSink {
  setDesired(vms: readonly DesiredVm[]): void;
  upsert(vm: DesiredVm): void;
  remove(vmId: string): void;
  lastReports(): VmStatusReport[];
}

/** Security events held while no session streams (the oldest go first beyond this). */
const MAX_HELD_SECURITY = 100;

export type SessionState = "idle" | "registering" | "streaming" | "backoff" | "stopped";

export interface AgentSessionOptions {
  client: AgentServiceClient;
  /** Bearer token (plaintext coordinators only); with mTLS the client certificate is the credential. */
  token?: string;
  registration: RegisterHostRequest;
  sink: DesiredSink;
  logger: Logger;
  backoff?: BackoffPolicy;
  /** Deadline of the RegisterHost call (default 10 s). */
  registerTimeoutMs?: number;
  /** Used when the coordinator does not say (default 5 s). */
  defaultHeartbeatMs?: number;
  /** Heartbeats without an ack before the stream is declared dead (default 3). */
  missedAcksLimit?: number;
  onState?: (s: SessionState) => void;
  /**
   * Receives the coordinator's mesh view (absent: ignored), always whole: the session
   * asks for deltas and applies them to the last view itself.
   */
  mesh?: { setSnapshot(s: MeshSnapshot, hostId: string): void };
  /** Runs exec commands from the coordinator (absent: they are refused). */
  exec?: {
    run(cmd: AgentExecCommand, send: (o: AgentExecOutput) => void): void;
    cancel(execId: string): void;
    input?(i: AgentExecInput): void;
  };
  /** Receives the ports this host DNATs and the HTTP routes (absent: ignored). */
  ports?: { setSnapshot(s: PortSnapshot): void };
  /** Saves and restores checkpoints (absent: they are refused). */
  checkpoint?: { run(cmd: AgentCheckpointCommand, send: (r: AgentCheckpointResult) => void): void };
  /** Console, VM log and host log streams (absent: they are refused). */
  streams?: { run(cmd: AgentStreamOpen, send: (o: AgentStreamOutput) => void): void; input(i: AgentStreamInput): void };
  /** What the host's drivers can do, sent after every hello. */
  capabilities?: () => DriverCapabilities[];
  /** Runs migration steps (absent: they are refused). */
  migration?: { run(cmd: AgentMigrationCommand, send: (r: AgentMigrationResult) => void): void };
}

export class AgentSession {
  private state: SessionState = "idle";
  private attempt = 0;
  private stream: ClientDuplexStream<SessionRequest, SessionResponse> | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private sequence = 0;
  private lastAcked = 0;
  private id: string | undefined;
  private condition: HostCondition | undefined;
  private portReport: PortReport | undefined;
  private renewedAt: number | undefined;
  private everyMs: number | undefined;
  /** When this stream's hello went out, and each heartbeat not yet acknowledged (sequence -> ms). */
  private helloAt = 0;
  private readonly beatSentAt = new Map<number, number>();
  private snapshotsOnStream = 0;
  /** The mesh view of this stream so far (deltas apply to it, a gap asks for a full one); reset per stream. */
  private readonly meshView = new MeshViewTracker();

  constructor(private readonly opts: AgentSessionOptions) {}

  get hostId(): string | undefined {
    return this.id;
  }

  /**
   * From when on the coordinator has proved this host's lease renewed, ms;
   * undefined before the first proof. An ack proves the lease was renewed
   * after its heartbeat arrived, so it lasts TTL from at least when that
   * heartbeat was SENT: that send time is what counts, not when the ack came
   * (an ack held up for longer than the lease's TTL, by a busy coordinator or
   * an etcd election, would otherwise move the fence past the moment the
   * leader may reschedule this host's VMs). A snapshot follows a lease
   * granted after this stream's hello (the first) or after a heartbeat that
   * found the lease expired (the oldest one unacknowledged).
   */
  get lastRenewedAt(): number | undefined {
    return this.renewedAt;
  }

  /** The heartbeat interval the coordinator asked for when this agent last registered, ms; undefined before. */
  get heartbeatIntervalMs(): number | undefined {
    return this.everyMs;
  }

  get currentState(): SessionState {
    return this.state;
  }

  start(): void {
    if (this.state !== "idle") return;
    void this.connect();
  }

  async stop(): Promise<void> {
    this.setState("stopped");
    if (this.retry) clearTimeout(this.retry);
    this.closeStream();
  }

  /** Sends a VM status now if the stream is up; otherwise it goes out with the resync after reconnecting. */
  report(status: VmStatusReport): void {
    if (this.state === "streaming") this.write({ kind: { $case: "vmStatus", value: status } });
  }

  /**
   * A new host posture: kept in the registration (so every re-registration carries it) and
   * sent now when the session is up.
   */
  reportPosture(posture: HostPosture): void {
    this.opts.registration.posture = posture;
    if (this.state === "streaming") this.write({ kind: { $case: "posture", value: posture } });
  }

  /** The host's mesh condition: sent now if the stream is up, and again after every reconnect. */
  setCondition(c: HostCondition): void {
    this.condition = c;
    if (this.state === "streaming") this.write({ kind: { $case: "hostCondition", value: c } });
  }

  /** What the host applied of its ports: sent now if the stream is up, and again after every reconnect. */
  reportPorts(r: PortReport): void {
    this.portReport = r;
    if (this.state === "streaming") this.write({ kind: { $case: "portReport", value: r } });
  }

  /** Sends the host's usage counters (dropped while no session streams: the next interval sends fresh ones). */
  reportUsage(u: HostUsage): void {
    if (this.state !== "streaming" || !this.id) return;
    this.write({ kind: { $case: "usage", value: u } });
  }

  /**
   * Sends a security event now if the stream is up (true); otherwise it is held and sent
   * after the next hello (false), the newest MAX_HELD_SECURITY of them. A drift repaired
   * while the session reconnected used to be reported nowhere.
   */
  security(e: Omit<SecurityEvent, "hostId">): boolean {
    if (this.state !== "streaming" || !this.id) {
      this.heldSecurity.push(e);
      if (this.heldSecurity.length > MAX_HELD_SECURITY) this.heldSecurity.shift();
      return false;
    }
    this.write({ kind: { $case: "securityEvent", value: { ...e, hostId: this.id } } });
    return true;
  }

  private heldSecurity: Omit<SecurityEvent, "hostId">[] = [];

  private isStopped(): boolean {
    return this.state === "stopped";
  }

  private setState(s: SessionState): void {
    if (this.state === "stopped" || this.state === s) return;
    this.state = s;
    this.opts.onState?.(s);
  }

  private metadata(): Metadata {
    const md = new Metadata();
    if (this.opts.token) md.set("authorization", `Bearer ${this.opts.token}`);
    return md;
  }

  private client: AgentServiceClient | undefined;
  /** Clients replaced by setClient, closed once no stream uses them. */
  private retired: AgentServiceClient[] = [];

  private get current(): AgentServiceClient {
    return this.client ?? this.opts.client;
  }

  /**
   * Uses `client` (e.g. with a renewed certificate) for every call from now
   * on; the open stream stays on the old connection until it ends.
   */
  setClient(client: AgentServiceClient): void {
    const old = this.current;
    this.client = client;
    if (old !== client) this.retired.push(old);
    if (!this.stream) this.closeRetired();
  }

  private closeRetired(): void {
    for (const c of this.retired.splice(0)) c.close();
  }

  private register(): Promise<RegisterHostResponse> {
    const deadline = new Date(Date.now() + (this.opts.registerTimeoutMs ?? 10_000));
    return new Promise((resolve, reject) => {
      this.current.registerHost(this.opts.registration, this.metadata(), { deadline }, (err: ServiceError | null, res) =>
        err ? reject(err) : resolve(res),
      );
    });
  }

  private async connect(): Promise<void> {
    if (this.state === "stopped") return;
    this.setState("registering");
    let reg: RegisterHostResponse;
    try {
      reg = await this.register();
    } catch (e) {
      this.opts.logger.warn({ err: errText(e), attempt: this.attempt }, "RegisterHost failed");
      this.scheduleReconnect();
      return;
    }
    if (this.isStopped()) return; // stop() may have run while we awaited
    this.id = reg.hostId;
    this.opts.logger.info({ hostId: reg.hostId }, "registered");
    this.openStream(reg);
  }

  private openStream(reg: RegisterHostResponse): void {
    this.closeRetired();
    const stream = this.current.session(this.metadata());
    this.stream = stream;
    this.setState("streaming");
    this.meshView.reset();
    this.helloAt = Date.now();
    this.beatSentAt.clear();
    this.snapshotsOnStream = 0;
    this.write({ kind: { $case: "hello", value: { hostId: reg.hostId, meshDeltas: this.opts.mesh !== undefined, batches: true } } });
    if (this.condition) this.write({ kind: { $case: "hostCondition", value: this.condition } });
    if (this.portReport) this.write({ kind: { $case: "portReport", value: this.portReport } });
    for (const e of this.heldSecurity.splice(0)) this.write({ kind: { $case: "securityEvent", value: { ...e, hostId: reg.hostId } } });
    if (this.opts.capabilities) this.write({ kind: { $case: "capabilities", value: { drivers: this.opts.capabilities() } } });

    const everyMs = reg.heartbeatIntervalMs || (this.opts.defaultHeartbeatMs ?? 5000);
    this.everyMs = everyMs;
    this.sequence = 0;
    this.lastAcked = 0;
    this.heartbeat = setInterval(() => {
      if (this.sequence - this.lastAcked >= (this.opts.missedAcksLimit ?? 3)) {
        this.opts.logger.warn({ sent: this.sequence, acked: this.lastAcked }, "heartbeats unanswered; reconnecting");
        stream.cancel();
        return;
      }
      this.beatSentAt.set(++this.sequence, Date.now());
      this.write({ kind: { $case: "heartbeat", value: { sequence: this.sequence } } });
    }, everyMs);
    this.heartbeat.unref();

    stream.on("data", (msg: SessionResponse) => this.receive(msg));
    let ended = false;
    const onEnd = (why: string, err?: unknown): void => {
      if (ended || this.stream !== stream) return;
      ended = true;
      if (err !== undefined) this.opts.logger.warn({ err: errText(err) }, `session ${why}`);
      else this.opts.logger.info(`session ${why}`);
      this.closeStream();
      this.scheduleReconnect();
    };
    stream.on("error", (e) => onEnd("failed", e));
    stream.on("end", () => onEnd("ended by coordinator"));
  }

  private renewed(at: number): void {
    this.renewedAt = Math.max(this.renewedAt ?? at, at);
  }

  private receive(msg: SessionResponse): void {
    const k = msg.kind;
    if (!k) return;
    // Any message proves the session works: the next break starts backing off from scratch.
    this.attempt = 0;
    switch (k.$case) {
      case "snapshot": {
        const oldestBeat = this.beatSentAt.values().next().value;
        this.renewed(this.snapshotsOnStream++ === 0 || oldestBeat === undefined ? this.helloAt : oldestBeat);
        this.opts.sink.setDesired(k.value.vms.map((vm) => desiredFromVm(vm)));
        // The coordinator may have lost what we said before the break: say it again,
        // for the VMs still ours (reporting one that moved away would be refused).
        const ours = new Set(k.value.vms.map((vm) => vm.id));
        for (const r of this.opts.sink.lastReports()) if (ours.has(r.vmId)) this.write({ kind: { $case: "vmStatus", value: r } });
        break;
      }
      case "vm":
        this.opts.sink.upsert(desiredFromVm(k.value));
        break;
      case "vmRemoved":
        this.opts.sink.remove(k.value.vmId);
        break;
      case "heartbeatAck": {
        const seq = k.value.sequence;
        this.lastAcked = Math.max(this.lastAcked, seq);
        const sent = this.beatSentAt.get(seq);
        for (const n of this.beatSentAt.keys()) if (n <= seq) this.beatSentAt.delete(n);
        if (sent !== undefined) this.renewed(sent);
        break;
      }
      case "exec": {
        const send = (o: AgentExecOutput) => this.write({ kind: { $case: "execOutput", value: o } });
        if (this.opts.exec) this.opts.exec.run(k.value, send);
        else send({ execId: k.value.execId, output: undefined, error: "this agent does not run exec" });
        break;
      }
      case "execInput":
        this.opts.exec?.input?.(k.value);
        break;
      case "execCancel":
        this.opts.exec?.cancel(k.value.execId);
        break;
      case "mesh":
        this.meshView.reset();
        if (this.id) this.opts.mesh?.setSnapshot(k.value, this.id);
        break;
      case "meshUpdate":
        this.meshUpdate(k.value);
        break;
      case "batch":
        for (const item of k.value.items) this.receive(item);
        break;
      case "ports":
        this.opts.ports?.setSnapshot(k.value);
        break;
      case "streamOpen": {
        const send = (o: AgentStreamOutput) => this.write({ kind: { $case: "streamOutput", value: o } });
        if (this.opts.streams) this.opts.streams.run(k.value, send);
        else send({ streamId: k.value.streamId, data: Buffer.alloc(0), end: true, error: "this agent does not run streams", errorCode: "FAILED_PRECONDITION" });
        break;
      }
      case "streamInput":
        this.opts.streams?.input(k.value);
        break;
      case "checkpoint": {
        const send = (r: AgentCheckpointResult) => this.write({ kind: { $case: "checkpointResult", value: r } });
        if (this.opts.checkpoint) this.opts.checkpoint.run(k.value, send);
        else send({ opId: k.value.opId, error: "this agent does not run checkpoints", errorCode: "FAILED_PRECONDITION", driver: "", sizeBytes: 0, sha256: "" });
        break;
      }
      case "migration": {
        const send = (r: AgentMigrationResult) => this.write({ kind: { $case: "migrationResult", value: r } });
        if (this.opts.migration) this.opts.migration.run(k.value, send);
        else send({ opId: k.value.opId, error: "this agent does not run migrations", errorCode: "FAILED_PRECONDITION", url: "", sizeBytes: 0, sha256: "", driver: "" });
        break;
      }
    }
  }

  /** A full mesh snapshot or a delta to the last one: the mesh sink gets the whole view either way. */
  private meshUpdate(u: MeshUpdate): void {
    const r = this.meshView.take(u);
    if (r.kind === "resync") {
      this.opts.logger.warn({ err: r.reason }, "mesh delta does not fit; asking for a full snapshot");
      this.write({ kind: { $case: "meshResync", value: { haveVersion: r.haveVersion, reason: r.reason } } });
    } else if (r.kind === "snapshot" && this.id) this.opts.mesh?.setSnapshot(r.snapshot, this.id);
  }

  private write(req: SessionRequest): void {
    try {
      this.stream?.write(req);
    } catch (e) {
      this.opts.logger.warn({ err: errText(e) }, "session write failed");
    }
  }

  private closeStream(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    const s = this.stream;
    this.stream = undefined;
    if (s) {
      s.removeAllListeners("data");
      s.on("error", () => undefined); // a cancelled call reports CANCELLED; nobody needs it
      s.cancel();
    }
  }

  private scheduleReconnect(): void {
    if (this.state === "stopped") return;
    this.setState("backoff");
    const delay = backoffDelay(this.attempt++, this.opts.backoff ?? DEFAULT_BACKOFF);
    this.retry = setTimeout(() => void this.connect(), delay);
  }
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
