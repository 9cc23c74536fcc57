// Agent configuration: one schema, defaults in it, validated once in main. The file is
// TOML with snake_case keys; layers are merged file < NOID_* env < flags before parsing,
// so an error names the field whatever layer it came from.
import { existsSync, readFileSync } from "node:fs";
import { cpus, hostname, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseToml } from "smol-toml";
import { z } from "zod";
import { NoidError, invalid } from "../common/errors.js";
import { isDnsLabel } from "../common/names.js";

export const DEFAULT_CONFIG_FILE = "/etc/noid/agent.toml";

const positive = z.number().int().positive();

export const DRIVER_NAMES = ["sandbox", "qemu", "firecracker"] as const;
export type DriverName = (typeof DRIVER_NAMES)[number];

/** Where deploy/guest/build.sh puts the test guest: <repo>/.noid/guest, found from this file (source or dist/). */
export function defaultGuestDir(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, "package.json")) && dirname(d) !== d) d = dirname(d);
  return join(d, ".noid", "guest");
}

const qemuSchema = z
  .object({
    /** vmlinuz, initramfs.cpio.gz and rootfs.ext4 as deploy/guest/build.sh makes them. */
    guest_dir: z.string().min(1).default(defaultGuestDir),
    /** Override the guest's kernel / initramfs (default: in guest_dir). */
    kernel: z.string().min(1).optional(),
    initrd: z.string().min(1).optional(),
    /** Named base images VmSpec.image refers to (default: guest_dir). */
    images_dir: z.string().min(1).optional(),
    accel: z.enum(["auto", "kvm", "tcg"]).default("auto"),
    binary: z.string().min(1).default("qemu-system-x86_64"),
    qemu_img: z.string().min(1).default("qemu-img"),
    /** How long a start waits for the guest agent to answer. */
    boot_timeout_ms: positive.default(60_000),
  })
  .strict();

const firecrackerSchema = z
  .object({
    binary: z.string().min(1).default("/usr/local/bin/firecracker"),
    jailer: z.string().min(1).default("/usr/local/bin/jailer"),
    /** Uncompressed guest kernel (vmlinux); required when the driver is enabled. */
    kernel: z.string().min(1).optional(),
    initrd: z.string().min(1).optional(),
    /** Base images VmSpec.image names; required when the driver is enabled. */
    image_dir: z.string().min(1).optional(),
    chroot_base: z.string().min(1).default("/srv/jailer"),
    /** Firecracker runs as uid:gid once the jailer drops privileges. */
    uid: z.number().int().nonnegative().default(65534),
    gid: z.number().int().nonnegative().default(65534),
  })
  .strict();

