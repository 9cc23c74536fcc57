// AgentService: hosts register, then hold one session each. The coordinator
// sends the host's desired state (a full snapshot, then deltas) and keeps
// the host's lease alive on heartbeats; the agent reports VM status.
import type { ServerDuplexStream, ServerUnaryCall, handleUnaryCall, sendUnaryData } from "@grpc/grpc-js";
import type { PeerCertificate } from "node:tls";
import type { Logger } from "pino";
import type {
  AgentExecCommand,
  AgentExecOutput,
  AgentCheckpointCommand,
  AgentCheckpointResult,
  AgentServiceServer,
  AgentStreamOpen,
  AgentStreamOutput,
  JoinHostRequest,
  JoinHostResponse,
  RegisterHostRequest,
  RenewCertificateRequest,
  RenewCertificateResponse,
  RegisterHostResponse,
  SessionRequest,
  SessionResponse,
} from "../../gen/noid/v1/agent.js";
import { Role } from "../../gen/noid/v1/auth.js";
import type { AgentMigrationCommand, AgentMigrationResult } from "../../gen/noid/v1/migration.js";
import type { HostPosture } from "../../gen/noid/v1/host.js";
import type { Vm } from "../../gen/noid/v1/vm.js";
import { NoidError, denied, invalid, precondition } from "../../common/errors.js";
import { checkLabels, checkName } from "../../common/names.js";
import type { HandlerDeps } from "../grpc/handler.js";
import { toServiceError } from "../grpc/status.js";
import type { ClusterState } from "../state/cluster.js";
import type { Change } from "../state/informer.js";
import type { HostRepo } from "../state/host-repo.js";
import { supersededSession, type VmRepo } from "../state/vm-repo.js";
import type { Compare, Lease, Store } from "../store/store.js";
import type { Principal } from "../auth/authorize.js";
import { DRIVERS } from "../validate.js";
import type { HostUsageStore } from "../agents/usage-store.js";
import { keys, lastSegment } from "../state/keys.js";
import { type HostLossDefaults, withEffectiveHostLoss } from "../controllers/host-loss.js";
import type { ExecChannel, ExecHandle, SessionRegistry, StreamHandle } from "../agents/registry.js";
import type { AuthGuard } from "../auth/guard.js";
import { AuthFailure } from "../auth/tokens.js";
import { HOST_OU, checkCsr, type ClusterCa } from "../pki/ca.js";
import type { HostIdentities } from "../pki/host-identity.js";
import { type SecurityAudit, checkSecurityEvent } from "../security-events.js";
import { MeshHealth } from "../mesh/health.js";
import { PortSnapshot } from "../../gen/noid/v1/port.js";
import type { PortFeed } from "../ports/port-feed.js";
import { emptyDelta } from "../../common/mesh-delta.js";
import type { MeshSnapshot, VmStatusReport } from "../../gen/noid/v1/agent.js";

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
  guard: AuthGuard;
  /** The cluster CA and host identities; absent when the coordinator runs plaintext (--insecure). */
  pki?: { ca: ClusterCa; ids: HostIdentities };
  /** Live sessions by host name, so that removing a host ends its session at once. */
  hostSessions: HostSessions;
  audit?: (e: { event: string; user: string; vm: string; host: string; success: boolean; detail: string; peer: string }) => Promise<void>;
  /** Records agents' security events in the audit log (absent: they are only logged). */
  security?: SecurityAudit;
  /** Keeps the usage counters agents send (absent: they are dropped). */
  usage?: HostUsageStore;
  /** Port snapshots to agents and their reports (absent: no port exposure). */
  ports?: PortFeed;
  /** The cluster's host-loss defaults: agents get each VM with its effective policy (they fence by it). Default keep, 60 s. */
  hostLoss?: HostLossDefaults;
}

/** Port changes within this window go to an agent as one snapshot. */
const PORTS_COALESCE_MS = 20;

const DEFAULT_HOST_LOSS: HostLossDefaults = { policy: "keep", graceSeconds: 60 };

/**
 * Who an agent is. Over TLS it is the host named by its client certificate
 * (CN, OU=noid-host) signed by the cluster CA, still listed as valid in
 * etcd. Only a plaintext (--insecure, development) coordinator lets an agent
 * in with an admin bearer token instead; such an agent may claim any name.
 */
export type AgentIdentity = { kind: "cert"; host: string; serial: string } | { kind: "admin-token"; principal: Principal };

const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

