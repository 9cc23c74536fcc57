// Coordinator configuration: one zod schema holds every default; the file
// (/etc/noid/coordinator.toml or --config), NOID_* env and flags are merged
// in that order of increasing precedence and validated once, in main.
import { readFileSync, existsSync } from "node:fs";
import { parse as parseToml } from "smol-toml";
import { z } from "zod";
import { NoidError } from "../common/errors.js";
import { parseMeshCidr } from "./state/host-repo.js";
import { NETWORK_SETTINGS_DEFAULTS, NetworkSettingsSchema, networkSettings } from "./networks/settings.js";

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, "must be host:port");

export const CoordinatorConfigSchema = z
  .object({
    server: z
      .object({
        listen: hostPort.default("0.0.0.0:7654"),
        /** Also serve on this unix socket (agents in the local demo reach us through it). */
        unix_socket: z.string().default(""),
        /** An operator's server certificate (PEM chain) and key; empty: one signed by the cluster CA is generated. */
        tls_cert: z.string().default(""),
        tls_key: z.string().default(""),
        /** Extra DNS names / IP addresses of the generated server certificate (localhost and loopback are always in). */
        tls_sans: z.array(z.string().regex(/^[A-Za-z0-9.:-]{1,253}$/, "must be a DNS name or IP address")).default([]),
        /** Plaintext gRPC. Only with an explicit opt-in; a warning is logged. */
        insecure: z.boolean().default(false),
        /** Prometheus /metrics over HTTP on this host:port; "" (the default) serves none. */
        metrics_listen: z.union([z.literal(""), hostPort]).default(""),
      })
      .strict()
      .default({ listen: "0.0.0.0:7654", unix_socket: "", tls_cert: "", tls_key: "", tls_sans: [], insecure: false, metrics_listen: "" }),
    state_dir: z.string().min(1).default("/var/lib/noid"),
    etcd: z
      .object({
        /** Empty: start and supervise an embedded single-node etcd under state_dir. */
        endpoints: z.array(z.string().url()).default([]),
        prefix: z.string().regex(/^\/.*\/$/, "must start and end with /").default("/noid/v1/"),
        /** Port of the embedded etcd's client listener (127.0.0.1); 0 picks a free port. */
        embedded_client_port: z.number().int().min(0).max(65535).default(0),
        /** Compact history older than this many revisions, periodically. */
        compact_keep_revisions: z.number().int().min(100).default(10_000),
      })
      .strict()
      .default({ endpoints: [], prefix: "/noid/v1/", embedded_client_port: 0, compact_keep_revisions: 10_000 }),
    limits: z
      .object({
        max_vms_per_user: z.number().int().min(0).default(10),
        max_total_vms: z.number().int().min(0).default(100),
        max_vcpus_per_vm: z.number().int().min(1).default(8),
        max_memory_per_vm: z.number().int().min(16).default(16384),
        max_disk_per_vm: z.number().int().min(1).default(512),
        /** Exposed ports plus HTTP routes a user may hold (noidctl expose). */
        max_exposed_ports_per_user: z.number().int().min(0).default(10),
      })
      .strict()
      .default({ max_vms_per_user: 10, max_total_vms: 100, max_vcpus_per_vm: 8, max_memory_per_vm: 16384, max_disk_per_vm: 512, max_exposed_ports_per_user: 10 }),
    scheduler: z
      .object({
        policy: z.enum(["spread", "binpack"]).default("spread"),
        // Place nothing on hosts whose agent reports a failing (or no) hardening posture.
        require_posture: z.boolean().default(false),
      })
      .strict()
      .default({ policy: "spread", require_posture: false }),
    agents: z
      .object({
        lease_ttl_seconds: z.number().int().min(2).max(300).default(10),
        heartbeat_interval_ms: z.number().int().min(100).max(60_000).default(2000),
        /** Lifetime of a host's client certificate; agents renew at 2/3 of it. */
        cert_ttl_seconds: z.number().int().min(5).max(90 * 86_400).default(86_400),
      })
      .strict()
      .default({ lease_ttl_seconds: 10, heartbeat_interval_ms: 2000, cert_ttl_seconds: 86_400 }),
    ha: z
      .object({
        /** TTL of the leader's etcd lease: a dead leader is replaced about this long after it stops renewing. */
        leader_lease_seconds: z.number().int().min(2).max(60).default(5),
        /** This replica's id in the leader election; empty: a random id kept in <state_dir>/node-id. */
        node_id: z.string().max(200).default(""),
      })
      .strict()
      .default({ leader_lease_seconds: 5, node_id: "" }),
    host_loss: z
      .object({
        /** What happens to the VMs of a host whose agent's lease expired, for VMs that do not say (spec.host_loss). */
        policy: z.enum(["keep", "reschedule"]).default("keep"),
        /** How long a host stays lost before its reschedule-policy VMs move (and before its agent stops them). */
        grace_seconds: z.number().int().min(1).max(86_400).default(60),
      })
      .strict()
      .default({ policy: "keep", grace_seconds: 60 }),
    networks: NetworkSettingsSchema.default(NETWORK_SETTINGS_DEFAULTS),
    mesh: z
      .object({
        /** Each host gets one address in this range on its WireGuard interface. */
        cidr: z.string().default("100.64.0.0/16"),
      })
      .strict()
      .default({ cidr: "100.64.0.0/16" }),
    auth: z
      .object({
        /** A rotated token's old secret keeps working this long, then dies. */
        token_rotation_overlap_seconds: z.number().int().min(0).max(86_400).default(60),
        /** Failed authentications per source (peer address) per minute before it is locked out. */
        max_failures_per_minute: z.number().int().min(1).max(10_000).default(10),
        /** How long a locked-out source is refused. */
        failure_cooldown_seconds: z.number().int().min(1).max(86_400).default(60),
        /** auth.failure audit events: at most one per source per minute, and at most this many per minute in all. */
        failure_audit_per_minute: z.number().int().min(1).max(10_000).default(60),
        /** Lifetime of a login session (noidctl login). */
        session_ttl_seconds: z.number().int().min(60).max(7 * 86_400).default(12 * 3600),
        /** Issuer name shown in authenticator apps. */
        totp_issuer: z.string().min(1).max(64).default("noid"),
      })
      .strict()
      .default({
        token_rotation_overlap_seconds: 60,
        max_failures_per_minute: 10,
        failure_cooldown_seconds: 60,
        failure_audit_per_minute: 60,
        session_ttl_seconds: 12 * 3600,
        totp_issuer: "noid",
      }),
    events: z
      .object({
        /** Events kept in etcd: the newest this many ... */
        retention_count: z.number().int().min(10).default(10_000),
        /** ... and none older than this (0: no age bound). */
        retention_seconds: z.number().int().min(0).default(7 * 86_400),
      })
      .strict()
      .default({ retention_count: 10_000, retention_seconds: 7 * 86_400 }),
    logging: z
      .object({
        level: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
        audit: z.boolean().default(true),
        /** Audit events kept in etcd (oldest are deleted beyond this). */
        audit_retention: z.number().int().min(10).default(10_000),
      })
      .strict()
      .default({ level: "info", audit: true, audit_retention: 10_000 }),
  })
  .strict();