export const agentConfigSchema = z
  .object({
    /** "host:port", "dns:///name:port", "unix:/path/to.sock", or replicas: ["a:7654","b:7654"] or "a:7654,b:7654". */
    coordinator: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).transform((c) => (typeof c === "string" ? c : c.join(","))),
    /** Bearer token file: only for a plaintext (--insecure) coordinator. */
    token_file: z.string().min(1).optional(),
    /** One-time join token (noidctl host join-token), used once to get a host certificate. */
    join_token_file: z.string().min(1).optional(),
    /** SHA-256 fingerprint of the coordinator's CA, to fetch and pin it at the first join. */
    ca_fingerprint: z.string().optional(),
    name: z
      .string()
      .default(() => hostname().toLowerCase().split(".")[0] ?? "host")
      .refine(isDnsLabel, "must be a DNS label (a-z, 0-9, '-')"),
    /** Underlay address other hosts reach this one on. */
    address: z.string().default(""),
    /** Interface tenant egress is NATed to; empty: the default route's, else the one holding `address`. */
    uplink: z
      .string()
      .regex(/^([A-Za-z0-9_.-]{1,15})?$/, "an interface name")
      .default(""),
    state_dir: z.string().min(1).default("/var/lib/noid/agent"),
    /** Prefix of machine-wide names (VM namespaces); unique per agent on one machine. */
    ns_prefix: z
      .string()
      .regex(/^[a-z][a-z0-9-]{0,15}$/, "1-16 of a-z, 0-9, '-', starting with a letter")
      .default("noid"),
    capacity: z
      .object({
        vcpus: positive.default(() => cpus().length),
        memory_mb: positive.default(() => Math.floor(totalmem() / 1024 / 1024)),
        disk_gb: positive.default(20),
      })
      .prefault({}),
    labels: z.record(z.string(), z.string()).default({}),
    /** Drivers to run, the default (for VMs that name none) first. */
    drivers: z
      .array(z.enum(DRIVER_NAMES))
      .min(1)
      .default(["sandbox"])
      .refine((d) => new Set(d).size === d.length, "lists a driver twice"),
    qemu: qemuSchema.prefault({}),
    firecracker: firecrackerSchema.prefault({}),
    /** Plaintext gRPC: only for a coordinator on a unix socket or loopback in tests and the demo. */
    insecure: z.boolean().default(false),
    tls: z
      .object({ ca_file: z.string().optional(), cert_file: z.string().optional(), key_file: z.string().optional() })
      .default({}),
    /** This host's WireGuard interface; lab hosts sharing one machine need distinct names. */
    wg_interface: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, "an interface name (1-15 of A-Z a-z 0-9 _ . -)").default("wg-noid"),
    wg_port: z.number().int().min(1).max(65535).default(51820),
    /** MTU of the underlay uplink; tenant networks get it minus the WireGuard and VXLAN overhead. */
    uplink_mtu: z.number().int().min(1280).max(9216).default(1500),
    log_level: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
    /** Hardening checks reported to the coordinator (see deploy/harden.ts). */
    posture: z
      .object({
        /** Filesystem root whose /etc is checked. */
        root: z.string().min(1).default("/"),
        ssh_port: z.number().int().min(1).max(65535).default(22),
        /** Ports this host may open to anyone besides SSH (e.g. 7654 when a coordinator runs here). */
        tcp: z.array(z.number().int().min(1).max(65535)).default([]),
        udp: z.array(z.number().int().min(1).max(65535)).default([51820]),
        interval_seconds: z.number().int().min(10).max(86_400).default(600),
      })
      .strict()
      .prefault({}),
    /** Network behaviour monitoring of the VMs (agent/network/monitor-*.ts). */
    monitor: z
      .object({
        enabled: z.boolean().default(true),
        /** A target stays in a VM's scan window this long after the VM last tried it. */
        window_seconds: z.number().int().min(5).max(3600).default(60),
        /** Distinct ports of one address tried within the window that make a port scan. */
        scan_ports: z.number().int().min(2).max(65535).default(64),
        /** Distinct addresses tried within the window that make an address scan. */
        scan_hosts: z.number().int().min(2).max(1_000_000).default(32),
        /** Per VM and kind, at most one security event this often. */
        event_interval_seconds: z.number().int().min(1).max(3600).default(10),
        /** Largest scan set per VM (elements); a full set stops growing, detection still fires. */
        set_size: z.number().int().min(256).max(1_048_576).default(16_384),
      })
      .strict()
      .prefault({})
      .refine((m) => m.scan_ports <= m.set_size && m.scan_hosts <= m.set_size, "scan_ports and scan_hosts must not exceed set_size"),
    /** Run the HTTP ingress: nginx proxying every HTTP route (noidctl expose --http) to its VM over the mesh. */
    ingress: z.boolean().default(false),
    /** Port the ingress listens on, at the host's address. */
    ingress_port: z.number().int().min(1).max(65535).default(80),
    /** The nginx binary (Debian's). */
    nginx_binary: z.string().min(1).default("/usr/sbin/nginx"),
    /** How often the agent sends its NAT/firewall usage counters to the coordinator. */
    usage_interval_seconds: z.number().int().min(1).max(3600).default(30),
    /** Prometheus /metrics over HTTP on this host:port; "" (the default) serves none. */
    metrics_listen: z
      .string()
      .regex(/^((\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5})?$/, "must be host:port (or empty for none)")
      .default(""),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (!c.drivers.includes("firecracker")) return;
    for (const k of ["kernel", "image_dir"] as const) {
      if (!c.firecracker[k]) ctx.addIssue({ code: "custom", path: ["firecracker", k], message: "is required when drivers includes firecracker" });
    }
  })
  .transform((c) => ({
    coordinator: c.coordinator,
    tokenFile: c.token_file,
    joinTokenFile: c.join_token_file,
    caFingerprint: c.ca_fingerprint,
    name: c.name,
    address: c.address,
    uplink: c.uplink,
    stateDir: c.state_dir,
    nsPrefix: c.ns_prefix,
    capacity: { vcpus: c.capacity.vcpus, memoryMb: c.capacity.memory_mb, diskGb: c.capacity.disk_gb },
    labels: c.labels,
    drivers: c.drivers,
    qemu: {
      guestDir: c.qemu.guest_dir,
      kernel: c.qemu.kernel,
      initrd: c.qemu.initrd,
      imagesDir: c.qemu.images_dir,
      accel: c.qemu.accel,
      binary: c.qemu.binary,
      qemuImg: c.qemu.qemu_img,
      bootTimeoutMs: c.qemu.boot_timeout_ms,
    },
    firecracker: {
      binary: c.firecracker.binary,
      jailer: c.firecracker.jailer,
      kernel: c.firecracker.kernel ?? "",
      initrd: c.firecracker.initrd,
      imageDir: c.firecracker.image_dir ?? "",
      chrootBase: c.firecracker.chroot_base,
      uid: c.firecracker.uid,
      gid: c.firecracker.gid,
    },
    insecure: c.insecure,
    tls: { caFile: c.tls.ca_file, certFile: c.tls.cert_file, keyFile: c.tls.key_file },
    posture: {
      root: c.posture.root,
      policy: { sshPort: c.posture.ssh_port, tcp: c.posture.tcp, udp: c.posture.udp },
      intervalMs: c.posture.interval_seconds * 1000,
    },
    logLevel: c.log_level,
    monitor: {
      enabled: c.monitor.enabled,
      windowSeconds: c.monitor.window_seconds,
      setSize: c.monitor.set_size,
      thresholds: { scanPorts: c.monitor.scan_ports, scanHosts: c.monitor.scan_hosts, eventIntervalMs: c.monitor.event_interval_seconds * 1000 },
    },
    metricsListen: c.metrics_listen,
    usageIntervalMs: c.usage_interval_seconds * 1000,
    wgInterface: c.wg_interface,
    wgPort: c.wg_port,
    uplinkMtu: c.uplink_mtu,
    ingress: { enabled: c.ingress, port: c.ingress_port, binary: c.nginx_binary },
  }));

