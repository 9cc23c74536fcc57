// The Firecracker driver: one jailed Firecracker process per running VM, configured through
// its API socket. create() prepares everything on disk and in the network (idempotently);
// start() launches the jailer and sends the boot sequence decided in config.ts; checkpoints
// are Firecracker snapshots plus a reflinked copy of the disk taken while the VM is paused.
import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmSync, rmdirSync } from "node:fs";
import { basename, join } from "node:path";
import { NoidError, during, notFound, precondition } from "../../../common/errors.js";
import { checkName } from "../../../common/names.js";
import {
  type ProcessRef,
  type Runner,
  type Spawner,
  isAlive,
  killProcess,
  processRef,
  run as defaultRun,
  spawnDetached,
} from "../../../common/run.js";
import type { Capabilities, ExecOptions, ExecResult, HypervisorDriver, VmCreateSpec, VmRuntime } from "../driver.js";
import { type CgroupProbe, probeCgroup } from "../sandbox/cgroup.js";
import { cpuMax, memoryMax, shortId } from "../sandbox/names.js";
import { FirecrackerApi } from "./api.js";
import type { ApiCall, RateLimiter } from "./api-types.js";
import { type ApiFeatures, bootSequence, restoreSequence } from "./config.js";
import { chown, growTo, linkOrCopy, move, reflinkCopy, touch } from "./files.js";
import { chrootLayout, jailIdFor, jailerArgv } from "./jailer.js";
import { TAP, hostPortName, netPlan, vmNetnsName } from "./netns.js";
import { type FirecrackerRecord, FirecrackerRecords } from "./records.js";
import { vsockExec } from "./vsock.js";

export interface FirecrackerOptions {
  /** Agent state directory; records and checkpoints go under <stateDir>/firecracker. */
  stateDir: string;
  /** Per-agent prefix of netns names and jail ids (letters, digits, '-'). */
  nsPrefix: string;
  /** The netns that plays the host; default: the agent's own. */
  netns?: string;
  firecrackerBin?: string;
  jailerBin?: string;
  /** Guest kernel (uncompressed vmlinux on x86_64). */
  kernel: string;
  initrd?: string;
  /** Base images: VmCreateSpec.image is an absolute path, or a name under this directory (".ext4" optional). */
  imageDir: string;
  /** The jailer's --chroot-base-dir (default /srv/jailer). */
  chrootBase?: string;
  /** Firecracker runs as uid:gid after the jailer drops privileges. */
  uid: number;
  gid: number;
  cgroupRoot?: string;
  /** Parent cgroup of this agent's VMs, relative to cgroupRoot. */
  cgroupParent?: string;
  /** Version-dependent API fields; both off by default (see README.md). */
  features?: Partial<ApiFeatures>;
  netLimits?: { rx?: RateLimiter; tx?: RateLimiter };
  extraBootArgs?: string;
  /** How long stop() waits for the guest to reboot out after SendCtrlAltDel (default 10 s). */
  stopTimeoutMs?: number;
  /** How long start() waits for the API socket to answer (default 10 s). */
  apiWaitMs?: number;
  kvmPath?: string;
  runner?: Runner;
  spawner?: Spawner;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const GIB = 1024 * 1024 * 1024;

export class FirecrackerDriver implements HypervisorDriver {
  readonly name = "firecracker";
  private readonly records: FirecrackerRecords;
  private readonly run: Runner;
  private readonly spawn: Spawner;
  private readonly fcBin: string;
  private readonly jailerBin: string;
  private readonly chrootBase: string;
  private readonly cgroupRoot: string;
  private readonly cgroupParent: string;
  private readonly cgroup: CgroupProbe;
  private readonly features: ApiFeatures;

  constructor(private readonly opts: FirecrackerOptions) {
    this.records = new FirecrackerRecords(join(opts.stateDir, "firecracker", "records"));
    this.run = opts.runner ?? defaultRun;
    this.spawn = opts.spawner ?? spawnDetached;
    this.fcBin = opts.firecrackerBin ?? "/usr/local/bin/firecracker";
    this.jailerBin = opts.jailerBin ?? "/usr/local/bin/jailer";
    this.chrootBase = opts.chrootBase ?? "/srv/jailer";
    this.cgroupRoot = opts.cgroupRoot ?? "/sys/fs/cgroup";
    this.cgroupParent = opts.cgroupParent ?? `noid-${opts.nsPrefix}`;
    this.cgroup = probeCgroup(this.cgroupRoot);
    this.features = { netMtu: false, networkOverrides: false, ...opts.features };
  }

