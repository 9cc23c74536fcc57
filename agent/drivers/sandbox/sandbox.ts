// The sandbox driver: a "VM" is a network namespace with an init process (`sleep infinity`)
// and a veth pair whose host end lives in the agent's netns. No hypervisor needed, so it
// runs everywhere (CI, the lab) and exercises the same network plumbing as a real VM's TAP.
//
// The driver's "host" is the netns the agent runs in (or `netns` from the options, which
// lets a test drive a lab host from outside). VM namespaces are machine-wide names and
// carry the per-agent `nsPrefix`, so agents of one lab never collide.
import { appendFileSync, chmodSync, existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NoidError, during, notFound, precondition } from "../../../common/errors.js";
import {
  type Runner,
  type Spawner,
  isAlive,
  killProcess,
  processRef,
  run as defaultRun,
  spawnAttached,
  spawnDetached,
} from "../../../common/run.js";
import type {
  Capabilities,
  ExecOptions,
  ExecProcess,
  ExecResult,
  HypervisorDriver,
  SpawnExecOptions,
  VmCreateSpec,
  VmRuntime,
} from "../driver.js";
import { PWD_CARRIER, type LimitsProbe, applyCgroupPlan, describeLayout, cgroupPlan, inCgroupArgv, joinCgroups, killCgroups, probeLimits, removeCgroups } from "./cgroup.js";
import { cgroupName, hostPort, shortId, vmNetns } from "./names.js";
import { authorizedKeysFile } from "../ssh-keys.js";

/** The variable that tells a command run in a sandbox VM where its owner's SSH keys are. */
export const SANDBOX_KEYS_ENV = "AUTHORIZED_KEYS_FILE";
import { type Freezer, type FreezerProbe, ensureV1Freezer, freeze, isFrozen, probeFreezerV1, removeV1Freezer, thaw } from "./freezer.js";
import { RecordStore, type SandboxRecord } from "./records.js";

export interface SandboxOptions {
  /** Agent state directory; records go to <stateDir>/sandbox. */
  stateDir: string;
  /** Per-agent prefix of VM namespace names (e.g. the lab host's netns name). */
  nsPrefix: string;
  /** The netns that plays the host; default: the agent's own. */
  netns?: string;
  /** Where cgroup hierarchies are mounted (v2, or v1 per controller); default /sys/fs/cgroup. */
  cgroupRoot?: string;
  /** Parent cgroup (relative to each hierarchy's mount) of all VMs of this agent. */
  cgroupParent?: string;
  /** Most processes a VM may have at once (pids.max; default 1024). */
  pidsMax?: number;
  /** The cgroup v1 freezer hierarchy pause uses when the VM has no v2 cgroup (default /sys/fs/cgroup/freezer). */
  freezerRoot?: string;
  runner?: Runner;
  spawner?: Spawner;
}

const netnsPath = (name: string): string => `/run/netns/${name}`;
const EXEC_TIMEOUT_MS = 30_000;

export class SandboxDriver implements HypervisorDriver {
  readonly name = "sandbox";
  private readonly records: RecordStore;
  private readonly run: Runner;
  private readonly spawn: Spawner;
  private readonly cgroupParent: string;
  private readonly cgroup: LimitsProbe;
  private readonly freezerRoot: string;
  private readonly freezerV1: FreezerProbe;

  constructor(private readonly opts: SandboxOptions) {
    this.records = new RecordStore(join(opts.stateDir, "sandbox"));
    this.run = opts.runner ?? defaultRun;
    this.spawn = opts.spawner ?? spawnDetached;
    this.cgroupParent = opts.cgroupParent ?? `noid-${opts.nsPrefix}`;
    this.cgroup = probeLimits(opts.cgroupRoot ?? "/sys/fs/cgroup");
    this.freezerRoot = opts.freezerRoot ?? "/sys/fs/cgroup/freezer";
    this.freezerV1 = probeFreezerV1(this.freezerRoot);
  }

  capabilities(): Capabilities {
    return {
      exec: true,
      checkpoint: false,
      restore: false,
      resourceLimits: this.cgroup.ok,
      ...(this.cgroup.ok ? {} : { limitsReason: this.cgroup.reason }),
      // v2 cgroups (with limits) have cgroup.freeze; otherwise the v1 freezer is needed.
      pause: this.cgroup.ok || this.freezerV1.ok,
      ...(this.cgroup.ok || this.freezerV1.ok ? {} : { pauseReason: this.freezerV1.ok ? "" : this.freezerV1.reason }),
      console: false,
      logs: true,
    };
  }

