// AgentService: hosts register, then hold one session each. The coordinator
// sends the host's desired state (a full snapshot, then deltas) and keeps
// the host's lease alive on heartbeats; the agent reports VM status.
import type { ServerDuplexStream, handleUnaryCall } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { MeshSnapshot } from "../../gen/noid/v1/agent.js";
import type {
  AgentExecCommand,
  AgentExecOutput,
  AgentCheckpointCommand,
  AgentCheckpointResult,
  AgentServiceServer,
  RegisterHostRequest,
  RegisterHostResponse,
  SessionRequest,
  SessionResponse,
} from "../../gen/noid/v1/agent.js";
import { Role } from "../../gen/noid/v1/auth.js";
import type { HostPosture } from "../../gen/noid/v1/host.js";
import type { Vm } from "../../gen/noid/v1/vm.js";
import { NoidError, denied, invalid } from "../../common/errors.js";
import { checkLabels, checkName } from "../../common/names.js";
import { unary, type HandlerDeps } from "../grpc/handler.js";
import { toServiceError } from "../grpc/status.js";
import type { ClusterState } from "../state/cluster.js";
import type { HostRepo } from "../state/host-repo.js";
import type { VmRepo } from "../state/vm-repo.js";
import type { Lease, Store } from "../store/store.js";
import type { Principal } from "../auth/authorize.js";
import { DRIVERS } from "../validate.js";
import type { ExecChannel, ExecHandle, SessionRegistry } from "../agents/registry.js";

export interface AgentServiceDeps extends HandlerDeps {
  store: Store;
  cluster: ClusterState;
  hosts: HostRepo;
  vms: VmRepo;
  leaseTtlSeconds: number;
  heartbeatIntervalMs: number;
  logger: Logger;
  sessions: SessionRegistry;
  meshPrefixLen: number;
}

/** Until host certificates exist (security issue), agents authenticate with an admin token. */
function requireAgent(p: Principal): void {
  if (p.role !== Role.ROLE_ADMIN) throw denied("agents must present an admin token");
}

export function validateRegistration(req: RegisterHostRequest): void {
  checkName("name", req.name);
  if (!/^[A-Za-z0-9.:\[\]-]{1,255}$/.test(req.address)) throw invalid("address", `"${req.address}" is not a host address`);
  checkLabels("labels", req.labels);
  if (req.drivers.length === 0) throw invalid("drivers", "at least one driver is required");
  for (const drv of req.drivers) {
    if (!(DRIVERS as readonly string[]).includes(drv)) throw invalid("drivers", `unknown driver "${drv}"`);
  }
  const c = req.capacity;
  if (!c || c.vcpus === 0) throw invalid("capacity.vcpus", "must be positive");
  if (c.memoryMb === 0) throw invalid("capacity.memory_mb", "must be positive");
  if (c.diskGb === 0) throw invalid("capacity.disk_gb", "must be positive");
  if (req.posture) validatePosture(req.posture, "posture");
}

export function validatePosture(p: HostPosture, field: string): void {
  if (p.checks.length > 32) throw invalid(`${field}.checks`, "at most 32 checks");
  for (const c of p.checks) {
    if (!/^[a-z0-9-]{1,40}$/.test(c.name)) throw invalid(`${field}.checks.name`, `"${c.name.slice(0, 40)}" is not a check name`);
    if (c.detail.length > 500) throw invalid(`${field}.checks.detail`, "at most 500 characters");
  }
  // The host's claim of "ok" must agree with its checks.
  if (p.ok !== p.checks.every((c) => c.ok || c.optional)) throw invalid(`${field}.ok`, "does not match the checks");
}

/** Changes that arrive within this window reach an agent as one mesh snapshot. */
const MESH_COALESCE_MS = 20;

