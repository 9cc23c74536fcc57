// NoidClient: the typed face of the coordinator's public services. Every unary
// call gets the bearer token, a per-attempt deadline and the retry policy for
// its kind (read or mutation); responses are unwrapped to the message callers
// want (a Vm, a Vm[], ...).
import type { GetHostMeshResponse, MeshServiceClient } from "../gen/noid/v1/mesh.js";
import { Metadata, type CallOptions, type ClientUnaryCall, type ServiceError } from "@grpc/grpc-js";
import type { AuditEvent, AuditServiceClient, VerifyAuditChainResponse } from "../gen/noid/v1/audit.js";
import type { EnrollTotpResponse, LoginResponse, SshKey, User, UserServiceClient } from "../gen/noid/v1/user.js";
import type {
  AuthServiceClient,
  CreateTokenResponse,
  Role,
  RotateTokenResponse,
  Token,
  WhoAmIResponse,
} from "../gen/noid/v1/auth.js";
import type { CreateJoinTokenResponse, DrainHostResponse, Host, HostServiceClient, HostUsage, RemoveHostResponse } from "../gen/noid/v1/host.js";
import type { EgressPolicy, Network, NetworkServiceClient } from "../gen/noid/v1/network.js";
import { VmSpec, type Vm, type VmServiceClient, type WatchVmsResponse, VmEventType } from "../gen/noid/v1/vm.js";
import type { ExecResponse, ExecServiceClient } from "../gen/noid/v1/exec.js";
import type { Event, EventServiceClient } from "../gen/noid/v1/event.js";
import type { Checkpoint, CheckpointServiceClient } from "../gen/noid/v1/checkpoint.js";
import type { HttpRoute, ListPortsResponse, PortMapping, PortServiceClient } from "../gen/noid/v1/port.js";
import type { ConsoleResponse, ConsoleServiceClient } from "../gen/noid/v1/console.js";
import type { MigrateVmResponse, MigrationServiceClient } from "../gen/noid/v1/migration.js";
import { NoidApiError, toApiError, type CallKind } from "./errors.js";
import { withRetry, type RetryDeps, type RetryPolicy } from "./retry.js";
import { iterateStream } from "./watch.js";

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

export interface ServiceClients {
  vm: VmServiceClient;
  host: HostServiceClient;
  network: NetworkServiceClient;
  auth: AuthServiceClient;
  audit: AuditServiceClient;
  exec: ExecServiceClient;
  user: UserServiceClient;
  event: EventServiceClient;
  checkpoint: CheckpointServiceClient;
  mesh: MeshServiceClient;
  migration: MigrationServiceClient;
  port: PortServiceClient;
  console: ConsoleServiceClient;
}

/** An attached serial console (console()). */
export interface ConsoleSession {
  /** Sends bytes to the console, as typed. */
  write(chunk: string | Buffer): void;
  /** Detaches (the VM runs on). */
  close(): void;
  /** Resolves when the console closed (detached, or the VM stopped); rejects with why it could not attach. */
  readonly closed: Promise<void>;
}

export interface EventFilterOpts {
  /** VM id or name. */
  vm?: string;
  /** Host id or name. */
  host?: string;
  /** Exact kind (vm.phase) or a dotted prefix (security, host). */
  kind?: string;
  since?: Date;
}

export interface SpawnOpts extends OwnerOpt {
  /** Variables for this command only; the server never stores or logs their values. */
  env?: Record<string, string>;
  /** The agent kills the command after this long (TERM, then KILL); 0: the server default (300 s). */
  timeoutSeconds?: number;
  /** Called with output as it arrives. */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Also collect output into the result (default true). */
  collect?: boolean;
  /** Keep the command's stdin open for write()/end(); otherwise it reads nothing. */
  stdin?: boolean;
  /** Aborting cancels the call, which kills the command. */
  signal?: AbortSignal;
}

export interface ExecOpts extends Omit<SpawnOpts, "stdin"> {
  /** Sent to the command's stdin, then end of input. */
  stdin?: string | Buffer | AsyncIterable<string | Buffer | Uint8Array>;
}

export type ExecSignalName = "INT" | "TERM" | "KILL" | "HUP" | "QUIT";