  /** How limits are enforced here (cgroup v2, or the v1 fallback), for the agent's log. */
  limitsMechanism(): string | undefined {
    return this.cgroup.ok ? describeLayout(this.cgroup.layout) : undefined;
  }

  /** Runs in the host netns (the agent's own unless `netns` was given). */
  private host(argv: string[], allowFail = false): ReturnType<Runner> {
    return this.run(argv, { ...(this.opts.netns ? { netns: this.opts.netns } : {}), allowFail });
  }

  async create(spec: VmCreateSpec): Promise<VmRuntime> {
    const ns = vmNetns(this.opts.nsPrefix, spec.id);
    const port = hostPort(spec.id);
    const existing = this.records.get(spec.id);
    // Written first: a crash half-way leaves a record that recover() or destroy() cleans up.
    const rec: SandboxRecord = { ...existing, spec, netns: ns, hostPort: port };
    this.records.put(rec);
    try {
      if (!existsSync(netnsPath(ns))) await this.run(["ip", "netns", "add", ns]);
      // Tenant networks are IPv4: a VM that spoke IPv6 (router solicitations, DAD) would only
      // trip the port guards' ip6 drop and raise security events for its own kernel's chatter.
      await this.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
      await this.run(["ip", "-n", ns, "link", "set", "lo", "up"]);
      const hasPort = (await this.host(["ip", "link", "show", "dev", port], true)).exitCode === 0;
      if (!hasPort) await this.host(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns]);
      await this.run(["ip", "-n", ns, "link", "set", "eth0", "address", spec.net.mac]);
      if (spec.net.mtu) {
        await this.run(["ip", "-n", ns, "link", "set", "eth0", "mtu", String(spec.net.mtu)]);
        await this.host(["ip", "link", "set", port, "mtu", String(spec.net.mtu)]);
      }
      if (spec.net.ip) {
        const cidr = `${spec.net.ip}/${spec.net.prefixLen ?? 24}`;
        await this.run(["ip", "-n", ns, "addr", "replace", cidr, "dev", "eth0"]);
      }
      await this.run(["ip", "-n", ns, "link", "set", "eth0", "up"]);
      if (spec.net.gateway && spec.net.ip) {
        await this.run(["ip", "-n", ns, "route", "replace", "default", "via", spec.net.gateway, "dev", "eth0"]);
      }
      if (spec.net.bridge) await this.host(["ip", "link", "set", port, "master", spec.net.bridge]);
      await this.host(["ip", "link", "set", port, "up"]);
      this.writeAuthorizedKeys(spec);
      if (this.cgroup.ok && rec.cgroups === undefined) {
        rec.cgroups = applyCgroupPlan(this.cgroupPlan(spec));
        this.records.put(rec);
      }
    } catch (e) {
      throw during(`creating sandbox VM ${spec.id} (netns ${ns}, port ${port})`, e);
    }
    return this.runtime(rec);
  }

  /**
   * A sandbox VM has no root filesystem of its own (its commands see the host's), so its
   * owner's keys go to a file in the VM's state dir, <stateDir>/sandbox/<short id>/authorized_keys
   * (0600), whose path commands run in the VM get as $AUTHORIZED_KEYS_FILE.
   */
  authorizedKeysPath(id: string): string {
    return join(this.opts.stateDir, "sandbox", shortId(id), "authorized_keys");
  }

  private writeAuthorizedKeys(spec: VmCreateSpec): void {
    const file = this.authorizedKeysPath(spec.id);
    mkdirSync(join(file, ".."), { recursive: true, mode: 0o700 });
    writeFileSync(`${file}.tmp`, authorizedKeysFile(spec.sshAuthorizedKeys ?? []), { mode: 0o600 });
    chmodSync(`${file}.tmp`, 0o600);
    renameSync(`${file}.tmp`, file);
  }

  /** What a command in the VM runs with: only what it is given, plus where its keys are. */
  private execEnv(id: string, env: Record<string, string> | undefined): Record<string, string> {
    return { [SANDBOX_KEYS_ENV]: this.authorizedKeysPath(id), ...env };
  }

  async start(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    if (!existsSync(netnsPath(rec.netns))) {
      throw new NoidError("FAILED_PRECONDITION", `starting sandbox VM ${id}: netns ${rec.netns} is gone`);
    }
    if (rec.init && isAlive(rec.init)) return this.runtime(rec);
    const log = this.logFile(id);
    const pid = await this.spawn(["sleep", "infinity"], { netns: rec.netns, logFile: log });
    const ref = processRef(pid);
    if (!ref) throw new NoidError("INTERNAL", `starting sandbox VM ${id}: init ${pid} exited at once`);
    // The PID is `ip netns exec`'s until it has entered the namespace and exec'd init: observed
    // before that, the VM would look failed. Wait (bounded) until it is in.
    for (let i = 0; !inNetns(pid, rec.netns); i++) {
      if (!isAlive(ref)) throw new NoidError("INTERNAL", `starting sandbox VM ${id}: init ${pid} exited before entering netns ${rec.netns}`);
      if (i >= 500) {
        await killProcess(ref);
        throw new NoidError("DEADLINE_EXCEEDED", `starting sandbox VM ${id}: init ${pid} did not enter netns ${rec.netns} within 5 s`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    rec.init = ref;
    this.records.put(rec);
    if (rec.cgroups) joinCgroups(rec.cgroups, pid);
    appendFileSync(log, `${new Date().toISOString()} noid-sandbox: init ${pid} started in netns ${rec.netns}\n`);
    return this.runtime(rec);
  }

  async stop(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    // A frozen process dies only once thawed.
    const f = this.freezerOf(rec);
    if (f) thaw(f);
    if (rec.init) await killProcess(rec.init);
    if (rec.init && existsSync(this.logFile(id))) appendFileSync(this.logFile(id), `${new Date().toISOString()} noid-sandbox: init ${rec.init.pid} stopped\n`);
    // A stopped VM runs nothing: commands started with exec go too.
    if (rec.cgroups) await killCgroups(rec.cgroups);
    delete rec.init;
    this.records.put(rec);
    return this.runtime(rec);
  }

  async destroy(id: string): Promise<void> {
    const rec = this.records.get(id);
    const f = rec ? this.freezerOf(rec) : undefined;
    if (f) thaw(f);
    if (rec?.init) await killProcess(rec.init);
    // Names derive from the id, so this also cleans up after a lost record.
    const ns = rec?.netns ?? vmNetns(this.opts.nsPrefix, id);
    const port = rec?.hostPort ?? hostPort(id);
    try {
      if (existsSync(netnsPath(ns))) await this.run(["ip", "netns", "del", ns]);
      // Deleting the netns deletes eth0 and with it the peer; this covers a half-made pair.
      await this.host(["ip", "link", "del", port], true);
      // Also from the names alone, for a record lost before its cgroups were noted.
      const cgroups = rec?.cgroups ?? (this.cgroup.ok ? this.cgroupPlan({ id }).dirs : []);
      await killCgroups(cgroups);
      await removeCgroups(cgroups);
      rmSync(join(this.authorizedKeysPath(id), ".."), { recursive: true, force: true });
      if (f) removeV1Freezer(f);
      rmSync(this.logFile(id), { force: true });
    } catch (e) {
      throw during(`destroying sandbox VM ${id}`, e);
    }
    this.records.delete(id);
  }

  async inspect(id: string): Promise<VmRuntime | undefined> {
    const rec = this.records.get(id);
    return rec ? this.runtime(rec) : undefined;
  }

  async list(): Promise<VmRuntime[]> {
    return this.records.all().map((r) => this.runtime(r));
  }

  /** Adopts what still has its namespace; a VM whose namespace vanished is cleaned up and not returned. */
  async recover(): Promise<VmRuntime[]> {
    const adopted: VmRuntime[] = [];
    for (const rec of this.records.all()) {
      if (!existsSync(netnsPath(rec.netns))) {
        await this.destroy(rec.spec.id);
        continue;
      }
      adopted.push(this.runtime(rec));
    }
    return adopted;
  }

  /**
   * Output comes back verbatim; a command killed by a signal (the OOM killer's SIGKILL) exits
   * 128+N as a shell reports it; at the timeout the command's process group is killed.
   */
  async exec(id: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const p = await this.execStream(id, argv, opts.env ? { env: opts.env } : {});
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    p.onStdout((b) => out.push(b));
    p.onStderr((b) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill("KILL");
    }, opts.timeoutMs ?? EXEC_TIMEOUT_MS);
    const { exitCode } = await p.exited.finally(() => clearTimeout(timer));
    const res = { stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
    return timedOut ? { ...res, exitCode: -1, timedOut: true } : { ...res, exitCode };
  }

  async execStream(id: string, argv: string[], opts: SpawnExecOptions = {}): Promise<ExecProcess> {
    const rec = this.mustRun(id);
    // As exec(): the agent's environment never reaches a tenant's command.
    const cmd = this.inVm(rec, argv, this.execEnv(id, opts.env));
    return spawnAttached(cmd.argv, { netns: rec.netns, cleanEnv: true, ...(cmd.env ? { env: cmd.env } : {}), stdin: opts.stdin ?? false });
  }

  private cgroupPlan(spec: Pick<VmCreateSpec, "id"> & Partial<VmCreateSpec>) {
    if (!this.cgroup.ok) throw new NoidError("INTERNAL", "no cgroup layout");
    const limits = { vcpus: spec.vcpus ?? 1, memoryMb: spec.memoryMb ?? 1, pidsMax: this.opts.pidsMax ?? 1024 };
    return cgroupPlan(this.cgroup.layout, this.cgroupParent, cgroupName(spec.id), limits);
  }

  /** A command in the VM runs in the VM's cgroups, bound by its limits: the argv and environment to spawn. */
  private inVm(rec: SandboxRecord, argv: string[], env?: Record<string, string>): { argv: string[]; env?: Record<string, string> } {
    if (!rec.cgroups?.length) return { argv, ...(env ? { env } : {}) };
    const pwd = env?.PWD;
    return { argv: inCgroupArgv(rec.cgroups, argv, pwd !== undefined), ...(env ? { env: pwd !== undefined ? { ...env, [PWD_CARRIER]: pwd } : env } : {}) };
  }

  /** Commands run only in a running VM (as in a real one): a stopped VM's netns is still there, but it runs nothing. */
  private mustRun(id: string): SandboxRecord {
    const rec = this.mustGet(id);
    const { state } = this.runtime(rec);
    if (state !== "running") throw precondition(`exec in sandbox VM ${id}: the VM is ${state}`);
    return rec;
  }

  /** Freezes every process of the VM (see freezer.ts for why the freezer). */
  async pause(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    const now = this.runtime(rec);
    if (now.state === "paused") return now;
    if (now.state !== "running") throw precondition(`pausing sandbox VM ${id}: the VM is ${now.state}`);
    let f = this.freezerOf(rec);
    if (!f) {
      if (!this.freezerV1.ok) throw new NoidError("FAILED_PRECONDITION", `driver sandbox does not support pause: ${this.freezerV1.reason}`);
      f = ensureV1Freezer(this.freezerRoot, this.cgroupParent, cgroupName(id));
      rec.freezer = f.dir;
      this.records.put(rec);
    }
    try {
      await freeze(f, netnsPath(rec.netns));
    } catch (e) {
      thaw(f);
      throw during(`pausing sandbox VM ${id}`, e);
    }
    return this.runtime(rec);
  }

  async resume(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    const f = this.freezerOf(rec);
    if (f) thaw(f);
    return this.runtime(rec);
  }

  async logPath(id: string): Promise<string> {
    this.mustGet(id);
    return this.logFile(id);
  }

  private logFile(id: string): string {
    return join(this.opts.stateDir, "sandbox", `${cgroupName(id)}.log`);
  }

  /** The VM's v2 cgroup when it has one (cgroup.freeze), else its v1 freezer once made. */
  private freezerOf(rec: SandboxRecord): Freezer | undefined {
    if (this.cgroup.ok && this.cgroup.layout.version === 2 && rec.cgroups?.[0]) return { kind: "v2", dir: rec.cgroups[0] };
    return rec.freezer ? { kind: "v1", dir: rec.freezer } : undefined;
  }

  private mustGet(id: string): SandboxRecord {
    const rec = this.records.get(id);
    if (!rec) throw notFound(`sandbox VM ${id}`);
    return rec;
  }

  /** Observed state, from the kernel: the namespace must exist and init must be alive inside it. */
  private runtime(rec: SandboxRecord): VmRuntime {
    const base = { id: rec.spec.id, driver: this.name, spec: rec.spec, hostPort: rec.hostPort };
    if (!existsSync(netnsPath(rec.netns))) return { ...base, state: "failed", reason: `netns ${rec.netns} is gone` };
    if (!rec.init) return { ...base, state: "stopped", reason: "" };
    if (!isAlive(rec.init) || !inNetns(rec.init.pid, rec.netns)) {
      return { ...base, state: "failed", reason: `init process ${rec.init.pid} exited` };
    }
    const f = this.freezerOf(rec);
    if (f && isFrozen(f)) return { ...base, state: "paused", reason: "" };
    return { ...base, state: "running", reason: "" };
  }
}

/** Is `pid` in the named netns? Guards against adopting a process that is not the VM's init. */
function inNetns(pid: number, netns: string): boolean {
  try {
    const a = statSync(`/proc/${pid}/ns/net`);
    const b = statSync(netnsPath(netns));
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}