  /** Can this host run Firecracker at all? Checked by the agent before it offers the driver. */
  async available(): Promise<{ ok: boolean; reason?: string }> {
    const problems: string[] = [];
    for (const bin of [this.fcBin, this.jailerBin]) {
      try {
        accessSync(bin, constants.X_OK);
      } catch {
        problems.push(`${bin} is not an executable file`);
      }
    }
    const kvm = this.opts.kvmPath ?? "/dev/kvm";
    try {
      accessSync(kvm, constants.R_OK | constants.W_OK);
    } catch {
      problems.push(`${kvm} is missing or not read/writable`);
    }
    return problems.length ? { ok: false, reason: problems.join("; ") } : { ok: true };
  }

  capabilities(): Capabilities {
    return {
      exec: true,
      checkpoint: true,
      restore: true,
      // PATCH /vm {state: Paused|Resumed}; the state is Firecracker's own, re-read by recover().
      pause: true,
      resourceLimits: this.cgroup.ok,
      ...(this.cgroup.ok ? {} : { limitsReason: this.cgroup.reason }),
    };
  }

  async create(spec: VmCreateSpec): Promise<VmRuntime> {
    if (!existsSync(this.opts.kernel)) throw precondition(`creating firecracker VM ${spec.id}: kernel ${this.opts.kernel} not found`);
    if (this.opts.initrd !== undefined && !existsSync(this.opts.initrd)) {
      throw precondition(`creating firecracker VM ${spec.id}: initrd ${this.opts.initrd} not found`);
    }
    const image = this.resolveImage(spec.image);
    if (!image) throw precondition(`creating firecracker VM ${spec.id}: image "${spec.image}" not found in ${this.opts.imageDir}`);
    const jailId = jailIdFor(this.opts.nsPrefix, spec.id);
    const rec: FirecrackerRecord = {
      ...this.records.get(spec.id),
      spec,
      jailId,
      netns: vmNetnsName(this.opts.nsPrefix, spec.id),
      hostPort: hostPortName(spec.id),
      layout: chrootLayout(this.chrootBase, this.fcBin, jailId),
      vmDir: join(this.opts.stateDir, "firecracker", "vms", shortId(spec.id)),
      hasInitrd: this.opts.initrd !== undefined,
    };
    // Written first: a crash half-way leaves a record that recover() or destroy() cleans up.
    this.records.put(rec);
    try {
      await this.ensureNetwork(rec);
      await this.ensureJail(rec, image);
    } catch (e) {
      throw during(`creating firecracker VM ${spec.id} (jail ${jailId})`, e);
    }
    return this.runtime(rec);
  }

  async start(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    if (rec.process && isAlive(rec.process)) return this.runtime(rec);
    if (!existsSync(rec.layout.rootfs.host)) throw precondition(`starting firecracker VM ${id}: ${rec.layout.rootfs.host} is gone`);
    try {
      await this.ensureNetwork(rec);
      await this.launch(rec);
      await this.sendAll(rec, bootSequence(this.configInput(rec)));
    } catch (e) {
      await this.killVmm(rec);
      throw during(`starting firecracker VM ${id}`, e);
    }
    return this.runtime(rec);
  }

  async stop(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    const proc = rec.process;
    if (proc && isAlive(proc) && !rec.paused) {
      // A graceful stop: the guest reboots and, with reboot=k, Firecracker exits.
      const asked = await this.api(rec)
        .action("SendCtrlAltDel")
        .then(() => true)
        .catch(() => false);
      const deadline = Date.now() + (asked ? (this.opts.stopTimeoutMs ?? 10_000) : 0);
      while (isAlive(proc) && Date.now() < deadline) await sleep(50);
    }
    await this.killVmm(rec);
    return this.runtime(rec);
  }

  async pause(id: string): Promise<VmRuntime> {
    const rec = this.mustRun(id, "pausing");
    await this.api(rec).setVmState("Paused").catch((e: unknown) => Promise.reject(during(`pausing firecracker VM ${id}`, e)));
    rec.paused = true;
    this.records.put(rec);
    return this.runtime(rec);
  }

  async resume(id: string): Promise<VmRuntime> {
    const rec = this.mustRun(id, "resuming");
    await this.api(rec).setVmState("Resumed").catch((e: unknown) => Promise.reject(during(`resuming firecracker VM ${id}`, e)));
    rec.paused = false;
    this.records.put(rec);
    return this.runtime(rec);
  }