/** A command started with spawn(). */
export interface ExecSession {
  write(chunk: string | Buffer): void;
  /** End of stdin. */
  end(): void;
  /** Sends a signal to the command (default TERM). */
  kill(signal?: ExecSignalName): void;
  /** Drops the call; the agent kills the command. */
  cancel(): void;
  readonly result: Promise<ExecResult>;
}

export interface ExecResult {
  stdout: Buffer;
  stderr: Buffer;
  /** 128+N when killed by signal N; 124 when it timed out. */
  exitCode: number;
  timedOut: boolean;
  /** The signal that ended the command ("INT", ...), or "". */
  signal: string;
}

export interface ClientSettings {
  token?: string;
  deadlineMs: number;
  policy: RetryPolicy;
  retryDeps?: RetryDeps;
}

/** A VM named by the caller's name for it, or by id. */
export type VmRef = string | { id: string };

export interface OwnerOpt {
  /** Admins may act on another user's VMs. */
  owner?: string;
}

export class NoidClient {
  readonly #c: ServiceClients;
  readonly #s: ClientSettings;

  constructor(clients: ServiceClients, settings: ClientSettings) {
    this.#c = clients;
    this.#s = settings;
  }

  // ---- VMs ----

  async createVm(name: string, spec: Partial<VmSpec> = {}): Promise<Vm> {
    const req = { name, spec: VmSpec.fromPartial(spec) };
    return need(await this.#unary("CreateVm", "mutation", this.#c.vm.createVm.bind(this.#c.vm), req), "vm", "CreateVm");
  }

  async getVm(ref: VmRef, opts: OwnerOpt = {}): Promise<Vm> {
    const res = await this.#unary("GetVm", "read", this.#c.vm.getVm.bind(this.#c.vm), { ...vmRef(ref), owner: opts.owner ?? "" });
    return need(res, "vm", "GetVm");
  }

  async listVms(opts: { owner?: string; host?: string } = {}): Promise<Vm[]> {
    const req = { owner: opts.owner ?? "", host: opts.host ?? "" };
    return (await this.#unary("ListVms", "read", this.#c.vm.listVms.bind(this.#c.vm), req)).vms;
  }

  async destroyVm(ref: VmRef, opts: OwnerOpt = {}): Promise<Vm> {
    const req = { ...vmRef(ref), owner: opts.owner ?? "" };
    return need(await this.#unary("DestroyVm", "mutation", this.#c.vm.destroyVm.bind(this.#c.vm), req), "vm", "DestroyVm");
  }

  async startVm(ref: VmRef, opts: OwnerOpt = {}): Promise<Vm> {
    const req = { ...vmRef(ref), owner: opts.owner ?? "" };
    return need(await this.#unary("StartVm", "mutation", this.#c.vm.startVm.bind(this.#c.vm), req), "vm", "StartVm");
  }

  /** Freezes a running VM (its driver must have the pause capability); the VM shows PAUSED once its host did it. */
  async pauseVm(ref: VmRef, opts: OwnerOpt = {}): Promise<Vm> {
    const req = { ...vmRef(ref), owner: opts.owner ?? "" };
    return need(await this.#unary("PauseVm", "mutation", this.#c.vm.pauseVm.bind(this.#c.vm), req), "vm", "PauseVm");
  }

  /** Continues a paused VM. */
  async resumeVm(ref: VmRef, opts: OwnerOpt = {}): Promise<Vm> {
    const req = { ...vmRef(ref), owner: opts.owner ?? "" };
    return need(await this.#unary("ResumeVm", "mutation", this.#c.vm.resumeVm.bind(this.#c.vm), req), "vm", "ResumeVm");
  }

  /** Stops a running or paused VM and starts it again; the VM has restart_pending set until its host stopped it. */
  async restartVm(ref: VmRef, opts: OwnerOpt = {}): Promise<Vm> {
    const req = { ...vmRef(ref), owner: opts.owner ?? "" };
    return need(await this.#unary("RestartVm", "mutation", this.#c.vm.restartVm.bind(this.#c.vm), req), "vm", "RestartVm");
  }

  // ---- Console and logs ----

  /** Attaches to the VM's serial console; `onData` receives what the guest prints. Not retried. */
  console(ref: VmRef, onData: (chunk: Buffer) => void, opts: OwnerOpt = {}): ConsoleSession {
    const call = this.#c.console.console(this.#metadata(), {});
    let ended = false;
    const closed = new Promise<void>((resolve, reject) => {
      call.on("data", (r: ConsoleResponse) => onData(Buffer.from(r.output)));
      call.on("error", (e: ServiceError) => (ended && e.code === 1 ? resolve() : reject(toApiError(e, "mutation", "Console"))));
      call.on("end", () => resolve());
    });
    closed.catch(() => undefined);
    closed.then(
      () => (ended = true),
      () => (ended = true),
    );
    call.write({ kind: { $case: "start", value: { ...vmRef(ref), owner: opts.owner ?? "" } } });
    return {
      write: (chunk) => {
        if (!ended) call.write({ kind: { $case: "input", value: typeof chunk === "string" ? Buffer.from(chunk) : chunk } });
      },
      close: () => {
        if (ended) return;
        ended = true;
        call.end();
      },
      closed,
    };
  }

  /** The VM's console log: the last `tail` lines (all when 0), then with `follow` what is appended, until `signal` aborts. */
  async *vmLogs(ref: VmRef, opts: OwnerOpt & { tail?: number; follow?: boolean; signal?: AbortSignal } = {}): AsyncIterable<Buffer> {
    const req = { ...vmRef(ref), owner: opts.owner ?? "", tail: opts.tail ?? 0, follow: opts.follow ?? false };
    const deadline = opts.follow ? {} : { deadline: Date.now() + this.#s.deadlineMs };
    for await (const r of iterateStream(() => this.#c.console.vmLogs(req, this.#metadata(), deadline), "VmLogs", opts.signal)) {
      yield Buffer.from(r.data);
    }
  }

  /** A host agent's recent log lines, oldest first (admins). */
  async hostLogs(host: string, opts: { tail?: number } = {}): Promise<string[]> {
    const req = { host, tail: opts.tail ?? 0 };
    return (await this.#unary("HostLogs", "read", this.#c.console.hostLogs.bind(this.#c.console), req)).lines;
  }

  // ---- Checkpoints ----
  // Saving and restoring take as long as the VM's memory takes to write or load: these calls
  // get a deadline of their own (default 10 minutes) and are never retried (not idempotent).

  /** Saves a running VM's state as checkpoint `checkpoint`; `key` (32 bytes) encrypts it with AES-256-GCM. */
  async checkpointVm(vm: string, checkpoint: string, opts: OwnerOpt & { key?: Uint8Array; deadlineMs?: number } = {}): Promise<Checkpoint> {
    const req = { vm, name: checkpoint, owner: opts.owner ?? "", key: Buffer.from(opts.key ?? []) };
    const res = await this.#unary("CreateCheckpoint", "mutation", this.#c.checkpoint.createCheckpoint.bind(this.#c.checkpoint), req, { retries: 0, deadlineMs: opts.deadlineMs ?? 600_000 });
    return need(res, "checkpoint", "CreateCheckpoint");
  }

  async listCheckpoints(vm: string, opts: OwnerOpt = {}): Promise<Checkpoint[]> {
    return (await this.#unary("ListCheckpoints", "read", this.#c.checkpoint.listCheckpoints.bind(this.#c.checkpoint), { vm, owner: opts.owner ?? "" })).checkpoints;
  }

  /** Restores `vm` to checkpoint `checkpoint` in place (`force` if it runs), or as a new VM named `as`. */
  async restoreVm(
    vm: string,
    checkpoint: string,
    opts: OwnerOpt & { key?: Uint8Array; as?: string; force?: boolean; deadlineMs?: number } = {},
  ): Promise<Vm> {
    const req = { vm, name: checkpoint, owner: opts.owner ?? "", key: Buffer.from(opts.key ?? []), asName: opts.as ?? "", force: opts.force ?? false };
    const res = await this.#unary("RestoreCheckpoint", "mutation", this.#c.checkpoint.restoreCheckpoint.bind(this.#c.checkpoint), req, { retries: 0, deadlineMs: opts.deadlineMs ?? 600_000 });
    return need(res, "vm", "RestoreCheckpoint");
  }

  // ---- Ports ----

  /**
   * Exposes a VM's port on its host: `spec` is "HOST:VM/PROTO" ("8080:80/tcp", checked by the
   * server: ranges are refused) or the parts. Host ports below 1024 need an admin.
   */
  async exposePort(vm: string, spec: string | { hostPort: number; vmPort?: number; protocol?: "tcp" | "udp" }, opts: OwnerOpt = {}): Promise<PortMapping> {
    const req =
      typeof spec === "string"
        ? { vm, owner: opts.owner ?? "", spec, hostPort: 0, vmPort: 0, protocol: "", httpHost: "" }
        : { vm, owner: opts.owner ?? "", spec: "", hostPort: spec.hostPort, vmPort: spec.vmPort ?? spec.hostPort, protocol: spec.protocol ?? "tcp", httpHost: "" };
    return need(await this.#unary("ExposePort", "mutation", this.#c.port.exposePort.bind(this.#c.port), req, { retries: 0 }), "port", "ExposePort");
  }

  /** Routes HTTP requests for `hostname` at the ingress hosts to the VM's `port` (default 80). */
  async exposeHttp(vm: string, hostname: string, opts: OwnerOpt & { port?: number } = {}): Promise<HttpRoute> {
    const req = { vm, owner: opts.owner ?? "", spec: "", hostPort: 0, vmPort: opts.port ?? 80, protocol: "", httpHost: hostname };
    return need(await this.#unary("ExposePort", "mutation", this.#c.port.exposePort.bind(this.#c.port), req, { retries: 0 }), "route", "ExposePort");
  }

  /** Removes an exposed port: "8080/tcp" (or "8080") or the parts. */
  async unexposePort(vm: string, spec: string | { hostPort: number; protocol?: "tcp" | "udp" }, opts: OwnerOpt = {}): Promise<void> {
    const req =
      typeof spec === "string"
        ? { vm, owner: opts.owner ?? "", spec, hostPort: 0, protocol: "", httpHost: "" }
        : { vm, owner: opts.owner ?? "", spec: "", hostPort: spec.hostPort, protocol: spec.protocol ?? "tcp", httpHost: "" };
    await this.#unary("UnexposePort", "mutation", this.#c.port.unexposePort.bind(this.#c.port), req, { retries: 0 });
  }

  async unexposeHttp(vm: string, hostname: string, opts: OwnerOpt = {}): Promise<void> {
    const req = { vm, owner: opts.owner ?? "", spec: "", hostPort: 0, protocol: "", httpHost: hostname };
    await this.#unary("UnexposePort", "mutation", this.#c.port.unexposePort.bind(this.#c.port), req, { retries: 0 });
  }

  /** Exposed ports and HTTP routes: of one VM, or all of the caller's (admins: everyone's, or `owner`'s). */
  async listPorts(opts: OwnerOpt & { vm?: string } = {}): Promise<ListPortsResponse> {
    return this.#unary("ListPorts", "read", this.#c.port.listPorts.bind(this.#c.port), { vm: opts.vm ?? "", owner: opts.owner ?? "" });
  }

  /**
   * Moves a running VM to host `toHost` with its MAC, address and state (memory and disk):
   * it is paused, its state crosses the mesh, and it runs on from where it was. A failure
   * before the switch leaves it running where it was. Own deadline (default 10 minutes),
   * never retried.
   */
  async migrateVm(vm: string, toHost: string, opts: OwnerOpt & { deadlineMs?: number } = {}): Promise<MigrateVmResponse> {
    const req = { vm, toHost, owner: opts.owner ?? "" };
    return this.#unary("MigrateVm", "mutation", this.#c.migration.migrateVm.bind(this.#c.migration), req, { retries: 0, deadlineMs: opts.deadlineMs ?? 600_000 });
  }

  async stopVm(ref: VmRef, opts: OwnerOpt = {}): Promise<Vm> {
    const req = { ...vmRef(ref), owner: opts.owner ?? "" };
    return need(await this.#unary("StopVm", "mutation", this.#c.vm.stopVm.bind(this.#c.vm), req), "vm", "StopVm");
  }

  /**
   * Streams VM changes: first one SNAPSHOT event per existing VM, then PUT and
   * DELETED events. No deadline (it is meant to stay open); stop it with
   * `signal` or by leaving the loop.
   */
  watchVms(opts: { owner?: string; name?: string; signal?: AbortSignal } = {}): AsyncIterable<WatchVmsResponse> {
    const req = { owner: opts.owner ?? "", name: opts.name ?? "" };
    return iterateStream(() => this.#c.vm.watchVms(req, this.#metadata(), {}), "WatchVms", opts.signal);
  }

  /**
   * Resolves with the VM once `predicate` holds for it. Starts from the watch's
   * snapshot, so a VM already in the wanted state resolves at once. Fails with
   * NOT_FOUND if the VM is deleted first and DEADLINE_EXCEEDED after timeoutMs.
   */
  async waitForVm(
    name: string,
    predicate: (vm: Vm, event: VmEventType) => boolean,
    opts: { timeoutMs: number; owner?: string; signal?: AbortSignal; onEvent?: (ev: WatchVmsResponse) => void },
  ): Promise<Vm> {
    const ac = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, opts.timeoutMs);
    const onOuterAbort = (): void => ac.abort();
    opts.signal?.addEventListener("abort", onOuterAbort, { once: true });
    try {
      const stream = this.watchVms({ name, signal: ac.signal, ...(opts.owner ? { owner: opts.owner } : {}) });
      for await (const ev of stream) {
        if (!ev.vm || ev.vm.name !== name) continue;
        opts.onEvent?.(ev);
        if (predicate(ev.vm, ev.type)) return ev.vm;
        if (ev.type === VmEventType.VM_EVENT_TYPE_DELETED) {
          throw new NoidApiError("NOT_FOUND", `vm ${name} was deleted while waiting for it`);
        }
      }
      if (timedOut) throw new NoidApiError("DEADLINE_EXCEEDED", `timed out after ${opts.timeoutMs} ms waiting for vm ${name}`);
      if (opts.signal?.aborted) throw new NoidApiError("CANCELLED", `stopped waiting for vm ${name}`);
      throw new NoidApiError("UNAVAILABLE", `watch ended while waiting for vm ${name}`, { retryable: true });
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onOuterAbort);
      ac.abort();
    }
  }

  /**
   * Starts `argv` in the VM (through its host's agent) and returns at once: output streams to
   * onStdout/onStderr (and is collected into the result unless `collect` is false), stdin is
   * written with write()/end() when `stdin` is set, kill() sends a signal. Not retried: a
   * command may have side effects.
   */
  spawn(ref: VmRef, argv: string[], opts: SpawnOpts = {}): ExecSession {
    const call = this.#c.exec.exec(this.#metadata(), {});
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const collect = opts.collect ?? true;
    const onAbort = () => call.cancel();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    let ended = false;
    const result = new Promise<ExecResult>((resolve, reject) => {
      let exit: ExecResult | undefined;
      call.on("data", (r: ExecResponse) => {
        const k = r.kind;
        if (k?.$case === "stdout") {
          const b = Buffer.from(k.value);
          if (collect) out.push(b);
          opts.onStdout?.(b);
        } else if (k?.$case === "stderr") {
          const b = Buffer.from(k.value);
          if (collect) err.push(b);
          opts.onStderr?.(b);
        } else if (k?.$case === "exit") {
          exit = {
            stdout: Buffer.concat(out),
            stderr: Buffer.concat(err),
            exitCode: k.value.exitCode,
            timedOut: k.value.timedOut,
            signal: k.value.signal,
          };
        }
      });
      call.on("error", (e) => reject(toApiError(e, "mutation", "Exec")));
      call.on("end", () => (exit ? resolve(exit) : reject(new NoidApiError("UNAVAILABLE", "exec ended without an exit status", { retryable: false }))));
    }).finally(() => opts.signal?.removeEventListener("abort", onAbort));
    // Nobody may be awaiting yet; the caller sees the rejection through `result`.
    result.catch(() => undefined);
    call.write({
      kind: {
        $case: "start",
        value: {
          ...vmRef(ref),
          owner: opts.owner ?? "",
          argv,
          env: opts.env ?? {},
          timeoutSeconds: opts.timeoutSeconds ?? 0,
          stdin: opts.stdin ?? false,
        },
      },
    });
    // The call stays open for signals until the command ends (end of stdin is a message).
    let stdinOpen = opts.stdin ?? false;
    const done = () => {
      ended = true;
      call.end();
    };
    result.then(done, done);
    return {
      write: (chunk) => {
        if (!ended && stdinOpen) call.write({ kind: { $case: "stdin", value: typeof chunk === "string" ? Buffer.from(chunk) : chunk } });
      },
      end: () => {
        if (ended || !stdinOpen) return;
        stdinOpen = false;
        call.write({ kind: { $case: "stdinEof", value: true } });
      },
      kill: (sig = "TERM") => {
        if (!ended) call.write({ kind: { $case: "signal", value: sig } });
      },
      cancel: () => call.cancel(),
      result,
    };
  }

  /**
   * Runs `argv` in the VM and resolves with its output and exit code; `stdin` (a string, a
   * Buffer or a stream) is sent to the command. Not retried: a command may have side effects.
   */
  async exec(ref: VmRef, argv: string[], opts: ExecOpts = {}): Promise<ExecResult> {
    const { stdin, ...rest } = opts;
    const session = this.spawn(ref, argv, { ...rest, stdin: stdin !== undefined });
    if (stdin !== undefined) {
      if (typeof stdin === "string" || Buffer.isBuffer(stdin)) session.write(stdin);
      else for await (const chunk of stdin) session.write(typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array));
      session.end();
    }
    return session.result;
  }

  // ---- hosts ----

  async listHosts(): Promise<Host[]> {
    return (await this.#unary("ListHosts", "read", this.#c.host.listHosts.bind(this.#c.host), {})).hosts;
  }

  /** The mesh snapshot the coordinator sends host `name`'s agent (admins). */
  async getHostMesh(name: string): Promise<GetHostMeshResponse> {
    return this.#unary("GetHostMesh", "read", this.#c.mesh.getHostMesh.bind(this.#c.mesh), { host: name });
  }

  async getHost(name: string): Promise<Host> {
    return need(await this.#unary("GetHost", "read", this.#c.host.getHost.bind(this.#c.host), { name }), "host", "GetHost");
  }

  /** A host's NAT/firewall usage counters as its agent last sent them (admins; undefined when none arrived yet at the answering coordinator). */
  async getHostUsage(name: string): Promise<HostUsage | undefined> {
    return (await this.#unary("GetHost", "read", this.#c.host.getHost.bind(this.#c.host), { name })).usage;
  }

  async cordonHost(name: string): Promise<Host> {
    const res = await this.#unary("CordonHost", "mutation", this.#c.host.cordonHost.bind(this.#c.host), { name });
    return need(res, "host", "CordonHost");
  }

  async uncordonHost(name: string): Promise<Host> {
    const res = await this.#unary("UncordonHost", "mutation", this.#c.host.uncordonHost.bind(this.#c.host), { name });
    return need(res, "host", "UncordonHost");
  }

  /** Cordons the host and reschedules its unstarted VMs; says which moved and which remain. */
  async drainHost(name: string): Promise<DrainHostResponse> {
    return this.#unary("DrainHost", "mutation", this.#c.host.drainHost.bind(this.#c.host), { name });
  }

  /** A one-time token an agent joins with (admin only); `hostName` limits it to that host. */
  async createJoinToken(opts: { ttlSeconds: number; hostName?: string }): Promise<CreateJoinTokenResponse> {
    const req = { ttlSeconds: opts.ttlSeconds, hostName: opts.hostName ?? "" };
    return this.#unary("CreateJoinToken", "mutation", this.#c.host.createJoinToken.bind(this.#c.host), req);
  }

  /** Forgets a host without VMs and revokes its certificates (admin only). */
  async removeHost(name: string): Promise<RemoveHostResponse> {
    return this.#unary("RemoveHost", "mutation", this.#c.host.removeHost.bind(this.#c.host), { name });
  }

  // ---- networks ----

  async createNetwork(
    name: string,
    opts: { cidr: string; mode?: "wireguard" | "vxlan"; egress?: EgressPolicy; owner?: string },
  ): Promise<Network> {
    const res = await this.#unary("CreateNetwork", "mutation", this.#c.network.createNetwork.bind(this.#c.network), {
      name,
      cidr: opts.cidr,
      egress: opts.egress,
      mode: opts.mode ?? "",
      owner: opts.owner ?? "",
    });
    return need(res, "network", "CreateNetwork");
  }

  async getNetwork(name: string, opts: OwnerOpt = {}): Promise<Network> {
    const req = { name, owner: opts.owner ?? "" };
    return need(await this.#unary("GetNetwork", "read", this.#c.network.getNetwork.bind(this.#c.network), req), "network", "GetNetwork");
  }

  async listNetworks(opts: OwnerOpt = {}): Promise<Network[]> {
    const req = { owner: opts.owner ?? "" };
    return (await this.#unary("ListNetworks", "read", this.#c.network.listNetworks.bind(this.#c.network), req)).networks;
  }

  async deleteNetwork(name: string, opts: OwnerOpt = {}): Promise<void> {
    const req = { name, owner: opts.owner ?? "" };
    await this.#unary("DeleteNetwork", "mutation", this.#c.network.deleteNetwork.bind(this.#c.network), req);
  }

  // ---- tokens and identity ----

  /** Creates a token; the response carries its secret, which is never shown again. */
  async createToken(opts: { name: string; role: Role; user?: string; ttlSeconds?: number }): Promise<CreateTokenResponse> {
    const req = { name: opts.name, role: opts.role, user: opts.user ?? "", ttlSeconds: opts.ttlSeconds ?? 0 };
    return this.#unary("CreateToken", "mutation", this.#c.auth.createToken.bind(this.#c.auth), req);
  }

  async listTokens(): Promise<Token[]> {
    return (await this.#unary("ListTokens", "read", this.#c.auth.listTokens.bind(this.#c.auth), {})).tokens;
  }

  /** Revokes a token named by its name, or by id with `{ id }`. */
  async revokeToken(ref: string | { id: string }): Promise<void> {
    await this.#unary("RevokeToken", "mutation", this.#c.auth.revokeToken.bind(this.#c.auth), tokenRef(ref));
  }

  /** Replaces a token's secret; the response carries the new secret, once. */
  async rotateToken(ref: string | { id: string }): Promise<RotateTokenResponse> {
    return this.#unary("RotateToken", "mutation", this.#c.auth.rotateToken.bind(this.#c.auth), tokenRef(ref));
  }

  async whoAmI(): Promise<WhoAmIResponse> {
    return this.#unary("WhoAmI", "read", this.#c.auth.whoAmI.bind(this.#c.auth), {});
  }

  /** Audit events, newest first. */
  async listAuditEvents(opts: { limit?: number; user?: string; vm?: string; event?: string } = {}): Promise<AuditEvent[]> {
    const req = { limit: opts.limit ?? 0, user: opts.user ?? "", vm: opts.vm ?? "", event: opts.event ?? "" };
    return (await this.#unary("ListAuditEvents", "read", this.#c.audit.listAuditEvents.bind(this.#c.audit), req)).events;
  }

  /** Walks the audit log's hash chain on the server and reports the first broken link (admins). */
  async verifyAuditChain(): Promise<VerifyAuditChainResponse> {
    return this.#unary("VerifyAuditChain", "read", this.#c.audit.verifyAuditChain.bind(this.#c.audit), {});
  }

  /** Cluster events (VM lifecycle, hosts, failed logins, security), newest first. Non-admins see their own VMs' events. */
  async listEvents(opts: EventFilterOpts & { limit?: number } = {}): Promise<Event[]> {
    const req = { limit: opts.limit ?? 0, vm: opts.vm ?? "", host: opts.host ?? "", kind: opts.kind ?? "", since: opts.since };
    return (await this.#unary("ListEvents", "read", this.#c.event.listEvents.bind(this.#c.event), req)).events;
  }

  /**
   * Streams events as they are recorded (after replaying those since `since`,
   * when given). No deadline; stop it with `signal` or by leaving the loop.
   */
  async *watchEvents(opts: EventFilterOpts & { signal?: AbortSignal } = {}): AsyncIterable<Event> {
    const req = { vm: opts.vm ?? "", host: opts.host ?? "", kind: opts.kind ?? "", since: opts.since };
    for await (const r of iterateStream(() => this.#c.event.watchEvents(req, this.#metadata(), {}), "WatchEvents", opts.signal)) {
      if (r.event) yield r.event;
    }
  }

  // ---- users, login, SSH keys ----

  /**
   * Trades a user name, password and TOTP code for a session token (no token
   * needed). Not retried: a retried login could spend the same TOTP code twice.
   */
  async login(opts: { user: string; password: string; totpCode?: string }): Promise<LoginResponse> {
    const req = { user: opts.user, password: opts.password, totpCode: opts.totpCode ?? "" };
    return this.#unary("Login", "mutation", this.#c.user.login.bind(this.#c.user), req, { retries: 0 });
  }

  /** Creates a user (admins). The password is sent once and stored only as an argon2 hash. */
  async createUser(opts: { name: string; role: Role; password: string }): Promise<User> {
    const res = await this.#unary("CreateUser", "mutation", this.#c.user.createUser.bind(this.#c.user), opts);
    return need(res, "user", "CreateUser");
  }

  async listUsers(): Promise<User[]> {
    return (await this.#unary("ListUsers", "read", this.#c.user.listUsers.bind(this.#c.user), {})).users;
  }

  async deleteUser(name: string): Promise<void> {
    await this.#unary("DeleteUser", "mutation", this.#c.user.deleteUser.bind(this.#c.user), { name });
  }

  /** Changes a password: your own (give the current one) or, as an admin, anyone's. Ends that user's sessions. */
  async setPassword(opts: { user?: string; currentPassword?: string; newPassword: string }): Promise<void> {
    const req = { user: opts.user ?? "", currentPassword: opts.currentPassword ?? "", newPassword: opts.newPassword };
    await this.#unary("SetPassword", "mutation", this.#c.user.setPassword.bind(this.#c.user), req);
  }

  /** Replaces a password with a generated one (returned once) and ends that user's sessions. */
  async rotatePassword(user?: string): Promise<string> {
    return (await this.#unary("RotatePassword", "mutation", this.#c.user.rotatePassword.bind(this.#c.user), { user: user ?? "" })).password;
  }

  /** Starts TOTP enrollment: the otpauth:// URI and secret, shown once; confirm with confirmTotp. */
  async enrollTotp(user?: string): Promise<EnrollTotpResponse> {
    return this.#unary("EnrollTotp", "mutation", this.#c.user.enrollTotp.bind(this.#c.user), { user: user ?? "" });
  }

  async confirmTotp(code: string, user?: string): Promise<void> {
    await this.#unary("ConfirmTotp", "mutation", this.#c.user.confirmTotp.bind(this.#c.user), { user: user ?? "", code });
  }

  async addSshKey(publicKey: string, opts: { user?: string } = {}): Promise<SshKey> {
    const res = await this.#unary("AddSshKey", "mutation", this.#c.user.addSshKey.bind(this.#c.user), { user: opts.user ?? "", publicKey });
    return need(res, "key", "AddSshKey");
  }

  async listSshKeys(opts: { user?: string } = {}): Promise<SshKey[]> {
    return (await this.#unary("ListSshKeys", "read", this.#c.user.listSshKeys.bind(this.#c.user), { user: opts.user ?? "" })).keys;
  }

  async removeSshKey(fingerprint: string, opts: { user?: string } = {}): Promise<void> {
    await this.#unary("RemoveSshKey", "mutation", this.#c.user.removeSshKey.bind(this.#c.user), { user: opts.user ?? "", fingerprint });
  }

  /** Closes the shared channel; calls in flight fail with CANCELLED/UNAVAILABLE. */
  close(): void {
    // All service clients share the VM client's channel (see connect.ts).
    this.#c.vm.close();
  }

  // ---- plumbing ----

  #metadata(): Metadata {
    const md = new Metadata();
    if (this.#s.token) md.set("authorization", `Bearer ${this.#s.token}`);
    return md;
  }

  #unary<Req, Res>(what: string, kind: CallKind, method: UnaryMethod<Req, Res>, request: Req, override: { retries?: number; deadlineMs?: number } = {}): Promise<Res> {
    const once = (): Promise<Res> =>
      new Promise<Res>((resolve, reject) => {
        // The deadline is per attempt: a retry after a timeout gets a fresh one.
        const deadline = new Date(Date.now() + (override.deadlineMs ?? this.#s.deadlineMs));
        method(request, this.#metadata(), { deadline }, (err, res) => (err ? reject(err) : resolve(res)));
      });
    const policy = override.retries === undefined ? this.#s.policy : { ...this.#s.policy, retries: override.retries };
    return withRetry(what, kind, policy, once, this.#s.retryDeps);
  }
}

function vmRef(ref: VmRef): { name: string; id: string } {
  return typeof ref === "string" ? { name: ref, id: "" } : { name: "", id: ref.id };
}

function tokenRef(ref: string | { id: string }): { name: string; id: string } {
  return typeof ref === "string" ? { name: ref, id: "" } : { name: "", id: ref.id };
}

/** Unwraps a response's one message, treating its absence as a server bug. */
function need<R, K extends keyof R>(res: R, key: K, what: string): NonNullable<R[K]> {
  const v = res[key];
  if (v === undefined || v === null) throw new NoidApiError("INTERNAL", `${what}: server returned no ${String(key)}`);
  return v as NonNullable<R[K]>;
}
