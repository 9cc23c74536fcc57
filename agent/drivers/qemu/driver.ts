// The QEMU driver: one `qemu-system-x86_64 -M microvm` process per VM, controlled over QMP,
// with a TAP port, a qcow2 overlay over a shared base image as its root disk, and exec
// through the guest agent on a virtio-serial port. KVM when this machine can run it, TCG
// otherwise.
//
// The driver's "host" is the netns the agent runs in (or `netns` from the options, which lets
// a test drive a namespace of its own): TAPs are made there and QEMU runs there.
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { NoidError, during, notFound, precondition } from "../../../common/errors.js";
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
import { connectConsole } from "../console-socket.js";
import type { Capabilities, ConsoleStream, ExecOptions, ExecResult, HypervisorDriver, SaveStateOptions, StateFile, VmCreateSpec, VmNetSpec, VmRuntime } from "../driver.js";
import { type Accel, chooseAccel, incomingArgv, kvmProbeArgv, migrateUri, overlayArgv, qemuArgv } from "./argv.js";
import { gatewayFor } from "./cmdline.js";
import { exitReason, readTail } from "./failure.js";
import { GuestChannel, onFreshConnections } from "./guest-channel.js";
import { guestInstallCommand } from "../ssh-keys.js";
import { imageCandidates, overlaySize, parseImageInfo } from "./image.js";
import { MAX_SOCKET_PATH, tapName, vmPaths } from "./names.js";
import { qmpCommand, queryStatus } from "./qmp.js";
import { type QemuRecord, QemuRecords } from "./records.js";

export interface QemuOptions {
  /** Agent state directory; records and per-VM files go to <stateDir>/qemu. */
  stateDir: string;
  /** Where deploy/guest/build.sh put vmlinuz, initramfs.cpio.gz and rootfs.ext4. */
  guestDir: string;
  /** Override guestDir's vmlinuz / initramfs.cpio.gz. */
  kernel?: string;
  initrd?: string;
  /** Named base images; default: guestDir. */
  imagesDir?: string;
  /** The netns that plays the host; default: the agent's own. */
  netns?: string;
  accel?: "auto" | Accel;
  /** How long start() waits for the guest agent to answer (default 60 s). */
  bootTimeoutMs?: number;
  qemuBinary?: string;
  qemuImg?: string;
  runner?: Runner;
  spawner?: Spawner;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const randomHex = (n: number): string => randomBytes(n).toString("hex");

export class QemuDriver implements HypervisorDriver {
  readonly name = "qemu";
  private readonly records: QemuRecords;
  private readonly vmsDir: string;
  private readonly run: Runner;
  private readonly spawn: Spawner;
  private accel: Accel | undefined;
  /** VMs with a console attached (QEMU's console socket takes one client). */
  private readonly consoles = new Set<string>();

  constructor(private readonly opts: QemuOptions) {
    this.records = new QemuRecords(join(opts.stateDir, "qemu", "records"));
    this.vmsDir = join(opts.stateDir, "qemu", "vms");
    this.run = opts.runner ?? defaultRun;
    this.spawn = opts.spawner ?? spawnDetached;
  }

  capabilities(): Capabilities {
    // -smp and -m are hard limits: the guest sees exactly that many vCPUs and that much RAM.
    return { exec: true, checkpoint: true, restore: true, resourceLimits: true, pause: true, console: true, logs: true };
  }

  private get kernel(): string {
    return this.opts.kernel ?? join(this.opts.guestDir, "vmlinuz");
  }
  private get initrd(): string {
    return this.opts.initrd ?? join(this.opts.guestDir, "initramfs.cpio.gz");
  }

  private host(argv: string[], allowFail = false): ReturnType<Runner> {
    return this.run(argv, { ...(this.opts.netns ? { netns: this.opts.netns } : {}), allowFail });
  }