/** The verified client certificate of a call, if the caller presented one the cluster CA signed. */
export function peerHostCert(call: { getAuthContext?: () => { sslPeerCertificate?: PeerCertificate } | null }): { host: string; serial: string } | undefined {
  const cert = call.getAuthContext?.()?.sslPeerCertificate;
  if (!cert) return undefined;
  const s = cert.subject as unknown as Record<string, string | string[] | undefined>;
  const host = first(s.CN);
  if (first(s.OU) !== HOST_OU || !host) return undefined;
  return { host, serial: cert.serialNumber.toLowerCase() };
}

export async function authenticateAgent(
  d: Pick<AgentServiceDeps, "auth" | "pki" | "guard">,
  call: { metadata: ServerUnaryCall<unknown, unknown>["metadata"]; getPeer(): string; getAuthContext?: () => { sslPeerCertificate?: PeerCertificate } | null },
): Promise<AgentIdentity> {
  const peer = call.getPeer();
  if (!d.pki) {
    const principal = await d.auth.authenticate(call.metadata, peer);
    if (principal.role !== Role.ROLE_ADMIN) throw denied("agents of a plaintext coordinator must present an admin token");
    return { kind: "admin-token", principal };
  }
  d.guard.admit(peer);
  const cert = peerHostCert(call);
  if (!cert) {
    await d.guard.fail(peer, "bad_host_cert", "", "agent");
    throw new AuthFailure("bad_host_cert", "agents authenticate with a host certificate: join with a join token (noid-agent --join-token-file)");
  }
  if (!(await d.pki.ids.isValid(cert.serial, cert.host))) {
    await d.guard.fail(peer, "bad_host_cert", `host:${cert.host}`, "agent");
    throw new AuthFailure("bad_host_cert", "host certificate is revoked or unknown");
  }
  return { kind: "cert", host: cert.host, serial: cert.serial };
}

/** An identity may act as host `name`: a certificate only for its own name. */
function mayActAs(id: AgentIdentity, name: string): void {
  if (id.kind === "cert" && id.host !== name) throw denied(`host ${id.host} may not act as host ${name}`);
}

/** The agent sessions of this coordinator by host name. */
export class HostSessions {
  private readonly byName = new Map<string, Set<{ kick(e: NoidError): void }>>();

  add(name: string, s: { kick(e: NoidError): void }): () => void {
    let set = this.byName.get(name);
    if (!set) this.byName.set(name, (set = new Set()));
    set.add(s);
    return () => {
      set.delete(s);
      if (set.size === 0 && this.byName.get(name) === set) this.byName.delete(name);
    };
  }

  /** Ends every session of host `name` with `e`. */
  kick(name: string, e: NoidError): number {
    const set = [...(this.byName.get(name) ?? [])];
    for (const s of set) s.kick(e);
    return set.length;
  }
}

/** Agent RPCs authenticate themselves (certificate or, plaintext only, admin token). */
function agentUnary<Req, Res>(
  d: AgentServiceDeps,
  method: string,
  fn: (req: Req, ctx: { peer: string; call: ServerUnaryCall<Req, Res> }) => Promise<Res>,
): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    const t0 = performance.now();
    void (async () => {
      try {
        const res = await fn(call.request, { peer: call.getPeer(), call });
        d.onCall?.(method, 0, performance.now() - t0);
        cb(null, res);
      } catch (e) {
        const se = toServiceError(e);
        // Never log the request: JoinHost carries the join token.
        if (!(e instanceof NoidError) || e.code === "INTERNAL") d.logger.error({ err: e, method }, "call failed");
        d.onCall?.(method, se.code ?? 13, performance.now() - t0);
        cb(se, null);
      }
    })();
  };
}