export type CoordinatorConfig = z.infer<typeof CoordinatorConfigSchema>;

/** A partial config as read from one source (file, env or flags). */
export type ConfigLayer = Record<string, unknown>;

export const DEFAULT_CONFIG_PATH = "/etc/noid/coordinator.toml";

export function readConfigFile(path: string, required: boolean): ConfigLayer {
  if (!existsSync(path)) {
    if (required) throw new NoidError("INVALID_ARGUMENT", `config file ${path} does not exist`);
    return {};
  }
  try {
    return parseToml(readFileSync(path, "utf8")) as ConfigLayer;
  } catch (e) {
    throw new NoidError("INVALID_ARGUMENT", `config file ${path}: ${(e as Error).message}`, { cause: e });
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Deep-merges layers; later layers win. Arrays are replaced, not merged. */
export function mergeLayers(...layers: ConfigLayer[]): ConfigLayer {
  const out: ConfigLayer = {};
  for (const layer of layers) {
    for (const [k, v] of Object.entries(layer)) {
      if (v === undefined) continue;
      const cur = out[k];
      out[k] = isPlainObject(cur) && isPlainObject(v) ? mergeLayers(cur, v) : v;
    }
  }
  return out;
}

/** Validates the merged layers; errors name the field ("limits.max_vms_per_user: ..."). */
export function resolveConfig(...layers: ConfigLayer[]): CoordinatorConfig {
  const r = CoordinatorConfigSchema.safeParse(mergeLayers(...layers));
  if (!r.success) {
    const msg = r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new NoidError("INVALID_ARGUMENT", `invalid coordinator config: ${msg}`);
  }
  const cfg = r.data;
  parseMeshCidr(cfg.mesh.cidr);
  networkSettings(cfg.networks); // the checks a schema cannot express (VNI range order, a usable default CIDR)
  if ((cfg.server.tls_cert === "") !== (cfg.server.tls_key === "")) {
    throw new NoidError("INVALID_ARGUMENT", "invalid coordinator config: server.tls_cert and server.tls_key go together");
  }
  const { heartbeat_interval_ms: beat, lease_ttl_seconds: ttl } = cfg.agents;
  // Each heartbeat renews the host's lease; agents fence after two intervals without one
  // (agent/reconcile/fence.ts), which must come well before the lease can expire.
  if (beat * 3 > ttl * 1000) {
    throw new NoidError(
      "INVALID_ARGUMENT",
      `invalid coordinator config: agents.heartbeat_interval_ms (${beat}) must be at most a third of agents.lease_ttl_seconds (${ttl} s): a host's lease could expire between two heartbeats`,
    );
  }
  return cfg;
}

/** The NOID_* environment variables the coordinator understands, as a config layer. */
export function envLayer(env: Record<string, string | undefined>): ConfigLayer {
  const server: ConfigLayer = {};
  const layer: ConfigLayer = {};
  if (env.NOID_LISTEN) server.listen = env.NOID_LISTEN;
  if (env.NOID_UNIX_SOCKET) server.unix_socket = env.NOID_UNIX_SOCKET;
  if (env.NOID_INSECURE) server.insecure = env.NOID_INSECURE === "1" || env.NOID_INSECURE === "true";
  if (env.NOID_TLS_CERT) server.tls_cert = env.NOID_TLS_CERT;
  if (env.NOID_TLS_KEY) server.tls_key = env.NOID_TLS_KEY;
  if (env.NOID_TLS_SANS) server.tls_sans = splitList(env.NOID_TLS_SANS);
  if (env.NOID_METRICS_LISTEN !== undefined) server.metrics_listen = env.NOID_METRICS_LISTEN;
  if (Object.keys(server).length) layer.server = server;
  if (env.NOID_STATE_DIR) layer.state_dir = env.NOID_STATE_DIR;
  if (env.NOID_ETCD) layer.etcd = { endpoints: splitList(env.NOID_ETCD) };
  if (env.NOID_LOG_LEVEL) layer.logging = { level: env.NOID_LOG_LEVEL };
  return layer;
}

export function splitList(s: string): string[] {
  return s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
}