  async create(spec: VmCreateSpec): Promise<VmRuntime> {
    for (const f of [this.kernel, this.initrd]) {
      if (!existsSync(f)) throw precondition(`creating qemu VM ${spec.id}: guest ${f} is missing (build it with deploy/guest/build.sh)`);
    }
    const candidates = imageCandidates(spec.image, this.opts.imagesDir ?? this.opts.guestDir);
    const base = candidates.find((c) => existsSync(c));
    if (!base) throw precondition(`creating qemu VM ${spec.id}: image ${JSON.stringify(spec.image || "default")} not found (looked for ${candidates.join(", ")})`);
    const paths = vmPaths(this.vmsDir, spec.id);
    const longest = [paths.qmpSocket, paths.agentSocket, paths.consoleSocket].find((p) => p.length > MAX_SOCKET_PATH);
    if (longest) throw precondition(`creating qemu VM ${spec.id}: socket path ${longest} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter state dir`);

    const tap = tapName(spec.id);
    const existing = this.records.get(spec.id);
    // Written first: a crash half-way leaves a record that recover() or destroy() cleans up.
    const rec: QemuRecord = { ...existing, spec, tap, paths, base };
    this.records.put(rec);
    try {
      mkdirSync(paths.dir, { recursive: true });
      if ((await this.host(["ip", "link", "show", "dev", tap], true)).exitCode !== 0) {
        await this.host(["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
      }
      if (spec.net.mtu) await this.host(["ip", "link", "set", tap, "mtu", String(spec.net.mtu)]);
      if (spec.net.bridge) await this.host(["ip", "link", "set", tap, "master", spec.net.bridge]);
      await this.host(["ip", "link", "set", tap, "up"]);
      if (!existsSync(paths.overlay)) {
        const info = parseImageInfo((await this.run([this.opts.qemuImg ?? "qemu-img", "info", "--output=json", base])).stdout);
        // Made under a temporary name: an overlay that exists is complete.
        const tmp = `${paths.overlay}.tmp`;
        await this.run(overlayArgv(base, info.format, tmp, overlaySize(spec.diskGb, info), this.opts.qemuImg));
        renameSync(tmp, paths.overlay);
      }
    } catch (e) {
      throw during(`creating qemu VM ${spec.id} (tap ${tap})`, e);
    }
    return this.runtime(rec);
  }

  async start(id: string): Promise<VmRuntime> {
    return this.launch(id);
  }

  /** Starts QEMU; with `incoming`, it loads a saved state (the migration stream in that file) instead of booting. */
  private async launch(id: string, incoming?: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    if (!incoming && rec.qemu && this.isOurs(rec, rec.qemu)) return this.runtime(rec);
    if (!existsSync(rec.paths.overlay)) throw precondition(`starting qemu VM ${id}: root disk ${rec.paths.overlay} is gone`);
    for (const f of [this.kernel, this.initrd]) {
      if (!existsSync(f)) throw precondition(`starting qemu VM ${id}: guest ${f} is missing (build it with deploy/guest/build.sh)`);
    }
    const accel = await this.chooseAccel();
    // Stale sockets from an earlier run would make QEMU fail to listen.
    for (const s of [rec.paths.qmpSocket, rec.paths.agentSocket, rec.paths.consoleSocket]) rmSync(s, { force: true });
    rmSync(rec.paths.qemuLog, { force: true });
    const argv = [
      ...qemuArgv(rec.spec, rec.paths, { kernel: this.kernel, initrd: this.initrd, accel, tap: rec.tap, ...(this.opts.qemuBinary ? { binary: this.opts.qemuBinary } : {}) }),
      ...(incoming ? incomingArgv(incoming) : []),
    ];
    const pid = await this.spawn(argv, { logFile: rec.paths.qemuLog, ...(this.opts.netns ? { netns: this.opts.netns } : {}) });
    const ref = processRef(pid);
    delete rec.failure;
    rec.accel = accel;
    if (ref) rec.qemu = ref;
    this.records.put(rec);
    if (!ref) return this.fail(rec, `qemu process ${pid} exited at once: ${readTail(rec.paths.qemuLog, 1000).trim()}`);
    if (incoming) await this.waitIncoming(rec, ref);
    await this.waitReady(rec, ref);
    await this.installAuthorizedKeys(rec, ref);
    return this.runtime(rec);
  }

  /**
   * The owner's SSH keys (snapshotted at create) go to /root/.ssh/authorized_keys through the
   * guest agent on every boot, so the file is right even if the guest changed it or the disk
   * came from a checkpoint of another VM. A VM without keys is left alone. The guest image
   * (deploy/guest/build.sh) has no sshd: the file is there for images that bring one.
   */
  private async installAuthorizedKeys(rec: QemuRecord, ref: ProcessRef): Promise<void> {
    const keys = rec.spec.sshAuthorizedKeys ?? [];
    if (keys.length === 0) return;
    const { argv, env } = guestInstallCommand(keys);
    const r = await new GuestChannel(rec.paths.agentSocket).exec(argv, env, 15_000).catch((e: unknown) => ({ exitCode: -1, stdout: "", stderr: String(e) }));
    if (r.exitCode !== 0) {
      await killProcess(ref).catch(() => undefined);
      await this.fail(rec, `installing the owner's SSH keys in the guest failed: ${r.stderr.trim().slice(0, 300)}`);
    }
  }

  /** Polls the guest agent until it answers; QEMU dying or the deadline passing fails the start. */
  private async waitReady(rec: QemuRecord, ref: ProcessRef): Promise<void> {
    const timeoutMs = this.opts.bootTimeoutMs ?? 60_000;
    const deadline = Date.now() + timeoutMs;
    const ch = new GuestChannel(rec.paths.agentSocket);
    while (Date.now() < deadline) {
      if (!isAlive(ref)) {
        const reason = exitReason(ref.pid, readTail(rec.paths.qemuLog), readTail(rec.paths.serialLog));
        await this.fail(rec, reason);
      }
      try {
        await ch.ping(Math.min(2_000, Math.max(100, deadline - Date.now())));
        return;
      } catch {
        await sleep(200);
      }
    }
    await killProcess(ref).catch(() => undefined);
    const tail = readTail(rec.paths.serialLog, 600).trim().split("\n").slice(-3).join(" | ");
    await this.fail(rec, `guest agent did not answer within ${timeoutMs} ms (console: ${tail})`, "DEADLINE_EXCEEDED");
  }

  /**
   * A state saved while paused loads paused (QEMU keeps the source's run state): once the
   * incoming migration completed, the VM is continued.
   */
  private async waitIncoming(rec: QemuRecord, ref: ProcessRef): Promise<void> {
    const deadline = Date.now() + 10 * 60_000;
    const qmp = rec.paths.qmpSocket;
    while (Date.now() < deadline) {
      if (!isAlive(ref)) await this.fail(rec, `loading the saved state: ${readTail(rec.paths.qemuLog, 1000).trim()}`);
      try {
        const st = await queryStatus(qmp, 2_000);
        if (st.running) return;
        const m = (await qmpCommand(qmp, "query-migrate", undefined, 2_000)) as { status?: string; "error-desc"?: string };
        if (m.status === "failed") await this.fail(rec, `loading the saved state failed: ${m["error-desc"] ?? readTail(rec.paths.qemuLog, 1000).trim()}`);
        if (m.status === "completed" && st.status === "paused") {
          await qmpCommand(qmp, "cont", undefined, 2_000);
          return;
        }
      } catch (e) {
        if (e instanceof NoidError && e.message.startsWith("starting qemu VM")) throw e;
        /* QMP not up yet */
      }
      await sleep(200);
    }
    await killProcess(ref).catch(() => undefined);
    await this.fail(rec, "loading the saved state did not finish within 10 minutes", "DEADLINE_EXCEEDED");
  }

  private async fail(rec: QemuRecord, reason: string, code: "FAILED_PRECONDITION" | "DEADLINE_EXCEEDED" = "FAILED_PRECONDITION"): Promise<never> {
    rec.failure = reason;
    this.records.put(rec);
    throw new NoidError(code, `starting qemu VM ${rec.spec.id}: ${reason}`);
  }

  async stop(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    if (rec.qemu) await this.shutdown(rec, rec.qemu);
    delete rec.qemu;
    delete rec.failure;
    this.records.put(rec);
    return this.runtime(rec);
  }

  /**
   * Graceful first: the guest agent syncs and powers off (microvm exits on ACPI power-off).
   * Then QMP quit, then SIGTERM/SIGKILL. Each step is time-boxed.
   */
  private async shutdown(rec: QemuRecord, ref: ProcessRef): Promise<void> {
    if (!this.isOurs(rec, ref)) return;
    const waitExit = async (ms: number): Promise<boolean> => {
      const end = Date.now() + ms;
      while (isAlive(ref) && Date.now() < end) await sleep(50);
      return !isAlive(ref);
    };
    try {
      await new GuestChannel(rec.paths.agentSocket).shutdown(1_500);
      if (await waitExit(5_000)) return;
    } catch {
      /* no agent: go on */
    }
    try {
      await qmpCommand(rec.paths.qmpSocket, "quit", undefined, 2_000);
      if (await waitExit(3_000)) return;
    } catch {
      /* no QMP: go on */
    }
    await killProcess(ref);
  }

  async destroy(id: string): Promise<void> {
    const rec = this.records.get(id);
    if (rec?.qemu && this.isOurs(rec, rec.qemu)) await killProcess(rec.qemu);
    // Names derive from the id, so this also cleans up after a lost record.
    const tap = rec?.tap ?? tapName(id);
    const paths = rec?.paths ?? vmPaths(this.vmsDir, id);
    try {
      await this.host(["ip", "link", "del", tap], true);
      rmSync(paths.dir, { recursive: true, force: true });
    } catch (e) {
      throw during(`destroying qemu VM ${id}`, e);
    }
    this.records.delete(id);
  }

  async inspect(id: string): Promise<VmRuntime | undefined> {
    const rec = this.records.get(id);
    return rec ? this.runtime(rec) : undefined;
  }

  async list(): Promise<VmRuntime[]> {
    return Promise.all(this.records.all().map((r) => this.runtime(r)));
  }

  /** Adopts VMs whose QEMU still runs; one whose root disk vanished is cleaned up and not returned. */
  async recover(): Promise<VmRuntime[]> {
    const adopted: VmRuntime[] = [];
    for (const rec of this.records.all()) {
      const alive = rec.qemu !== undefined && this.isOurs(rec, rec.qemu);
      if (!alive && !existsSync(rec.paths.overlay)) {
        await this.destroy(rec.spec.id);
        continue;
      }
      adopted.push(await this.runtime(rec));
    }
    return adopted;
  }

  async exec(id: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const rec = this.mustGet(id);
    if (!rec.qemu || !this.isOurs(rec, rec.qemu)) throw precondition(`exec in qemu VM ${id}: the VM is not running`);
    return new GuestChannel(rec.paths.agentSocket).exec(argv, opts.env ?? {}, opts.timeoutMs);
  }

  /**
   * The guest's request buffers are cleared first (see GuestChannel.scrub); then
   * QMP stop, then the whole machine state (RAM, devices) migrated into `<dir>/memory`; at the
   * end of a migration QEMU flushes and lets go of the disk, so the overlay copied now agrees
   * with the memory. Then QMP cont: the VM runs on (unless it was paused before, or
   * `keepPaused` asks it to stay paused: a migration, continueSaved() if it does not happen).
   */
  async saveState(id: string, dir: string, opts: SaveStateOptions = {}): Promise<StateFile[]> {
    const rec = this.mustGet(id);
    if (!rec.qemu || !this.isOurs(rec, rec.qemu)) throw precondition(`checkpointing qemu VM ${id}: the VM is not running`);
    const qmp = rec.paths.qmpSocket;
    const memory = join(dir, "memory");
    const disk = join(dir, "disk");
    const wasPaused = !(await queryStatus(qmp)).running;
    // Exec environments may hold secrets: none may linger in the guest memory saved here
    // (the guest agent wipes its copies, the guest kernel zeroes freed memory: init_on_free).
    if (!wasPaused) {
      await new GuestChannel(rec.paths.agentSocket).scrub().catch((e: unknown) => {
        throw during(`checkpointing qemu VM ${id}: clearing the guest's request buffers (exec secrets) failed; nothing saved`, e);
      });
    }
    try {
      if (!wasPaused) await qmpCommand(qmp, "stop");
      await qmpCommand(qmp, "migrate", { uri: migrateUri(memory) });
      await this.waitMigration(qmp, "saving");
      copyFileSync(rec.paths.overlay, disk);
    } catch (e) {
      // Kept paused only for a state that was saved: a failed save runs on.
      if (opts.keepPaused && !wasPaused) await qmpCommand(qmp, "cont").catch(() => undefined);
      throw during(`checkpointing qemu VM ${id}`, e);
    } finally {
      if (!wasPaused && !opts.keepPaused) await qmpCommand(qmp, "cont").catch(() => undefined);
    }
    return [
      { name: "memory", path: memory },
      { name: "disk", path: disk },
    ];
  }

  private async waitMigration(qmp: string, what: string, timeoutMs = 10 * 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const m = (await qmpCommand(qmp, "query-migrate")) as { status?: string; "error-desc"?: string };
      if (m.status === "completed") return;
      if (m.status === "failed" || m.status === "cancelled") throw new NoidError("INTERNAL", `${what} the VM state: migration ${m.status}${m["error-desc"] ? `: ${m["error-desc"]}` : ""}`);
      await sleep(100);
    }
    throw new NoidError("DEADLINE_EXCEEDED", `${what} the VM state took longer than ${timeoutMs} ms`);
  }

  /**
   * Replaces the VM with a saved state: the running QEMU (if any) is killed, the saved disk
   * becomes the overlay, and a new QEMU loads the memory with -incoming and runs on from where
   * the state was taken. A VM whose MAC or address differs from the saved one (a clone) gets
   * its own through the guest agent, and fresh bytes are mixed into the guest's entropy pool.
   */
  async loadState(id: string, dir: string, from: VmNetSpec): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    for (const f of ["memory", "disk"]) if (!existsSync(join(dir, f))) throw precondition(`restoring qemu VM ${id}: the checkpoint has no ${f}`);
    if (rec.qemu && this.isOurs(rec, rec.qemu)) await killProcess(rec.qemu);
    delete rec.qemu;
    this.records.put(rec);
    const tmp = `${rec.paths.overlay}.restore`;
    copyFileSync(join(dir, "disk"), tmp);
    renameSync(tmp, rec.paths.overlay);
    const vm = await this.launch(id, join(dir, "memory"));
    const net = rec.spec.net;
    const ch = new GuestChannel(rec.paths.agentSocket);
    const script = [
      // Fresh randomness: a clone must not share its source's future random numbers.
      `head -c 64 /dev/urandom >/dev/null; echo ${randomHex(32)} > /dev/urandom`,
      ...(from.mac.toLowerCase() !== net.mac.toLowerCase() || from.ip !== net.ip
        ? [
            // Changed with the link up (virtio-net changes its MAC live): taking it down here
            // deadlocks the guest kernel when it races the device's post-restore announce
            // (virtnet_close waits, holding RTNL, for the config-change work, which waits
            // for RTNL); seen about once in 15 restores.
            `ip link set dev eth0 address ${net.mac}`,
            "ip -4 addr flush dev eth0",
            ...(net.ip ? [`ip addr add ${net.ip}/${net.prefixLen ?? 24} dev eth0`] : []),
            ...(net.ip && gatewayFor(net.ip, net.prefixLen ?? 24) ? [`ip route replace default via ${gatewayFor(net.ip, net.prefixLen ?? 24)} dev eth0`] : []),
          ]
        : []),
    ].join(" && ");
    const r = await this.execAfterRestore(id, ch, script);
    if (r.exitCode !== 0) {
      if (rec.qemu) await killProcess(rec.qemu).catch(() => undefined);
      throw new NoidError("INTERNAL", `restoring qemu VM ${id}: giving the guest its network identity failed: ${r.stderr.trim()}`);
    }
    await this.announce(id).catch(() => undefined);
    return vm;
  }

