// The only module of the agent that reads process.env. NOID_* variables override the
// config file and are overridden by command-line flags.
export interface AgentEnv {
  /** Config file path (NOID_AGENT_CONFIG). */
  configFile?: string;
  /** Bearer token itself (NOID_TOKEN); preferred over a file only when set. */
  token?: string;
  /** Raw config overrides, in the config file's (snake_case) keys. */
  overrides: Record<string, unknown>;
}

const MAP: [env: string, key: string][] = [
  ["NOID_COORDINATOR", "coordinator"],
  ["NOID_TOKEN_FILE", "token_file"],
  ["NOID_NAME", "name"],
  ["NOID_ADDRESS", "address"],
  ["NOID_UPLINK", "uplink"],
  ["NOID_STATE_DIR", "state_dir"],
  ["NOID_NS_PREFIX", "ns_prefix"],
  ["NOID_LOG_LEVEL", "log_level"],
  ["NOID_INSECURE", "insecure"],
];

export function readAgentEnv(env: NodeJS.ProcessEnv = process.env): AgentEnv {
  const overrides: Record<string, unknown> = {};
  for (const [name, key] of MAP) {
    const v = env[name];
    if (v !== undefined && v !== "") overrides[key] = key === "insecure" ? v === "1" || v.toLowerCase() === "true" : v;
  }
  return {
    ...(env.NOID_AGENT_CONFIG ? { configFile: env.NOID_AGENT_CONFIG } : {}),
    ...(env.NOID_TOKEN ? { token: env.NOID_TOKEN } : {}),
    overrides,
  };
}
