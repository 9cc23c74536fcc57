// ~/.noid/config.toml: named contexts (server, token, TLS settings) and the
// current one. It holds tokens, so the file is written 0600 in a 0700 dir,
// atomically (temp file + rename) so a crash never leaves half a file.
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { parse, stringify } from "smol-toml";
import { z } from "zod";

const ContextSchema = z.object({
  server: z.string().min(1),
  token: z.string().optional(),
  insecure: z.boolean().optional(),
  ca_file: z.string().optional(),
  /** The coordinator's CA pinned by `auth setup` (PEM), and its fingerprint. */
  ca_pem: z.string().optional(),
  ca_fingerprint: z.string().optional(),
});

const ConfigSchema = z.object({
  current_context: z.string().optional(),
  contexts: z.record(z.string(), ContextSchema).default({}),
});

export type ContextConfig = z.infer<typeof ContextSchema>;
export type CliConfig = z.infer<typeof ConfigSchema>;

export function configPath(env: Readonly<Record<string, string | undefined>>): string {
  return env["NOID_CONFIG"] || join(env["HOME"] || homedir(), ".noid", "config.toml");
}

/** Reads the config; a missing file is an empty config, a malformed one an error naming the field. */
export function loadConfig(path: string): CliConfig {
  if (!existsSync(path)) return { contexts: {} };
  let raw: unknown;
  try {
    raw = parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new Error(`reading ${path}: ${(e as Error).message}`, { cause: e });
  }
  const res = ConfigSchema.safeParse(raw);
  if (!res.success) {
    const issue = res.error.issues[0];
    throw new Error(`reading ${path}: ${issue ? `${issue.path.join(".") || "(root)"}: ${issue.message}` : "invalid"}`);
  }
  return res.data;
}

export function saveConfig(path: string, cfg: CliConfig): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const tmp = `${path}.${process.pid}.tmp`;
  const body: Record<string, unknown> = {};
  if (cfg.current_context !== undefined) body["current_context"] = cfg.current_context;
  body["contexts"] = cfg.contexts;
  writeFileSync(tmp, stringify(body) + "\n", { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

/** Pure: the config with `name` set to `ctx` and made current. */
export function withContext(cfg: CliConfig, name: string, ctx: ContextConfig): CliConfig {
  return { current_context: name, contexts: { ...cfg.contexts, [name]: ctx } };
}