  /**
   * The first command after an incoming migration, idempotent, tried up to three times (each
   * retry on a fresh connection): a guard. The stall this was first blamed on was the guest
   * kernel's deadlock on taking the link down (see loadState), which no retry helps; the
   * script no longer does that.
   */
  private async execAfterRestore(id: string, ch: GuestChannel, script: string): Promise<ExecResult> {
    try {
      return await onFreshConnections(3, () => ch.exec(["sh", "-c", script], {}, 20_000));
    } catch (e) {
      const rec = this.mustGet(id);
      if (rec.qemu) await killProcess(rec.qemu).catch(() => undefined);
      throw during(`restoring qemu VM ${id}: the guest agent did not run the first command after the restore`, e);
    }
  }

  /** A VM saved with keepPaused runs on from where it was (the migration did not happen). */
  async continueSaved(id: string): Promise<void> {
    const rec = this.mustGet(id);
    if (!rec.qemu || !this.isOurs(rec, rec.qemu)) throw precondition(`resuming qemu VM ${id}: the VM is not running`);
    await qmpCommand(rec.paths.qmpSocket, "cont");
  }

  /**
   * Gratuitous announcements of the VM's MAC (QEMU's self-announce: RARP frames from the
   * guest's MAC, several rounds a growing step apart), so bridges and switches on the way
   * learn where the VM is now; sent after a restore, when the VM may have moved hosts.
   */
  async announce(id: string): Promise<void> {
    const rec = this.mustGet(id);
    await qmpCommand(rec.paths.qmpSocket, "announce-self", { initial: 50, max: 1000, rounds: 8, step: 150 });
  }