function needPki(d: AgentServiceDeps): { ca: ClusterCa; ids: HostIdentities } {
  if (!d.pki) throw precondition("the coordinator runs plaintext (--insecure): there are no host certificates; agents use an admin token");
  return d.pki;
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


/**
 * VM changes by host, for the sessions: one listener on the VM informer
 * hands each change to the sessions of the host the VM is on now and of the
 * host it was on before, instead of every session looking at every change
 * (with hundreds of sessions, a burst of placements was sessions x changes calls).
 */
export class VmChangesByHost {
  private readonly subs = new Map<string, Set<(ch: Change<Vm>) => void>>();
  private off?: () => void;

  constructor(private readonly cluster: ClusterState) {}

  subscribe(hostId: string, f: (ch: Change<Vm>) => void): () => void {
    this.off ??= this.cluster.vms.onChange((ch) => this.dispatch(ch));
    let set = this.subs.get(hostId);
    if (!set) this.subs.set(hostId, (set = new Set()));
    set.add(f);
    return () => {
      set.delete(f);
      if (set.size === 0 && this.subs.get(hostId) === set) this.subs.delete(hostId);
    };
  }

  private dispatch(ch: Change<Vm>): void {
    const now = ch.type === "put" ? ch.entry.value.status?.hostId : undefined;
    const before = ch.prev?.value.status?.hostId;
    if (now) this.subs.get(now)?.forEach((f) => f(ch));
    if (before && before !== now) this.subs.get(before)?.forEach((f) => f(ch));
  }
}

export function agentService(d: AgentServiceDeps): AgentServiceServer {
  const registerHost: handleUnaryCall<RegisterHostRequest, RegisterHostResponse> = agentUnary(d, "RegisterHost", async (req, ctx) => {
    const id = await authenticateAgent(d, ctx.call);
    validateRegistration(req);
    mayActAs(id, req.name);
    // The certificate must still be valid when the record is written (a removal may race us).
    const host = await d.hosts.register(req, id.kind === "cert" ? [d.pki!.ids.stillValid(id.serial)] : []).catch(async (e: unknown) => {
      if (id.kind === "cert" && !(await d.pki!.ids.isValid(id.serial, id.host))) throw new AuthFailure("bad_host_cert", "host certificate is revoked or unknown");
      throw e;
    });
    d.logger.info({ host: host.name, hostId: host.id, address: host.address }, "host registered");
    return {
      hostId: host.id,
      heartbeatIntervalMs: d.heartbeatIntervalMs,
      leaseTtlSeconds: d.leaseTtlSeconds,
      meshIp: host.meshIp,
      meshPrefixLen: d.meshPrefixLen,
    };
  });

  const health = new MeshHealth(
    (id, reason) => d.hosts.setDegraded(id, reason),
    (id) => d.cluster.hostById(id)?.name ?? id,
  );
  const vmChanges = new VmChangesByHost(d.cluster);
  const session = (call: ServerDuplexStream<SessionRequest, SessionResponse>) => {
    const s = new AgentSession(d, call, health, vmChanges);
    void s.run();
  };

  const joinHost: handleUnaryCall<JoinHostRequest, JoinHostResponse> = agentUnary(d, "JoinHost", async (req, ctx) => {
    const pki = needPki(d);
    d.guard.admit(ctx.peer);
    checkName("name", req.name);
    await checkCsr(req.csrPem); // a bad CSR must not use up the token
    try {
      await pki.ids.consumeJoinToken(req.joinToken, req.name);
    } catch (e) {
      if (e instanceof NoidError && e.code === "UNAUTHENTICATED") await d.guard.fail(ctx.peer, "bad_join_token", `host:${req.name}`, "join");
      throw e;
    }
    const issued = await pki.ids.issue(req.name, req.csrPem);
    d.logger.info({ host: req.name, serial: issued.serial, notAfter: issued.notAfter }, "host joined: certificate issued");
    await d.audit?.({ event: "host.join", user: `host:${req.name}`, vm: "", host: req.name, success: true, detail: `certificate ${issued.serial} until ${issued.notAfter.toISOString()}`, peer: ctx.peer });
    return { certificatePem: issued.certPem, caPem: pki.ca.certPem, notAfter: issued.notAfter };
  });

  const renewCertificate: handleUnaryCall<RenewCertificateRequest, RenewCertificateResponse> = agentUnary(d, "RenewCertificate", async (req, ctx) => {
    const pki = needPki(d);
    const id = await authenticateAgent(d, ctx.call);
    if (id.kind !== "cert") throw denied("only a host certificate can be renewed");
    const issued = await pki.ids.issue(id.host, req.csrPem, id.serial);
    d.logger.info({ host: id.host, serial: issued.serial, notAfter: issued.notAfter }, "host certificate renewed");
    return { certificatePem: issued.certPem, caPem: pki.ca.certPem, notAfter: issued.notAfter };
  });

  return { registerHost, session, joinHost, renewCertificate };
}

class AgentSession implements ExecChannel {
  private hostId = "";
  private readonly execs = new Map<string, (o: AgentExecOutput) => void>();
  private readonly checkpoints = new Map<string, (r: AgentCheckpointResult) => void>();
  private readonly streams = new Map<string, (o: AgentStreamOutput) => void>();
  private readonly migrations = new Map<string, (r: AgentMigrationResult) => void>();
  private unsubMesh?: () => void;
  private unsubPorts?: () => void;
  private portsTimer?: NodeJS.Timeout;
  /** The last port snapshot sent (encoded); an empty one is sent too (it is "", so start elsewhere). */
  private lastPorts: string | undefined;
  private lastMesh = "";
  /** The tenant networks of the last mesh view computed for this host. */
  private meshNets: ReadonlySet<string> = new Set();
  private meshInFlight = false;
  private meshAgain = false;
  /** The agent takes mesh deltas (Hello.mesh_deltas): then the last view sent and its version. */
  private meshDeltas = false;
  private meshSent?: MeshSnapshot;
  private meshVersion = 0;
  private lease?: Lease;
  /** The mod revision of this session's last write of the host's liveness key: its reports' fence (VmRepo StatusFence). */
  private aliveRevision = 0;
  private readonly fence = (): Compare => ({ key: keys.alive(this.hostId!), target: "mod", op: "==", value: this.aliveRevision });
  private unsub?: () => void;
  private closed = false;
  /** Status reports waiting to be applied together (closed when it starts or another message comes). */
  private statusBatch?: VmStatusReport[];
  /** Reports are applied one at a time, in the order the agent sent them. */
  private work: Promise<void> = Promise.resolve();
  /** hello is done: heartbeats go beside the reports from now on. */
  private started = false;
  /** Heartbeats, one at a time, beside the reports. */
  private beats: Promise<void> = Promise.resolve();
  private readonly log: Logger;
  private identity?: AgentIdentity;
  private untrack?: () => void;
  /** Deltas held back while a snapshot is being read (undefined: send at once). */
  private deltas?: SessionResponse[];
  /** VMs this session was told about: a report for one that moved away since is stale, not an intrusion. */
  private readonly known = new Set<string>();

  constructor(
    private readonly d: AgentServiceDeps,
    private readonly call: ServerDuplexStream<SessionRequest, SessionResponse>,
    private readonly health: MeshHealth,
    private readonly vmChanges: VmChangesByHost,
  ) {
    this.log = d.logger.child({ component: "session", peer: call.getPeer() });
  }

  /** The agent takes SessionResponse.batch (Hello.batches). */
  private batches = false;
  /** Messages waiting for the session's write in flight (batches only). */
  private outbox: { m: SessionResponse; written?: () => void }[] = [];
  private writing = false;
  private flushSoon = false;

  /**
   * Sends a message; `written` is called once the stream took it. The stream
   * writes one message at a time, each after the last one's write completed
   * (an event-loop turn on a busy coordinator): to an agent that takes
   * batches, what comes meanwhile (and in the same turn) goes out as one
   * message, small kinds together (nextWrite), large ones alone.
   */
  private send(m: SessionResponse, written?: () => void): void {
    if (this.closed) return;
    if (!this.batches) {
      this.call.write(m, written);
      return;
    }
    this.outbox.push({ m, ...(written ? { written } : {}) });
    if (this.writing || this.flushSoon) return;
    this.flushSoon = true;
    setImmediate(() => {
      this.flushSoon = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.closed || this.writing || this.outbox.length === 0) return;
    const items = nextWrite(this.outbox);
    this.writing = true;
    const msg: SessionResponse = items.length === 1 ? items[0]!.m : { kind: { $case: "batch", value: { items: items.map((i) => i.m) } } };
    this.call.write(msg, () => {
      this.writing = false;
      for (const i of items) i.written?.();
      this.flush();
    });
  }

  private fail(e: unknown): void {
    if (this.closed) return;
    this.closed = true;
    this.cleanup();
    this.call.emit("error", Object.assign(new Error("session failed"), toServiceError(e)));
  }

  async run(): Promise<void> {
    try {
      this.identity = await authenticateAgent(this.d, this.call);
    } catch (e) {
      this.fail(e);
      return;
    }
    this.call.on("data", (m: SessionRequest) => {
      // Heartbeats renew the host's lease: they do not queue behind status reports (with etcd
      // slow, a burst of reports would let the lease expire and the host look lost).
      if (m.kind?.$case === "heartbeat" && this.started) {
        const seq = m.kind.value.sequence;
        this.beats = this.beats.then(() => this.heartbeat(seq)).catch((e) => this.fail(e));
        return;
      }
      // Status reports in a row are applied together (VmRepo.reportStatuses); any other
      // message closes the batch, so the order of everything is kept.
      if (m.kind?.$case === "vmStatus" && !m.kind.value.destroyed && this.started) {
        if (this.statusBatch) {
          this.statusBatch.push(m.kind.value);
          return;
        }
        const batch = [m.kind.value];
        this.statusBatch = batch;
        this.work = this.work
          .then(() => {
            if (this.statusBatch === batch) this.statusBatch = undefined;
            return this.applyStatuses(batch);
          })
          .catch((e) => this.fail(e));
        return;
      }
      this.statusBatch = undefined;
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

  /** Ends the session from outside (the host was removed). */
  kick(e: NoidError): void {
    this.fail(e);
  }

  /** Forgets the session: no more deltas, and every exec in flight ends with an error. */
  private cleanup(): void {
    this.untrack?.();
    this.unsub?.();
    this.unsubMesh?.();
    this.unsubPorts?.();
    if (this.portsTimer) clearTimeout(this.portsTimer);
    if (this.hostId) this.d.sessions.delete(this.hostId, this);
    if (this.hostId) void this.health.update(this.hostId, undefined).catch((err) => this.log.warn({ err }, "clearing host condition failed"));
    for (const [execId, f] of this.execs) f({ execId, output: undefined, error: "the host's agent disconnected" });
    this.execs.clear();
    for (const [opId, f] of this.checkpoints) f(disconnected(opId));
    this.checkpoints.clear();
    for (const [opId, f] of this.migrations) f({ ...disconnected(opId), url: "" });
    this.migrations.clear();
    for (const [streamId, f] of this.streams) f({ streamId, data: Buffer.alloc(0), end: true, error: "the host's agent disconnected", errorCode: "UNAVAILABLE" });
    this.streams.clear();
  }

  stream(open: AgentStreamOpen, onOutput: (o: AgentStreamOutput) => void): StreamHandle {
    if (this.closed) {
      onOutput({ streamId: open.streamId, data: Buffer.alloc(0), end: true, error: "the host's agent disconnected", errorCode: "UNAVAILABLE" });
      return { input: () => undefined };
    }
    this.streams.set(open.streamId, onOutput);
    this.send({ kind: { $case: "streamOpen", value: open } });
    return {
      input: (kind) => {
        if (!this.streams.has(open.streamId)) return;
        if (kind.$case === "close") this.streams.delete(open.streamId);
        this.send({ kind: { $case: "streamInput", value: { streamId: open.streamId, kind } } });
      },
    };
  }

  checkpoint(cmd: AgentCheckpointCommand): Promise<AgentCheckpointResult> {
    if (this.closed) return Promise.resolve(disconnected(cmd.opId));
    return new Promise((resolve) => {
      this.checkpoints.set(cmd.opId, resolve);
      this.send({ kind: { $case: "checkpoint", value: cmd } });
    });
  }

  migration(cmd: AgentMigrationCommand): Promise<AgentMigrationResult> {
    if (this.closed) return Promise.resolve({ ...disconnected(cmd.opId), url: "" });
    return new Promise((resolve) => {
      this.migrations.set(cmd.opId, resolve);
      this.send({ kind: { $case: "migration", value: cmd } });
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
    if (k.$case === "hello") {
      this.batches = k.value.batches;
      return this.hello(k.value.hostId, k.value.meshDeltas);
    }
    if (!this.hostId) throw new NoidError("FAILED_PRECONDITION", "send hello first");
    if (k.$case === "heartbeat") return this.heartbeat(k.value.sequence);
    if (k.$case === "execOutput") {
      const f = this.execs.get(k.value.execId);
      if (!f) return;
      const o = k.value.output?.kind;
      if (k.value.error || o?.$case === "exit") this.execs.delete(k.value.execId);
      f(k.value);
      return;
    }
    if (k.$case === "streamOutput") {
      const f = this.streams.get(k.value.streamId);
      if (!f) return;
      if (k.value.end) this.streams.delete(k.value.streamId);
      f(k.value);
      return;
    }
    if (k.$case === "capabilities") {
      const caps = k.value.drivers
        .filter((c) => (DRIVERS as readonly string[]).includes(c.driver))
        .slice(0, 16)
        .map((c) => ({ driver: c.driver, capabilities: c.capabilities.filter((n) => /^[a-zA-Z]{1,32}$/.test(n)).slice(0, 32) }));
      await this.d.hosts.setCapabilities(this.hostId, caps);
      return;
    }
    if (k.$case === "checkpointResult") {
      const f = this.checkpoints.get(k.value.opId);
      this.checkpoints.delete(k.value.opId);
      f?.(k.value);
      return;
    }
    if (k.$case === "migrationResult") {
      const f = this.migrations.get(k.value.opId);
      this.migrations.delete(k.value.opId);
      f?.(k.value);
      return;
    }
    if (k.$case === "posture") {
      validatePosture(k.value, "posture");
      await this.d.hosts.setPosture(this.hostId, k.value);
      return;
    }
    if (k.$case === "usage") {
      // A report the coordinator cannot take is dropped (the session and the host's VMs are worth more).
      try {
        this.d.usage?.set(this.hostId, k.value);
      } catch (e) {
        this.log.warn({ hostId: this.hostId, err: e instanceof Error ? e.message : String(e) }, "usage report refused");
      }
      return;
    }
    if (k.$case === "portReport") {
      await this.d.ports?.report(this.hostId, k.value);
      return;
    }
    if (k.$case === "meshResync") {
      // The agent could not apply a delta: the next update is a full snapshot.
      this.log.warn({ hostId: this.hostId, have: k.value.haveVersion, sent: this.meshVersion, reason: k.value.reason.slice(0, 200) }, "mesh resync asked");
      this.meshSent = undefined;
      this.lastMesh = "";
      this.sendMesh();
      return;
    }
    if (k.$case === "hostCondition") {
      const c = k.value;
      const peers = c.unreachablePeers.filter((p) => /^[0-9a-f]{16}$/.test(p)).slice(0, 1000);
      await this.health.update(this.hostId, { meshError: c.meshError.slice(0, 300), unreachablePeers: peers });
      return;
    }
    if (k.$case === "securityEvent") {
      const e = k.value;
      try {
        checkSecurityEvent(e);
      } catch (err) {
        this.log.warn({ hostId: this.hostId, err }, "ignored malformed security event");
        return;
      }
      const host = this.d.cluster.hostById(this.hostId);
      let owner = "";
      if (e.vmId) {
        // A host speaks only for its own VMs.
        const vm = this.d.cluster.vmEntry(e.vmId)?.value;
        if (vm?.status?.hostId !== this.hostId) {
          this.log.warn({ hostId: this.hostId, vmId: e.vmId }, "ignored security event for a VM not on this host");
          return;
        }
        owner = vm.owner;
      }
      this.log.warn({ hostId: this.hostId, vmId: e.vmId, kind: e.kind, count: e.count }, "security event");
      await this.d.security?.record({
        hostId: this.hostId,
        hostName: host?.name ?? "",
        vmId: e.vmId,
        owner,
        kind: e.kind,
        count: Number(e.count),
        detail: e.detail,
      });
      return;
    }
    if (k.$case === "vmStatus") {
      const r = k.value;
      // A host reports only VMs assigned to it. One assigned elsewhere that this
      // session was never told about is an attempt on another host's VM.
      const assignedTo = this.d.cluster.vms.get(keys.vm(r.vmId))?.value.status?.hostId;
      if (assignedTo !== undefined && assignedTo !== this.hostId && !this.known.has(r.vmId)) {
        // A host back from a loss removes what was rescheduled away and says so: nothing to apply.
        if (r.destroyed) return;
        throw denied(`VM ${r.vmId} is not assigned to this host`);
      }
      if (r.destroyed) {
        if ((await this.d.vms.finalizeDestroy(r.vmId, this.hostId)) === "kept") {
          // The agent removed a VM it should run (its view was stale): it gets the VM again.
          const vm = this.d.cluster.vms.get(keys.vm(r.vmId))?.value;
          this.log.warn({ hostId: this.hostId, vmId: r.vmId }, "agent removed a VM it should run; sending it again");
          if (vm) this.send({ kind: { $case: "vm", value: withEffectiveHostLoss(vm, this.hostLoss) } });
        }
      } else {
        try {
          await this.d.vms.reportStatus(this.hostId, { vmId: r.vmId, phase: r.phase, reason: r.reason, ip: r.ip, mac: r.mac }, this.fence);
        } catch (e) {
          // A host may only report its own VMs; a stale report (the VM moved) is dropped, not applied.
          if (!(e instanceof NoidError && e.code === "PERMISSION_DENIED")) throw e;
          this.log.warn({ hostId: this.hostId, vmId: r.vmId }, "ignored status report for a VM not assigned to this host");
        }
      }
    }
  }

  private async applyStatuses(reports: VmStatusReport[]): Promise<void> {
    for (const r of reports) {
      // A host reports only VMs assigned to it (see vmStatus in onMessage).
      const assignedTo = this.d.cluster.vms.get(keys.vm(r.vmId))?.value.status?.hostId;
      if (assignedTo !== undefined && assignedTo !== this.hostId && !this.known.has(r.vmId)) throw denied(`VM ${r.vmId} is not assigned to this host`);
    }
    const refused = await this.d.vms.reportStatuses(
      this.hostId,
      reports.map((r) => ({ vmId: r.vmId, phase: r.phase, reason: r.reason, ip: r.ip, mac: r.mac })),
      this.fence,
    );
    for (const vmId of refused) this.log.warn({ hostId: this.hostId, vmId }, "ignored status report for a VM not assigned to this host");
  }

  private async heartbeat(sequence: number): Promise<void> {
    // A certificate revoked (host removed, maybe through another coordinator) ends the session.
    if (this.identity?.kind === "cert" && (await this.d.pki!.ids.isRevoked(this.identity.serial))) {
      throw new AuthFailure("bad_host_cert", "host certificate is revoked");
    }
    let renewed = false;
    try {
      await this.lease!.keepAliveOnce();
      renewed = true;
    } catch (err) {
      // etcd slow or unreachable: the lease may well be alive. No ack (the agent counts
      // toward fencing from its last ack); the next heartbeat tries again. Taking a new
      // lease and resending the snapshot here made an overloaded coordinator work harder.
      if (!(err instanceof NoidError && err.code === "NOT_FOUND")) {
        this.log.debug({ hostId: this.hostId, err }, "lease renewal failed; heartbeat not acknowledged");
        return;
      }
      // The lease expired while we were away: take a new one. Meanwhile the host was
      // unreachable: its VMs were marked UNKNOWN and some may have moved. A new snapshot
      // tells the agent which are still its own and makes it report their state again.
      // Only if no other session has marked the host alive since: this may be a session the
      // agent has left (its heartbeats were queued here while it reconnected elsewhere), and
      // its new key would then replace the live session's and expire with this lease,
      // leaving the host unreachable while its agent is answered (chaos suite, under load).
      const lease = await this.d.store.grantLease(this.d.leaseTtlSeconds);
      const rev = await this.d.hosts.markAliveIfAbsent(this.hostId!, lease);
      if (rev === undefined) {
        await lease.revoke().catch(() => undefined);
        throw supersededSession(this.hostId!);
      }
      this.lease = lease;
      this.aliveRevision = rev;
      this.deltas ??= [];
      this.sendSnapshot(await this.currentVms());
    }
    if (renewed) this.checkStillAlive();
    this.send({ kind: { $case: "heartbeatAck", value: { sequence } } });
  }

  /**
   * After a renewal: the host's liveness key must still be the one this session
   * wrote (the informer, once it has caught up with that write, says). Another
   * revision means another session marked the host alive since: this one is
   * left over and ends (its agent, if it still uses it, reconnects and marks
   * the host alive again).
   */
  private checkStillAlive(): void {
    const alive = this.d.cluster.alive;
    if (alive.revision < this.aliveRevision) return;
    const e = alive.get(keys.alive(this.hostId!));
    // Absent while our lease lives: the key was another lease's (a left-over session's) or the
    // host was removed. Either way this session no longer keeps the host alive: it ends, and
    // the agent's next session marks the host alive again (or learns it was removed).
    if (e?.modRevision !== this.aliveRevision) throw supersededSession(this.hostId!);
  }

  private async hello(hostId: string, meshDeltas: boolean): Promise<void> {
    if (this.hostId) throw new NoidError("FAILED_PRECONDITION", "hello sent twice");
    if (!/^[0-9a-f]{16}$/.test(hostId)) throw invalid("hello.host_id", "is not a host id");
    const host = await this.d.hosts.get(hostId);
    if (!host) throw new NoidError("NOT_FOUND", `host ${hostId} is not registered; register first`);
    mayActAs(this.identity!, host.host.name);
    this.hostId = hostId;
    this.meshDeltas = meshDeltas;
    this.untrack = this.d.hostSessions.add(host.host.name, this);
    this.lease = await this.d.store.grantLease(this.d.leaseTtlSeconds);
    this.aliveRevision = await this.d.hosts.markAlive(hostId, this.lease);
    this.log.info({ host: host.host.name, hostId }, "session started");
    this.d.sessions.set(hostId, this);
    // Subscribe before the snapshot so nothing falls between them (deltas wait
    // until the snapshot is out); the agent treats a VM it already has as an update.
    this.deltas = [];
    this.unsub = this.vmChanges.subscribe(hostId, (ch) => {
      const now = ch.type === "put" ? ch.entry.value : undefined;
      const before = ch.prev?.value;
      const mine = (v?: Vm) => v?.status?.hostId === hostId;
      if (now && mine(now)) {
        this.known.add(now.id);
        this.sendDelta({ kind: { $case: "vm", value: withEffectiveHostLoss(now, this.hostLoss) } });
      } else if (mine(before)) this.sendDelta({ kind: { $case: "vmRemoved", value: { vmId: before!.id } } });
    });
    this.sendSnapshot(await this.currentVms());
    this.started = true;
    // The mesh view: sent now and again whenever it changes (the cluster
    // coalesces changes for all sessions; sent only when different).
    this.sendMesh();
    this.unsubMesh = this.d.cluster.onMeshChange((c) => {
      // A VM placed in a network this host neither carried in its last view nor carries now changes nothing for it.
      if (!c.all && !this.meshTouches(c.networks)) return;
      this.sendMesh();
    });
    // Ports: the same way (its own snapshot, sent whole when it changes).
    if (this.d.ports) {
      this.sendPorts();
      this.unsubPorts = this.d.ports.onChange(() => {
        if (this.portsTimer || this.closed) return;
        this.portsTimer = setTimeout(() => {
          this.portsTimer = undefined;
          this.sendPorts();
        }, PORTS_COALESCE_MS);
      });
    }
  }

  private sendPorts(): void {
    if (this.closed || !this.d.ports) return;
    const snap = this.d.ports.snapshotFor(this.hostId);
    const key = Buffer.from(PortSnapshot.encode(snap).finish()).toString("base64");
    if (key === this.lastPorts) return;
    this.lastPorts = key;
    this.send({ kind: { $case: "ports", value: snap } });
  }

  private get hostLoss(): HostLossDefaults {
    return this.d.hostLoss ?? DEFAULT_HOST_LOSS;
  }

  /**
   * The host's VMs as of now: the informer's copy, less any VM whose assignment
   * etcd does not hold. Read after the host's liveness key was written, this
   * never includes a VM the host-loss controller rescheduled before (its
   * transaction requires the key absent), even when the informer lags; one
   * assigned after the read arrives as a delta (held back until the snapshot).
   */
  private async currentVms(): Promise<Vm[]> {
    const assigned = new Set((await this.d.store.list(keys.assignPrefix(this.hostId))).kvs.map((kv) => lastSegment(kv.key)));
    return this.d.cluster.vmsOnHost(this.hostId).filter((v) => assigned.has(v.id));
  }

  /** Sends the snapshot, then the deltas held back while it was being read. */
  private sendSnapshot(vms: Vm[]): void {
    for (const vm of vms) this.known.add(vm.id);
    this.send({ kind: { $case: "snapshot", value: { vms: vms.map((v) => withEffectiveHostLoss(v, this.hostLoss)) } } });
    const held = this.deltas ?? [];
    this.deltas = undefined;
    for (const m of held) this.send(m);
  }

  private sendDelta(m: SessionResponse): void {
    if (this.deltas) this.deltas.push(m);
    else this.send(m);
  }

  /** True when one of `changed` is a network this host carried in its last view or carries now. */
  private meshTouches(changed: ReadonlySet<string>): boolean {
    for (const id of this.meshNets) if (changed.has(id)) return true;
    for (const id of this.d.cluster.meshNetworksOf(this.hostId)) if (changed.has(id)) return true;
    return false;
  }

  /**
   * Sends the host's mesh view if it changed. At most one snapshot is on its
   * way per session (until the stream took it); changes meanwhile are sent
   * as one, the latest, after it: a slow host gets fewer snapshots instead
   * of a growing queue of outdated ones in the coordinator's memory. An agent
   * that takes deltas gets a full snapshot first (and after a resync), then
   * only what changed since the last update sent (numbered, so it can tell
   * a gap); others get the full snapshot every time.
   */
  private sendMesh(): void {
    if (this.closed) return;
    if (this.meshInFlight) {
      this.meshAgain = true;
      return;
    }
    const { snapshot: mesh, key, networks } = this.d.cluster.meshWithKey(this.hostId, this.d.meshPrefixLen);
    if (key === this.lastMesh) return;
    this.lastMesh = key;
    this.meshNets = networks;
    let msg: SessionResponse;
    if (!this.meshDeltas) msg = { kind: { $case: "mesh", value: mesh } };
    else {
      const base = this.meshSent;
      const delta = base ? { ...this.d.cluster.meshDiff(base, mesh), baseVersion: this.meshVersion } : undefined;
      if (delta && emptyDelta(delta) && delta.meshPrefixLen === base!.meshPrefixLen) return;
      this.meshSent = mesh;
      const version = ++this.meshVersion;
      msg = { kind: { $case: "meshUpdate", value: { version, kind: delta ? { $case: "delta", value: delta } : { $case: "full", value: mesh } } } };
    }
    this.meshInFlight = true;
    this.send(msg, () => {
      this.meshInFlight = false;
      if (this.meshAgain) {
        this.meshAgain = false;
        this.sendMesh();
      }
    });
  }
}

/** Messages small enough to share a batch; the rest (snapshots, full mesh views, ports, commands, stream data) go alone. */
function batchable(m: SessionResponse): boolean {
  const k = m.kind;
  if (!k) return false;
  if (k.$case === "meshUpdate") return k.value.kind?.$case === "delta";
  return k.$case === "vm" || k.$case === "vmRemoved" || k.$case === "heartbeatAck";
}

const MAX_BATCH = 128;

/** Takes the next write off the outbox, in order: one message that goes alone, or a run of batchable ones. */
export function nextWrite<T extends { m: SessionResponse }>(outbox: T[]): T[] {
  if (!batchable(outbox[0]!.m)) return outbox.splice(0, 1);
  let n = 1;
  while (n < outbox.length && n < MAX_BATCH && batchable(outbox[n]!.m)) n++;
  return outbox.splice(0, n);
}


function disconnected(opId: string): AgentCheckpointResult {
  return { opId, error: "the host's agent disconnected", errorCode: "UNAVAILABLE", driver: "", sizeBytes: 0, sha256: "" };
}
