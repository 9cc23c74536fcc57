// Agent configuration: one schema, defaults in it, validated once in main. The file is
// TOML with snake_case keys; layers are merged file < NOID_* env < flags before parsing,
// so an error names the field whatever layer it came from.
import { existsSync, readFileSync } from "node:fs";
import { cpus, hostname, totalmem } from "node:os";
import { parse as parseToml } from "smol-toml";
import { z } from "zod";
import { NoidError, invalid } from "../common/errors.js";
import { isDnsLabel } from "../common/names.js";

export const DEFAULT_CONFIG_FILE = "/etc/noid/agent.toml";

const positive = z.number().int().positive();

export const agentConfigSchema = z
  .object({
    /** "host:port", "dns:///name:port" or "unix:/path/to.sock". */
    coordinator: z.string().min(1),
    token_file: z.string().min(1).optional(),
    name: z
      .string()
      .default(() => hostname().toLowerCase().split(".")[0] ?? "host")
      .refine(isDnsLabel, "must be a DNS label (a-z, 0-9, '-')"),
    /** Underlay address other hosts reach this one on. */
    address: z.string().default(""),
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
    drivers: z.array(z.enum(["sandbox"])).min(1).default(["sandbox"]),
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
  })
  .strict()
  .transform((c) => ({
    coordinator: c.coordinator,
    tokenFile: c.token_file,
    name: c.name,
    address: c.address,
    stateDir: c.state_dir,
    nsPrefix: c.ns_prefix,
    capacity: { vcpus: c.capacity.vcpus, memoryMb: c.capacity.memory_mb, diskGb: c.capacity.disk_gb },
    labels: c.labels,
    drivers: c.drivers,
    insecure: c.insecure,
    tls: { caFile: c.tls.ca_file, certFile: c.tls.cert_file, keyFile: c.tls.key_file },
    logLevel: c.log_level,
    wgInterface: c.wg_interface,
    wgPort: c.wg_port,
    uplinkMtu: c.uplink_mtu,
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

/** The bearer token: from the environment if given there, else from token_file (trimmed). */
export function readToken(cfg: AgentConfig, envToken: string | undefined): string {
  if (envToken) return envToken;
  if (!cfg.tokenFile) throw invalid("token_file", "is required (or set NOID_TOKEN)");
  try {
    const t = readFileSync(cfg.tokenFile, "utf8").trim();
    if (!t) throw new Error("file is empty");
    return t;
  } catch (e) {
    throw invalid("token_file", `${cfg.tokenFile}: ${e instanceof Error ? e.message : String(e)}`);
  }
}