  /** Freezes the vCPUs (QMP stop); the VM keeps its memory and devices, and QEMU keeps the run state across agent restarts. */
  async pause(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    if (!rec.qemu || !this.isOurs(rec, rec.qemu)) throw precondition(`pausing qemu VM ${id}: the VM is not running`);
    await qmpCommand(rec.paths.qmpSocket, "stop").catch((e: unknown) => Promise.reject(during(`pausing qemu VM ${id}`, e)));
    return this.runtime(rec);
  }

  async resume(id: string): Promise<VmRuntime> {
    const rec = this.mustGet(id);
    if (!rec.qemu || !this.isOurs(rec, rec.qemu)) throw precondition(`resuming qemu VM ${id}: the VM is not running`);
    await qmpCommand(rec.paths.qmpSocket, "cont").catch((e: unknown) => Promise.reject(during(`resuming qemu VM ${id}`, e)));
    return this.runtime(rec);
  }

  /**
   * Connects to the serial console socket. QEMU serves one client at a time (a second
   * connection would wait unseen), so a second console on the same VM is refused here.
   */
  async console(id: string): Promise<ConsoleStream> {
    const rec = this.mustGet(id);
    if (!rec.qemu || !this.isOurs(rec, rec.qemu)) throw precondition(`console of qemu VM ${id}: the VM is not running`);
    if (this.consoles.has(id)) throw precondition(`console of qemu VM ${id}: another console is attached`);
    this.consoles.add(id);
    try {
      return await connectConsole(rec.paths.consoleSocket, () => this.consoles.delete(id));
    } catch (e) {
      this.consoles.delete(id);
      throw during(`console of qemu VM ${id}`, e);
    }
  }