export function agentService(d: AgentServiceDeps): AgentServiceServer {
  const registerHost: handleUnaryCall<RegisterHostRequest, RegisterHostResponse> = unary(d, "RegisterHost", async (req, ctx) => {
    requireAgent(ctx.principal);
    validateRegistration(req);
    const host = await d.hosts.register(req);
    d.logger.info({ host: host.name, hostId: host.id, address: host.address }, "host registered");
    return {
      hostId: host.id,
      heartbeatIntervalMs: d.heartbeatIntervalMs,
      leaseTtlSeconds: d.leaseTtlSeconds,
      meshIp: host.meshIp,
      meshPrefixLen: d.meshPrefixLen,
    };
  });

  const session = (call: ServerDuplexStream<SessionRequest, SessionResponse>) => {
    const s = new AgentSession(d, call);
    void s.run();
  };

  return { registerHost, session };
}

class AgentSession implements ExecChannel {
  private hostId = "";
  private readonly execs = new Map<string, (o: AgentExecOutput) => void>();
  private readonly checkpoints = new Map<string, (r: AgentCheckpointResult) => void>();
  private unsubMesh?: () => void;
  private meshTimer?: NodeJS.Timeout;
  private lastMesh = "";
  private lease?: Lease;
  private unsub?: () => void;
  private closed = false;
  /** Reports are applied one at a time, in the order the agent sent them. */
  private work: Promise<void> = Promise.resolve();
  private readonly log: Logger;

  constructor(
    private readonly d: AgentServiceDeps,
    private readonly call: ServerDuplexStream<SessionRequest, SessionResponse>,
  ) {
    this.log = d.logger.child({ component: "session", peer: call.getPeer() });
  }

  private send(m: SessionResponse): void {
    if (!this.closed) this.call.write(m);
  }

  private fail(e: unknown): void {
    if (this.closed) return;
    this.closed = true;
    this.cleanup();
    this.call.emit("error", Object.assign(new Error("session failed"), toServiceError(e)));
  }

  async run(): Promise<void> {
    try {
      requireAgent(await this.d.auth.authenticate(this.call.metadata, this.call.getPeer()));
    } catch (e) {
      this.fail(e);
      return;
    }
    this.call.on("data", (m: SessionRequest) => {
      this.work = this.work.then(() => this.onMessage(m)).catch((e) => this.fail(e));
    });
    const end = () => {
      if (this.closed) return;
      this.closed = true;
      this.cleanup();
      this.log.info({ hostId: this.hostId }, "session ended");
      this.call.end();
    };
    this.call.on("end", end);
    this.call.on("cancelled", end);
    this.call.on("error", () => end());
  }

  /** Forgets the session: no more deltas, and every exec in flight ends with an error. */
  private cleanup(): void {
    this.unsub?.();
    this.unsubMesh?.();
    if (this.meshTimer) clearTimeout(this.meshTimer);
    if (this.hostId) this.d.sessions.delete(this.hostId, this);
    for (const [execId, f] of this.execs) f({ execId, output: undefined, error: "the host's agent disconnected" });
    this.execs.clear();
    for (const [opId, f] of this.checkpoints) f(disconnected(opId));
    this.checkpoints.clear();
  }

  checkpoint(cmd: AgentCheckpointCommand): Promise<AgentCheckpointResult> {
    if (this.closed) return Promise.resolve(disconnected(cmd.opId));
    return new Promise((resolve) => {
      this.checkpoints.set(cmd.opId, resolve);
      this.send({ kind: { $case: "checkpoint", value: cmd } });
    });
  }

  exec(cmd: AgentExecCommand, onOutput: (o: AgentExecOutput) => void): ExecHandle {
    if (this.closed) {
      onOutput({ execId: cmd.execId, output: undefined, error: "the host's agent disconnected" });
      return { cancel: () => undefined, input: () => undefined };
    }
    this.execs.set(cmd.execId, onOutput);
    this.send({ kind: { $case: "exec", value: cmd } });
    return {
      cancel: () => {
        if (this.execs.delete(cmd.execId)) this.send({ kind: { $case: "execCancel", value: { execId: cmd.execId } } });
      },
      input: (kind) => {
        if (this.execs.has(cmd.execId)) this.send({ kind: { $case: "execInput", value: { execId: cmd.execId, kind } } });
      },
    };
  }