  /**
   * A full snapshot plus a copy of the disk, both taken while the guest is paused so they
   * agree (Firecracker flushes the disk on snapshot). The VM runs on afterwards unless it
   * was paused before. Stored unencrypted under <vmDir>/checkpoints/<name>.
   */
  async checkpoint(id: string, name: string): Promise<void> {
    checkName("checkpoint", name);
    const rec = this.mustRun(id, "checkpointing");
    const wasPaused = rec.paused === true;
    const api = this.api(rec);
    const dir = this.checkpointDir(rec, name);
    try {
      if (!wasPaused) await api.setVmState("Paused");
      const { snapshotState: st, snapshotMem: mem, rootfs } = rec.layout;
      rmSync(st.host, { force: true });
      rmSync(mem.host, { force: true });
      await api.createSnapshot({ snapshot_type: "Full", snapshot_path: st.jail, mem_file_path: mem.jail }, 10 * 60_000);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      await reflinkCopy(this.run, rootfs.host, join(dir, "rootfs.ext4"));
      await move(this.run, st.host, join(dir, "vmstate"));
      await move(this.run, mem.host, join(dir, "mem"));
    } catch (e) {
      rmSync(dir, { recursive: true, force: true });
      throw during(`checkpointing firecracker VM ${id} as ${name}`, e);
    } finally {
      if (!wasPaused) await api.setVmState("Resumed").catch(() => undefined);
    }
  }

  /** Replaces the VM's state with checkpoint `name`: a fresh Firecracker loads it and resumes. */
  async restore(id: string, name: string): Promise<VmRuntime> {
    checkName("checkpoint", name);
    const rec = this.mustGet(id);
    const dir = this.checkpointDir(rec, name);
    if (!existsSync(join(dir, "vmstate"))) throw notFound(`checkpoint ${name} of firecracker VM ${id}`);
    try {
      await this.killVmm(rec);
      const { snapshotState: st, snapshotMem: mem, rootfs } = rec.layout;
      // Copies, not moves: the checkpoint stays restorable, and Firecracker maps the memory file for the VM's life.
      await reflinkCopy(this.run, join(dir, "rootfs.ext4"), rootfs.host);
      chown([rootfs.host], this.opts.uid, this.opts.gid);
      await reflinkCopy(this.run, join(dir, "vmstate"), st.host);
      await reflinkCopy(this.run, join(dir, "mem"), mem.host);
      chown([st.host, mem.host], this.opts.uid, this.opts.gid);
      await this.ensureNetwork(rec);
      await this.launch(rec);
      await this.sendAll(rec, restoreSequence(this.configInput(rec)));
    } catch (e) {
      await this.killVmm(rec);
      throw during(`restoring firecracker VM ${id} from ${name}`, e);
    }
    return this.runtime(rec);
  }