  async logPath(id: string): Promise<string> {
    return this.mustGet(id).paths.serialLog;
  }

  private async chooseAccel(): Promise<Accel> {
    if (this.accel) return this.accel;
    const pref = this.opts.accel ?? "auto";
    let kvmWorks = false;
    if (pref === "auto" && existsSync("/dev/kvm")) {
      // A broken KVM makes QEMU abort (a signal, which the runner throws for): that is a "no".
      const r = await this.run(kvmProbeArgv(this.opts.qemuBinary), { input: "quit\n", allowFail: true, timeoutMs: 10_000 }).catch(() => undefined);
      kvmWorks = r?.exitCode === 0;
    }
    this.accel = chooseAccel(pref, kvmWorks);
    return this.accel;
  }

  private mustGet(id: string): QemuRecord {
    const rec = this.records.get(id);
    if (!rec) throw notFound(`qemu VM ${id}`);
    return rec;
  }

  /** Alive, and really this VM's QEMU: its command line names this VM's QMP socket. */
  private isOurs(rec: QemuRecord, ref: ProcessRef): boolean {
    if (!isAlive(ref)) return false;
    try {
      return readFileSync(`/proc/${ref.pid}/cmdline`, "utf8").includes(rec.paths.qmpSocket);
    } catch {
      return false;
    }
  }