  private async onMessage(m: SessionRequest): Promise<void> {
    const k = m.kind;
    if (!k) throw invalid("kind", "empty session message");
    if (k.$case === "hello") return this.hello(k.value.hostId);
    if (!this.hostId) throw new NoidError("FAILED_PRECONDITION", "send hello first");
    if (k.$case === "heartbeat") {
      try {
        await this.lease!.keepAliveOnce();
      } catch {
        // The lease expired while we were away: take a new one.
        this.lease = await this.d.store.grantLease(this.d.leaseTtlSeconds);
        await this.d.hosts.markAlive(this.hostId, this.lease);
      }
      this.send({ kind: { $case: "heartbeatAck", value: { sequence: k.value.sequence } } });
      return;
    }
    if (k.$case === "execOutput") {
      const f = this.execs.get(k.value.execId);
      if (!f) return;
      const o = k.value.output?.kind;
      if (k.value.error || o?.$case === "exit") this.execs.delete(k.value.execId);
      f(k.value);
      return;
    }
    if (k.$case === "checkpointResult") {
      const f = this.checkpoints.get(k.value.opId);
      this.checkpoints.delete(k.value.opId);
      f?.(k.value);
      return;
    }
    if (k.$case === "posture") {
      validatePosture(k.value, "posture");
      await this.d.hosts.setPosture(this.hostId, k.value);
      return;
    }
    if (k.$case === "vmStatus") {
      const r = k.value;
      if (r.destroyed) await this.d.vms.finalizeDestroy(r.vmId, this.hostId);
      else {
        try {
          await this.d.vms.reportStatus(this.hostId, { vmId: r.vmId, phase: r.phase, reason: r.reason, ip: r.ip, mac: r.mac });
        } catch (e) {
          // A host may only report its own VMs; a stale report (the VM moved) is dropped, not applied.
          if (!(e instanceof NoidError && e.code === "PERMISSION_DENIED")) throw e;
          this.log.warn({ hostId: this.hostId, vmId: r.vmId }, "ignored status report for a VM not assigned to this host");
        }
      }
    }
  }

  private async hello(hostId: string): Promise<void> {
    if (this.hostId) throw new NoidError("FAILED_PRECONDITION", "hello sent twice");
    if (!/^[0-9a-f]{16}$/.test(hostId)) throw invalid("hello.host_id", "is not a host id");
    const host = await this.d.hosts.get(hostId);
    if (!host) throw new NoidError("NOT_FOUND", `host ${hostId} is not registered; register first`);
    this.hostId = hostId;
    this.lease = await this.d.store.grantLease(this.d.leaseTtlSeconds);
    await this.d.hosts.markAlive(hostId, this.lease);
    this.log.info({ host: host.host.name, hostId }, "session started");
    this.d.sessions.set(hostId, this);
    // Subscribe before the snapshot so nothing falls between them; the agent
    // treats a VM it already has as an update.
    this.unsub = this.d.cluster.vms.onChange((ch) => {
      const now = ch.type === "put" ? ch.entry.value : undefined;
      const before = ch.prev?.value;
      const mine = (v?: Vm) => v?.status?.hostId === hostId;
      if (now && mine(now)) this.send({ kind: { $case: "vm", value: now } });
      else if (mine(before)) this.send({ kind: { $case: "vmRemoved", value: { vmId: before!.id } } });
    });
    this.send({ kind: { $case: "snapshot", value: { vms: this.d.cluster.vmsOnHost(hostId) } } });
    // The mesh view: sent now and again whenever it changes (coalesced; only when different).
    this.sendMesh();
    this.unsubMesh = this.d.cluster.onMeshChange(() => {
      if (this.meshTimer || this.closed) return;
      this.meshTimer = setTimeout(() => {
        this.meshTimer = undefined;
        this.sendMesh();
      }, MESH_COALESCE_MS);
    });
  }

  private sendMesh(): void {
    if (this.closed) return;
    const mesh = this.d.cluster.meshFor(this.hostId, this.d.meshPrefixLen);
    const key = Buffer.from(MeshSnapshot.encode(mesh).finish()).toString("base64");
    if (key === this.lastMesh) return;
    this.lastMesh = key;
    this.send({ kind: { $case: "mesh", value: mesh } });
  }
}


function disconnected(opId: string): AgentCheckpointResult {
  return { opId, error: "the host's agent disconnected", errorCode: "UNAVAILABLE", driver: "", sizeBytes: 0, sha256: "" };
}
