// A stand-in for a Firecracker process, for tests on machines without Firecracker or KVM.
// It serves the Firecracker API on a unix socket and checks every request against the API
// as documented (swagger firecracker.yaml 1.17.0-dev, docs/snapshotting, docs/mmds,
// docs/vsock.md), re-stated here as our own tables: the method and path, required fields,
// field types, enums and ranges, no unknown fields, paths that must exist inside the jail,
// and the state rules (pre-boot only calls, pause only when booted, snapshot create only when
// paused, snapshot load only on a fresh process). It records every call with its answer.
//
// fakeJailerSpawner() plays the jailer: it checks the jailer's argv, builds the chroot,
// starts a placeholder process (its PID is "Firecracker's") and a fake on the API socket.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import { type Server as NetServer, createServer as createNetServer } from "node:net";
import { basename, dirname, isAbsolute, join } from "node:path";
import { NoidError } from "../../common/errors.js";
import { type ProcessRef, type Spawner, isAlive, processRef, spawnDetached } from "../../common/run.js";

// ---- the API's shapes, as tables ----

interface Field {
  t: "string" | "integer" | "boolean" | "object" | "array";
  req?: true;
  enum?: readonly string[];
  min?: number;
  max?: number;
  /** Fields of an object; an object without props accepts any content (MMDS). */
  props?: Shape;
  items?: Field;
}
type Shape = Record<string, Field>;

const str: Field = { t: "string" };
const reqStr: Field = { t: "string", req: true };
const bool: Field = { t: "boolean" };
const TOKEN_BUCKET: Shape = {
  size: { t: "integer", req: true, min: 0 },
  refill_time: { t: "integer", req: true, min: 0 },
  one_time_burst: { t: "integer", min: 0 },
};
const RATE_LIMITER: Field = { t: "object", props: { bandwidth: { t: "object", props: TOKEN_BUCKET }, ops: { t: "object", props: TOKEN_BUCKET } } };