export type AgentConfig = z.output<typeof agentConfigSchema>;

/** Raw layers are plain objects in the file's keys; later layers win, nested tables merge. */
export function mergeLayers(...layers: Record<string, unknown>[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const layer of layers) {
    for (const [k, v] of Object.entries(layer)) {
      if (v === undefined) continue;
      const prev = out[k];
      out[k] =
        isPlain(prev) && isPlain(v) ? mergeLayers(prev as Record<string, unknown>, v as Record<string, unknown>) : v;
    }
  }
  return out;
}

const isPlain = (v: unknown): boolean => typeof v === "object" && v !== null && !Array.isArray(v);

export function parseAgentConfig(raw: Record<string, unknown>): AgentConfig {
  const r = agentConfigSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue?.path.join(".") || "config";
    throw invalid(field, issue?.message ?? "invalid");
  }
  return r.data;
}

/** Reads a TOML file; a missing default file is an empty layer, a missing named one is an error. */
export function readConfigFile(path: string, required: boolean): Record<string, unknown> {
  if (!existsSync(path)) {
    if (required) throw new NoidError("INVALID_ARGUMENT", `config file ${path} does not exist`, { field: "config" });
    return {};
  }
  try {
    return parseToml(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new NoidError("INVALID_ARGUMENT", `config file ${path}: ${e instanceof Error ? e.message : String(e)}`, {
      field: "config",
      cause: e,
    });
  }
}

/**
 * The bearer token: from the environment if given there, else from
 * token_file (trimmed). Only a plaintext coordinator takes one; over TLS
 * the host certificate is the credential and this returns undefined.
 */
export function readToken(cfg: AgentConfig, envToken: string | undefined): string | undefined {
  if (!cfg.insecure) {
    if (envToken || cfg.tokenFile) throw invalid("token_file", "bearer tokens are for --insecure coordinators only; over TLS join with --join-token-file");
    return undefined;
  }
  if (envToken) return envToken;
  if (!cfg.tokenFile) throw invalid("token_file", "is required with --insecure (or set NOID_TOKEN)");
  try {
    const t = readFileSync(cfg.tokenFile, "utf8").trim();
    if (!t) throw new Error("file is empty");
    return t;
  } catch (e) {
    throw invalid("token_file", `${cfg.tokenFile}: ${e instanceof Error ? e.message : String(e)}`);
  }
}
