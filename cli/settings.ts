// Pure: which server, token and TLS settings a command uses. Per field,
// NOID_SERVER / NOID_TOKEN beat flags, flags beat the chosen context, and the
// context is --context or the config's current one.
import type { CliConfig, ContextConfig } from "./config.js";
import { UsageError } from "./parse.js";

export const DEFAULT_SERVER = "localhost:7654";

export interface GlobalFlags {
  context?: string;
  server?: string;
  output?: string;
  insecure?: boolean;
  caFile?: string;
  timeout?: string;
}

export interface Connection {
  server: string;
  token?: string;
  insecure: boolean;
  caFile?: string;
  /** A CA pinned in the context (used when no CA file is given). */
  caPem?: string;
  /** The context the settings came from, if any. */
  contextName?: string;
}

export function chooseContext(flags: GlobalFlags, cfg: CliConfig): { name?: string; ctx?: ContextConfig } {
  const name = flags.context ?? cfg.current_context;
  if (name === undefined) return {};
  const ctx = cfg.contexts[name];
  if (ctx === undefined) {
    // A named context that does not exist is a mistake worth stopping for; a
    // dangling current_context is too, since it silently drops the token.
    const known = Object.keys(cfg.contexts);
    throw new UsageError(`context "${name}" not found${known.length ? ` (have: ${known.join(", ")})` : ""}`);
  }
  return { name, ctx };
}

export function resolveConnection(env: Readonly<Record<string, string | undefined>>, flags: GlobalFlags, cfg: CliConfig): Connection {
  const { name, ctx } = chooseContext(flags, cfg);
  const server = env["NOID_SERVER"] || flags.server || ctx?.server || DEFAULT_SERVER;
  const token = env["NOID_TOKEN"] || ctx?.token;
  const caFile = env["NOID_CA_FILE"] || flags.caFile || ctx?.ca_file;
  const caPem = caFile ? undefined : ctx?.ca_pem;
  return {
    server,
    insecure: flags.insecure === true || env["NOID_INSECURE"] === "1" || env["NOID_INSECURE"] === "true" || ctx?.insecure === true,
    ...(token ? { token } : {}),
    ...(caFile ? { caFile } : {}),
    ...(caPem ? { caPem } : {}),
    ...(name !== undefined ? { contextName: name } : {}),
  };
}