export const SHAPES = {
  MachineConfiguration: {
    vcpu_count: { t: "integer", req: true, min: 1, max: 32 },
    mem_size_mib: { t: "integer", req: true, min: 1 },
    smt: bool,
    track_dirty_pages: bool,
    cpu_template: { t: "string", enum: ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"] },
    huge_pages: { t: "string", enum: ["None", "Transparent", "2M"] },
  },
  BootSource: { kernel_image_path: reqStr, boot_args: str, initrd_path: str },
  Drive: {
    drive_id: reqStr,
    is_root_device: { t: "boolean", req: true },
    partuuid: str,
    cache_type: { t: "string", enum: ["Unsafe", "Writeback"] },
    is_read_only: bool,
    path_on_host: str,
    rate_limiter: RATE_LIMITER,
    io_engine: { t: "string", enum: ["Sync", "Async"] },
    socket: str,
  },
  NetworkInterface: {
    iface_id: reqStr,
    host_dev_name: reqStr,
    guest_mac: str,
    mtu: { t: "integer", min: 68, max: 65535 },
    rx_rate_limiter: RATE_LIMITER,
    tx_rate_limiter: RATE_LIMITER,
  },
  Vsock: { guest_cid: { t: "integer", req: true, min: 3 }, uds_path: reqStr, vsock_id: str },
  MmdsConfig: {
    network_interfaces: { t: "array", req: true, items: str },
    version: { t: "string", enum: ["V1", "V2"] },
    ipv4_address: str,
    imds_compat: bool,
  },
  Logger: {
    level: { t: "string", enum: ["Error", "Warning", "Info", "Debug", "Trace", "Off"] },
    log_path: str,
    show_level: bool,
    show_log_origin: bool,
    module: str,
  },
  Metrics: { metrics_path: reqStr },
  InstanceActionInfo: { action_type: { t: "string", req: true, enum: ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"] } },
  Vm: { state: { t: "string", req: true, enum: ["Paused", "Resumed"] } },
  SnapshotCreateParams: { mem_file_path: reqStr, snapshot_path: reqStr, snapshot_type: { t: "string", enum: ["Full", "Diff"] } },
  SnapshotLoadParams: {
    snapshot_path: reqStr,
    enable_diff_snapshots: bool,
    track_dirty_pages: bool,
    mem_file_path: str,
    mem_backend: { t: "object", props: { backend_type: { t: "string", req: true, enum: ["File", "Uffd"] }, backend_path: reqStr } },
    resume_vm: bool,
    network_overrides: { t: "array", items: { t: "object", props: { iface_id: reqStr, host_dev_name: reqStr } } },
    vsock_override: { t: "object", props: { uds_path: reqStr } },
    clock_realtime: bool,
  },
} satisfies Record<string, Shape>;

/** Every problem with `v` against `f`, each naming the field. */
export function validate(v: unknown, f: Field, at: string): string[] {
  const kind = Array.isArray(v) ? "array" : v === null ? "null" : typeof v;
  switch (f.t) {
    case "string":
      if (typeof v !== "string") return [`${at}: expected a string, got ${kind}`];
      if (f.enum && !f.enum.includes(v)) return [`${at}: "${v}" is not one of ${f.enum.join(", ")}`];
      return [];
    case "boolean":
      return typeof v === "boolean" ? [] : [`${at}: expected a boolean, got ${kind}`];
    case "integer":
      if (typeof v !== "number" || !Number.isInteger(v)) return [`${at}: expected an integer, got ${kind === "number" ? v : kind}`];
      if (f.min !== undefined && v < f.min) return [`${at}: ${v} is below ${f.min}`];
      if (f.max !== undefined && v > f.max) return [`${at}: ${v} is above ${f.max}`];
      return [];
    case "array":
      if (!Array.isArray(v)) return [`${at}: expected an array, got ${kind}`];
      return f.items ? v.flatMap((x, i) => validate(x, f.items!, `${at}[${i}]`)) : [];
    case "object": {
      if (kind !== "object") return [`${at}: expected an object, got ${kind}`];
      if (!f.props) return [];
      const o = v as Record<string, unknown>;
      const errs: string[] = [];
      for (const k of Object.keys(o)) if (!(k in f.props)) errs.push(`${at}.${k}: unknown field`);
      for (const [k, sub] of Object.entries(f.props)) {
        if (o[k] === undefined) {
          if (sub.req) errs.push(`${at}.${k}: missing required field`);
        } else errs.push(...validate(o[k], sub, `${at}.${k}`));
      }
      return errs;
    }
  }
}

// ---- the fake process ----

export type FakeState = "Not started" | "Running" | "Paused" | "Exited";

export interface RecordedCall {
  method: string;
  path: string;
  body: unknown;
  status: number;
  fault?: string;
}

interface Answer {
  status: number;
  body?: unknown;
}

class Refusal extends Error {}
const refuse = (why: string): never => {
  throw new Refusal(why);
};

/** What a snapshot holds in the fake: the device configuration (the fake's "vmstate"). */
interface FakeConfig {
  machine?: Record<string, unknown>;
  bootSource?: Record<string, unknown>;
  drives: Record<string, Record<string, unknown>>;
  ifaces: Record<string, Record<string, unknown>>;
  vsock?: Record<string, unknown>;
  mmdsConfig?: Record<string, unknown>;
}

export interface FakeOptions {
  socketPath: string;
  /** The jail's root: API paths resolve under it, as for a jailed Firecracker. Default: host paths. */
  root?: string;
  id?: string;
  /** Called when the fake "process" ends (guest reboot via SendCtrlAltDel, failed snapshot load). */
  onExit?: () => void;
}

export class FakeFirecracker {
  readonly calls: RecordedCall[] = [];
  state: FakeState = "Not started";
  /** Anything beyond logger/metrics configured: snapshot load is then refused. */
  private configured = false;
  private logger = false;
  private metrics = false;
  config: FakeConfig = { drives: {}, ifaces: {} };
  mmds: unknown;
  private server?: Server;
  private vsockServer?: NetServer;
  /** Guest-agent answers held while the microVM is paused (its vCPUs run nothing). */
  private frozen: (() => void)[] = [];

  constructor(private readonly opts: FakeOptions) {}

  async listen(): Promise<void> {
    mkdirSync(dirname(this.opts.socketPath), { recursive: true });
    const server = createServer((req, res) => void this.serve(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.opts.socketPath, () => resolve());
    });
  }

  async close(): Promise<void> {
    const s = this.server;
    const v = this.vsockServer;
    delete this.server;
    delete this.vsockServer;
    await Promise.all([
      s ? new Promise<void>((r) => s.close(() => r())).then(() => s.closeAllConnections()) : undefined,
      v ? new Promise<void>((r) => v.close(() => r())) : undefined,
    ]);
  }

  /** The calls as "METHOD path" lines, for comparing sequences. */
  sequence(): string[] {
    return this.calls.map((c) => `${c.method} ${c.path}${c.status >= 300 ? ` -> ${c.status}` : ""}`);
  }

  private jailPath(p: string): string {
    return this.opts.root ? join(this.opts.root, isAbsolute(p) ? p.slice(1) : p) : p;
  }

  private mustExist(field: string, p: unknown): void {
    if (typeof p === "string" && !existsSync(this.jailPath(p))) refuse(`${field}: no such file ${p} in the jail`);
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    const method = req.method ?? "";
    const path = req.url ?? "";
    let body: unknown;
    let answer: Answer;
    try {
      if (text.length) {
        if (!String(req.headers["content-type"] ?? "").includes("application/json")) refuse("bodies must be application/json");
        try {
          body = JSON.parse(text);
        } catch {
          refuse("the body is not valid JSON");
        }
      }
      answer = this.handle(method, path, body);
    } catch (e) {
      if (!(e instanceof Refusal)) throw e;
      answer = { status: 400, body: { fault_message: e.message } };
    }
    const fault = (answer.body as { fault_message?: string } | undefined)?.fault_message;
    this.calls.push({ method, path, body, status: answer.status, ...(fault ? { fault } : {}) });
    if (answer.body === undefined) res.writeHead(answer.status).end();
    else res.writeHead(answer.status, { "Content-Type": "application/json" }).end(JSON.stringify(answer.body));
    if (this.state === "Exited") setImmediate(() => this.opts.onExit?.());
  }

  private check(body: unknown, shape: Shape, name: string): Record<string, unknown> {
    if (body === undefined) refuse(`${name}: a body is required`);
    const errs = validate(body, { t: "object", props: shape }, name);
    if (errs.length) refuse(errs.join("; "));
    return body as Record<string, unknown>;
  }

  private preBoot(what: string): void {
    if (this.state !== "Not started") refuse(`${what} is only allowed before the microVM starts (state: ${this.state})`);
    this.configured = true;
  }

  private handle(method: string, path: string, body: unknown): Answer {
    const ok: Answer = { status: 204 };
    const route = `${method} ${path.replace(/^\/(drives|network-interfaces)\/[^/]+$/, "/$1/{id}")}`;
    const param = decodeURIComponent(path.split("/")[2] ?? "");
    switch (route) {
      case "GET /":
        return { status: 200, body: { app_name: "Firecracker", id: this.opts.id ?? "anonymous-instance", state: this.state, vmm_version: "fake" } };
      case "PUT /logger": {
        const b = this.check(body, SHAPES.Logger, "Logger");
        if (this.logger) refuse("the logger is already initialized");
        this.mustExist("log_path", b.log_path);
        this.logger = true;
        return ok;
      }
      case "PUT /metrics": {
        const b = this.check(body, SHAPES.Metrics, "Metrics");
        if (this.metrics) refuse("the metrics system is already initialized");
        this.mustExist("metrics_path", b.metrics_path);
        this.metrics = true;
        return ok;
      }
      case "PUT /machine-config": {
        const b = this.check(body, SHAPES.MachineConfiguration, "MachineConfiguration");
        this.preBoot("PUT /machine-config");
        if (b.smt === true && b.vcpu_count !== 1 && (b.vcpu_count as number) % 2 !== 0) refuse("with smt the vCPU count must be 1 or even");
        this.config.machine = b;
        return ok;
      }
      case "PUT /boot-source": {
        const b = this.check(body, SHAPES.BootSource, "BootSource");
        this.preBoot("PUT /boot-source");
        this.mustExist("kernel_image_path", b.kernel_image_path);
        this.mustExist("initrd_path", b.initrd_path);
        this.config.bootSource = b;
        return ok;
      }
      case "PUT /drives/{id}": {
        const b = this.check(body, SHAPES.Drive, "Drive");
        this.preBoot("PUT /drives");
        if (b.drive_id !== param) refuse(`drive_id "${String(b.drive_id)}" does not match the path's "${param}"`);
        if (b.socket === undefined && (b.path_on_host === undefined || b.is_read_only === undefined)) {
          refuse("a virtio-block drive needs path_on_host and is_read_only");
        }
        this.mustExist("path_on_host", b.path_on_host);
        const otherRoot = Object.values(this.config.drives).some((d) => d.is_root_device && d.drive_id !== b.drive_id);
        if (b.is_root_device && otherRoot) refuse("a root device is already configured");
        this.config.drives[param] = b;
        return ok;
      }
      case "PUT /network-interfaces/{id}": {
        const b = this.check(body, SHAPES.NetworkInterface, "NetworkInterface");
        this.preBoot("PUT /network-interfaces");
        if (b.iface_id !== param) refuse(`iface_id "${String(b.iface_id)}" does not match the path's "${param}"`);
        if (b.guest_mac !== undefined && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(String(b.guest_mac))) refuse(`guest_mac "${String(b.guest_mac)}" is not a MAC address`);
        this.config.ifaces[param] = b;
        return ok;
      }
      case "PUT /vsock": {
        const b = this.check(body, SHAPES.Vsock, "Vsock");
        this.preBoot("PUT /vsock");
        if (existsSync(this.jailPath(String(b.uds_path)))) refuse(`uds_path ${String(b.uds_path)}: address in use`);
        this.config.vsock = b;
        return ok;
      }
      case "PUT /mmds/config": {
        const b = this.check(body, SHAPES.MmdsConfig, "MmdsConfig");
        this.preBoot("PUT /mmds/config");
        for (const i of b.network_interfaces as string[]) {
          if (!this.config.ifaces[i]) refuse(`network interface "${i}" is not configured`);
        }
        if (b.ipv4_address !== undefined && !/^169\.254\.\d{1,3}\.\d{1,3}$/.test(String(b.ipv4_address))) refuse("ipv4_address must be link-local");
        this.config.mmdsConfig = b;
        return ok;
      }
      case "PUT /mmds":
        if (body === undefined || typeof body !== "object" || body === null || Array.isArray(body)) refuse("MMDS contents must be a JSON object");
        this.mmds = body;
        return ok;
      case "GET /mmds":
        return this.mmds === undefined ? { status: 404, body: { fault_message: "the MMDS data store is empty" } } : { status: 200, body: this.mmds };
      case "PUT /actions":
        return this.action(String(this.check(body, SHAPES.InstanceActionInfo, "InstanceActionInfo").action_type));
      case "PATCH /vm": {
        const b = this.check(body, SHAPES.Vm, "Vm");
        if (this.state !== "Running" && this.state !== "Paused") refuse(`the microVM is not booted (state: ${this.state})`);
        this.state = b.state === "Paused" ? "Paused" : "Running";
        // Resumed vCPUs answer what reached the guest while it was paused.
        if (this.state === "Running") for (const f of this.frozen.splice(0)) f();
        return ok;
      }
      case "PUT /snapshot/create": {
        const b = this.check(body, SHAPES.SnapshotCreateParams, "SnapshotCreateParams");
        if (this.state !== "Paused") refuse(`snapshots are only created from a paused microVM (state: ${this.state})`);
        if (b.snapshot_type === "Diff" && this.config.machine?.track_dirty_pages !== true) refuse("diff snapshots need track_dirty_pages");
        for (const k of ["snapshot_path", "mem_file_path"] as const) {
          if (!existsSync(dirname(this.jailPath(String(b[k]))))) refuse(`${k}: directory of ${String(b[k])} does not exist in the jail`);
        }
        writeFileSync(this.jailPath(String(b.snapshot_path)), JSON.stringify({ fakeVmstate: 1, config: this.config, mmds: this.mmds }));
        writeFileSync(this.jailPath(String(b.mem_file_path)), `fake guest memory of ${String(this.config.machine?.mem_size_mib)} MiB`);
        return ok;
      }
      case "PUT /snapshot/load":
        return this.load(this.check(body, SHAPES.SnapshotLoadParams, "SnapshotLoadParams"));
      default:
        return { status: 400, body: { fault_message: `invalid request method and/or path: ${method} ${path}` } };
    }
  }

  private action(type: string): Answer {
    if (type === "InstanceStart") {
      if (this.state !== "Not started") refuse(`the microVM is already started (state: ${this.state})`);
      if (!this.config.bootSource) refuse("cannot start the microVM without a boot source (kernel)");
      this.state = "Running";
      this.serveVsock();
    } else if (type === "SendCtrlAltDel") {
      if (this.state !== "Running") refuse(`SendCtrlAltDel needs a running microVM (state: ${this.state})`);
      // The guest reboots; with reboot=k on its command line, Firecracker exits.
      const args = String(this.config.bootSource?.boot_args ?? "");
      if (/(^| )reboot=k( |$)/.test(args)) this.state = "Exited";
    } else if (type === "FlushMetrics") {
      if (!this.metrics) refuse("the metrics system is not initialized");
    }
    return { status: 204 };
  }

  private load(b: Record<string, unknown>): Answer {
    if (this.state !== "Not started" || this.configured) refuse("snapshot load is only allowed on a fresh microVM (only logger and metrics may be configured first)");
    if ((b.mem_file_path === undefined) === (b.mem_backend === undefined)) refuse("exactly one of mem_file_path and mem_backend is required");
    const memPath = (b.mem_backend as { backend_path?: string } | undefined)?.backend_path ?? b.mem_file_path;
    try {
      this.mustExist("mem", memPath);
      this.mustExist("snapshot_path", b.snapshot_path);
      const snap = JSON.parse(readFileSync(this.jailPath(String(b.snapshot_path)), "utf8")) as { fakeVmstate?: number; config: FakeConfig; mmds: unknown };
      if (snap.fakeVmstate !== 1) refuse("snapshot_path is not a microVM state file");
      for (const o of (b.network_overrides as { iface_id: string; host_dev_name: string }[] | undefined) ?? []) {
        const iface = snap.config.ifaces[o.iface_id];
        if (!iface) throw new Refusal(`network override for unknown interface "${o.iface_id}"`);
        iface.host_dev_name = o.host_dev_name;
      }
      for (const d of Object.values(snap.config.drives)) this.mustExist("drive in snapshot", d.path_on_host);
      this.config = snap.config;
      this.mmds = snap.mmds;
    } catch (e) {
      // A failed load ends the Firecracker process (docs/snapshotting/snapshot-support.md).
      this.state = "Exited";
      if (e instanceof Refusal) throw e;
      refuse(`loading the snapshot failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.configured = true;
    this.state = b.resume_vm === true ? "Running" : "Paused";
    this.serveVsock();
    return { status: 204 };
  }

  /**
   * The vsock's host socket: Firecracker's handshake ("CONNECT <port>" -> "OK <n>"), then a
   * toy guest agent: it answers a JSON request line with the argv joined as stdout ("env" prints
   * the request's env, "false" exits 1, "sleep" never answers).
   */
  private serveVsock(): void {
    const uds = this.config.vsock?.uds_path;
    if (typeof uds !== "string" || this.vsockServer) return;
    const server = createNetServer((sock) => {
      let buf = "";
      let connected = false;
      sock.setEncoding("utf8");
      sock.on("data", (chunk: string) => {
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!connected) {
            if (!/^CONNECT \d+$/.test(line)) return void sock.destroy();
            connected = true;
            sock.write("OK 1073741824\n");
          } else {
            const { argv, env } = JSON.parse(line) as { argv: string[]; env?: Record<string, string> };
            if (argv[0] === "sleep") continue; // never answers: for timeouts
            const stdout = argv[0] === "env" ? Object.entries(env ?? {}).map(([k, v]) => `${k}=${v}`).join("\n") : argv.join(" ");
            const answer = () => void sock.write(`${JSON.stringify({ stdout, stderr: "", exitCode: argv[0] === "false" ? 1 : 0 })}\n`);
            // A paused guest runs nothing: its agent answers only once resumed.
            if (this.state === "Paused") this.frozen.push(answer);
            else answer();
          }
        }
      });
      sock.on("error", () => undefined);
    });
    server.listen(this.jailPath(uds));
    this.vsockServer = server;
  }
}

// ---- the fake jailer ----

export interface FakeJail {
  argv: string[];
  root: string;
  ref: ProcessRef;
  fake: FakeFirecracker;
}

export type FakeJailerSpawner = Spawner & { jails: FakeJail[]; closeAll(): Promise<void> };

/** Checks a jailer argv as the jailer would (docs/jailer.md); returns its parts. */
export function parseJailerArgv(argv: readonly string[]): { id: string; execFile: string; chrootBase: string; netns?: string; apiSock: string; cgroups: string[] } {
  const sep = argv.indexOf("--");
  const own = argv.slice(1, sep < 0 ? undefined : sep);
  const fc = sep < 0 ? [] : argv.slice(sep + 1);
  const flags = new Map<string, string[]>();
  for (let i = 0; i < own.length; i += 2) {
    const k = own[i]!;
    const v = own[i + 1];
    if (!k.startsWith("--") || v === undefined) throw new NoidError("INVALID_ARGUMENT", `jailer: bad argument ${k}`);
    flags.set(k, [...(flags.get(k) ?? []), v]);
  }
  const known = ["--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir", "--netns", "--cgroup-version", "--cgroup", "--parent-cgroup", "--resource-limit"];
  for (const k of flags.keys()) if (!known.includes(k)) throw new NoidError("INVALID_ARGUMENT", `jailer: unknown flag ${k}`);
  const one = (k: string, required = true): string | undefined => {
    const v = flags.get(k);
    if (v && v.length > 1) throw new NoidError("INVALID_ARGUMENT", `jailer: ${k} given twice`);
    if (required && !v) throw new NoidError("INVALID_ARGUMENT", `jailer: ${k} is required`);
    return v?.[0];
  };
  const id = one("--id")!;
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) throw new NoidError("INVALID_ARGUMENT", `jailer: invalid id ${id}`);
  const execFile = one("--exec-file")!;
  if (!basename(execFile).includes("firecracker")) throw new NoidError("INVALID_ARGUMENT", `jailer: exec file ${execFile} is not firecracker`);
  for (const k of ["--uid", "--gid"]) if (!/^\d+$/.test(one(k)!)) throw new NoidError("INVALID_ARGUMENT", `jailer: ${k} must be a number`);
  const chrootBase = one("--chroot-base-dir", false) ?? "/srv/jailer";
  const netns = one("--netns", false);
  if (netns !== undefined && !existsSync(netns)) throw new NoidError("INVALID_ARGUMENT", `jailer: netns ${netns} does not exist`);
  const version = one("--cgroup-version", false);
  if (version !== undefined && version !== "1" && version !== "2") throw new NoidError("INVALID_ARGUMENT", `jailer: cgroup version ${version}`);
  const cgroups = flags.get("--cgroup") ?? [];
  for (const c of cgroups) if (!/^[a-z_]+\.[a-z_.]+=.+$/.test(c)) throw new NoidError("INVALID_ARGUMENT", `jailer: bad cgroup ${c}`);
  const sockAt = fc.indexOf("--api-sock");
  const apiSock = sockAt >= 0 ? fc[sockAt + 1] : "/run/firecracker.socket";
  if (apiSock === undefined) throw new NoidError("INVALID_ARGUMENT", "firecracker: --api-sock needs a value");
  return { id, execFile, chrootBase, ...(netns !== undefined ? { netns } : {}), apiSock, cgroups };
}

/** A Spawner to pass as the driver's `spawner`: every "jailer" start becomes a fake Firecracker. */
export function fakeJailerSpawner(): FakeJailerSpawner {
  const jails: FakeJail[] = [];
  const watchers: NodeJS.Timeout[] = [];
  const spawner: Spawner = async (argv, opts = {}) => {
    const p = parseJailerArgv(argv);
    const root = join(p.chrootBase, basename(p.execFile), p.id, "root");
    mkdirSync(root, { recursive: true });
    const socketPath = join(root, p.apiSock);
    if (existsSync(socketPath)) throw new NoidError("INTERNAL", `firecracker: API socket ${socketPath} already exists`);
    // The placeholder for Firecracker's process: the driver signals this PID.
    const pid = await spawnDetached(["sleep", "infinity"], opts.logFile !== undefined ? { logFile: opts.logFile } : {});
    const ref = processRef(pid)!;
    const fake = new FakeFirecracker({
      socketPath,
      root,
      id: p.id,
      onExit: () => {
        if (isAlive(ref)) process.kill(ref.pid, "SIGKILL");
      },
    });
    await fake.listen();
    jails.push({ argv: [...argv], root, ref, fake });
    // When the process dies (killed by the driver), so does its API.
    const w = setInterval(() => {
      if (!isAlive(ref)) {
        clearInterval(w);
        void fake.close();
      }
    }, 20);
    w.unref();
    watchers.push(w);
    return pid;
  };
  return Object.assign(spawner, {
    jails,
    async closeAll() {
      for (const w of watchers) clearInterval(w);
      for (const j of jails) {
        if (isAlive(j.ref)) process.kill(j.ref.pid, "SIGKILL");
        await j.fake.close();
      }
    },
  });
}