  async destroy(id: string): Promise<void> {
    const rec = this.records.get(id);
    if (rec) await this.killVmm(rec);
    // Names derive from the id, so this also cleans up after a lost record.
    const jailId = rec?.jailId ?? jailIdFor(this.opts.nsPrefix, id);
    const layout = rec?.layout ?? chrootLayout(this.chrootBase, this.fcBin, jailId);
    const ns = rec?.netns ?? vmNetnsName(this.opts.nsPrefix, id);
    const port = rec?.hostPort ?? hostPortName(id);
    try {
      rmSync(layout.jailDir, { recursive: true, force: true });
      rmSync(rec?.vmDir ?? join(this.opts.stateDir, "firecracker", "vms", shortId(id)), { recursive: true, force: true });
      if (existsSync(`/run/netns/${ns}`)) await this.run(["ip", "netns", "del", ns]);
      await this.host(["ip", "link", "del", port], true);
      // The jailer made <parent>/<jailId>; it is empty once Firecracker is gone.
      try {
        rmdirSync(join(this.cgroupRoot, this.cgroupParent, jailId));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
      }
    } catch (e) {
      throw during(`destroying firecracker VM ${id}`, e);
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

  /**
   * Adopts VMs whose Firecracker still runs and answers on its socket (the paused flag is
   * re-read from the API); one that runs but does not answer is killed and reported stopped;
   * one whose process died while nobody watched is reported failed; a VM whose jail is gone
   * is cleaned up and not returned.
   */
  async recover(): Promise<VmRuntime[]> {
    const adopted: VmRuntime[] = [];
    for (const rec of this.records.all()) {
      if (!existsSync(rec.layout.rootfs.host)) {
        await this.destroy(rec.spec.id);
        continue;
      }
      if (rec.process && isAlive(rec.process)) {
        try {
          const info = await new FirecrackerApi(rec.layout.apiSock.host, { timeoutMs: 2000 }).describe();
          rec.paused = info.state === "Paused";
        } catch {
          await this.killVmm(rec);
        }
      }
      // A process that died stays recorded: the VM is reported failed (runtime()), not stopped.
      this.records.put(rec);
      adopted.push(this.runtime(rec));
    }
    return adopted;
  }

  async exec(id: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const rec = this.mustRun(id, "exec in");
    if (rec.paused) throw precondition(`exec in firecracker VM ${id}: the VM is paused`);
    return vsockExec(rec.layout.vsock.host, argv, opts);
  }

  // ---- internals ----

  private resolveImage(image: string): string | undefined {
    const candidates = image.startsWith("/") ? [image] : [join(this.opts.imageDir, image), join(this.opts.imageDir, `${image}.ext4`)];
    return candidates.find((c) => image !== "" && existsSync(c));
  }

  private checkpointDir(rec: FirecrackerRecord, name: string): string {
    return join(rec.vmDir, "checkpoints", name);
  }

  private configInput(rec: FirecrackerRecord) {
    return {
      spec: rec.spec,
      layout: rec.layout,
      tap: TAP,
      features: this.features,
      hasInitrd: rec.hasInitrd,
      ...(this.opts.netLimits ? { netLimits: this.opts.netLimits } : {}),
      ...(this.opts.extraBootArgs ? { extraBootArgs: this.opts.extraBootArgs } : {}),
    };
  }

  private host(argv: string[], allowFail = false): ReturnType<Runner> {
    return this.run(argv, { ...(this.opts.netns ? { netns: this.opts.netns } : {}), allowFail });
  }

  /** Measure, then act: read which links exist, and run only the missing steps. */
  private async ensureNetwork(rec: FirecrackerRecord): Promise<void> {
    const netnsExists = existsSync(`/run/netns/${rec.netns}`);
    let vmLinks = new Set<string>();
    if (netnsExists) {
      const out = await this.run(["ip", "-j", "link", "show"], { netns: rec.netns });
      vmLinks = new Set((JSON.parse(out.stdout || "[]") as { ifname: string }[]).map((l) => l.ifname));
    }
    const hostPortExists = (await this.host(["ip", "link", "show", "dev", rec.hostPort], true)).exitCode === 0;
    const steps = netPlan({ netns: rec.netns, hostPort: rec.hostPort }, rec.spec.net, this.opts, { netnsExists, vmLinks, hostPortExists });
    for (const s of steps) {
      if (s.where === "vm") await this.run(s.argv, { netns: rec.netns });
      else if (s.where === "host") await this.host(s.argv);
      else await this.run(s.argv);
    }
  }

  /** The jail's files, owned by the uid Firecracker will run as. The jailer adds the binary and /dev nodes. */
  private async ensureJail(rec: FirecrackerRecord, image: string): Promise<void> {
    const { layout } = rec;
    const { uid, gid } = this.opts;
    for (const d of ["run", "log", "snapshot"]) mkdirSync(join(layout.root, d), { recursive: true });
    mkdirSync(rec.vmDir, { recursive: true });
    linkOrCopy(this.opts.kernel, layout.kernel.host);
    if (this.opts.initrd !== undefined) linkOrCopy(this.opts.initrd, layout.initrd.host);
    if (!existsSync(layout.rootfs.host)) await reflinkCopy(this.run, image, layout.rootfs.host);
    growTo(layout.rootfs.host, rec.spec.diskGb * GIB);
    touch(layout.log.host);
    touch(layout.metrics.host);
    chown(
      [layout.rootfs.host, layout.log.host, layout.metrics.host, ...["run", "log", "snapshot"].map((d) => join(layout.root, d))],
      uid,
      gid,
    );
  }

  /** Starts the jailer and waits until Firecracker answers on its socket. */
  private async launch(rec: FirecrackerRecord): Promise<void> {
    const { layout } = rec;
    // Firecracker refuses to bind over an existing socket; these are leftovers of a previous run.
    rmSync(layout.apiSock.host, { force: true });
    rmSync(layout.vsock.host, { force: true });
    // What the jailer makes on every start (device nodes, the binary's copy): cleared so a
    // restart in the same jail is not refused by an existing node.
    rmSync(join(layout.root, "dev"), { recursive: true, force: true });
    rmSync(join(layout.root, basename(this.fcBin)), { force: true });
    const argv = jailerArgv({
      jailerBin: this.jailerBin,
      firecrackerBin: this.fcBin,
      jailId: rec.jailId,
      uid: this.opts.uid,
      gid: this.opts.gid,
      chrootBase: this.chrootBase,
      netns: rec.netns,
      ...(this.cgroup.ok
        ? { parentCgroup: this.cgroupParent, cgroups: { "cpu.max": cpuMax(rec.spec.vcpus), "memory.max": memoryMax(rec.spec.memoryMb + 64) } }
        : { cgroups: {} }),
      apiSock: layout.apiSock.jail,
    });
    const consoleLog = join(rec.vmDir, "console.log");
    const pid = await this.spawn(argv, { logFile: consoleLog });
    const ref = processRef(pid);
    if (!ref) throw new NoidError("INTERNAL", `jailer ${pid} exited at once: ${tail(consoleLog)}`);
    rec.process = ref;
    rec.paused = false;
    this.records.put(rec);
    await this.waitForApi(rec, ref, consoleLog);
  }

  private async waitForApi(rec: FirecrackerRecord, ref: ProcessRef, consoleLog: string): Promise<void> {
    const deadline = Date.now() + (this.opts.apiWaitMs ?? 10_000);
    const api = new FirecrackerApi(rec.layout.apiSock.host, { timeoutMs: 1000 });
    let last = "";
    while (Date.now() < deadline) {
      if (!isAlive(ref)) throw new NoidError("INTERNAL", `firecracker ${ref.pid} exited before its API answered: ${tail(consoleLog)}`);
      if (existsSync(rec.layout.apiSock.host)) {
        try {
          await api.describe();
          return;
        } catch (e) {
          last = e instanceof Error ? e.message : String(e);
        }
      }
      await sleep(25);
    }
    throw new NoidError("DEADLINE_EXCEEDED", `firecracker API at ${rec.layout.apiSock.host} did not answer${last ? `: ${last}` : ""}`);
  }

  private async sendAll(rec: FirecrackerRecord, calls: ApiCall[]): Promise<void> {
    const api = this.api(rec);
    for (const c of calls) await api.send(c);
  }

  private async killVmm(rec: FirecrackerRecord): Promise<void> {
    if (rec.process) await killProcess(rec.process);
    delete rec.process;
    delete rec.paused;
    if (this.records.get(rec.spec.id)) this.records.put(rec);
  }

  private api(rec: FirecrackerRecord): FirecrackerApi {
    return new FirecrackerApi(rec.layout.apiSock.host);
  }

  private mustGet(id: string): FirecrackerRecord {
    const rec = this.records.get(id);
    if (!rec) throw notFound(`firecracker VM ${id}`);
    return rec;
  }

  private mustRun(id: string, what: string): FirecrackerRecord {
    const rec = this.mustGet(id);
    if (!rec.process || !isAlive(rec.process)) throw precondition(`${what} firecracker VM ${id}: the VM is not running`);
    return rec;
  }

  /** Observed state: the recorded Firecracker process must be alive; paused when its vCPUs are (PATCH /vm Paused). */
  private runtime(rec: FirecrackerRecord): VmRuntime {
    const base = { id: rec.spec.id, driver: this.name, spec: rec.spec, hostPort: rec.hostPort };
    if (!existsSync(rec.layout.rootfs.host)) return { ...base, state: "failed", reason: `disk ${rec.layout.rootfs.host} is gone` };
    if (!rec.process) return { ...base, state: "stopped", reason: "" };
    // Not stopped by us (stop() and failed starts forget the process): a crash.
    if (!isAlive(rec.process)) return { ...base, state: "failed", reason: `firecracker process ${rec.process.pid} exited` };
    return rec.paused ? { ...base, state: "paused", reason: "" } : { ...base, state: "running", reason: "" };
  }
}

/** The end of a log file, for error messages. */
function tail(path: string, bytes = 600): string {
  try {
    const text = readFileSync(path, "utf8");
    return text.slice(-bytes).trim() || "(no output)";
  } catch {
    return "(no output)";
  }
}