  /** Observed state: the process, then QEMU's own run state over QMP. */
  private async runtime(rec: QemuRecord): Promise<VmRuntime> {
    const base = { id: rec.spec.id, driver: this.name, spec: rec.spec, hostPort: rec.tap };
    if (!rec.qemu) {
      return rec.failure ? { ...base, state: "failed", reason: rec.failure } : { ...base, state: "stopped", reason: "" };
    }
    if (!this.isOurs(rec, rec.qemu)) {
      const reason = rec.failure ?? exitReason(rec.qemu.pid, readTail(rec.paths.qemuLog), readTail(rec.paths.serialLog));
      return { ...base, state: "failed", reason };
    }
    try {
      const st = await queryStatus(rec.paths.qmpSocket, 2_000);
      if (["internal-error", "guest-panicked", "shutdown", "io-error"].includes(st.status)) {
        return { ...base, state: "failed", reason: `qemu run state ${st.status}` };
      }
      // "paused" is a user's pause (QMP stop); migration states and the like stay "running".
      if (st.status === "paused") return { ...base, state: "paused", reason: "" };
      return { ...base, state: "running", reason: st.status === "running" ? "" : st.status };
    } catch (e) {
      return { ...base, state: "running", reason: `QMP unreachable: ${e instanceof Error ? e.message : String(e)}` };
    }
  }
}
