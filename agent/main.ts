// Composition root of the agent: read config (file < NOID_* env < flags), build the drivers,
// the reconcile loop and the session, run until SIGTERM/SIGINT. VMs keep running when the
// agent stops; the next agent adopts them (driver.recover()).
//
//   node dist/agent/main.js --config /etc/noid/agent.toml
//   node dist/agent/main.js --coordinator unix:/run/noid/coord.sock --name h1 --insecure --token-file t
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { CommanderError, Command } from "commander";
import { ExecRunner } from "./exec.js";
import { CheckpointRunner } from "./checkpoint/runner.js";
import { credentials, type ChannelCredentials } from "@grpc/grpc-js";
import { createLogger } from "../common/logger.js";
import { invalid } from "../common/errors.js";
import { AgentServiceClient } from "../gen/noid/v1/agent.js";
import {
  type AgentConfig,
  DEFAULT_CONFIG_FILE,
  mergeLayers,
  parseAgentConfig,
  readConfigFile,
  readToken,
} from "./config.js";
import { readAgentEnv } from "./env.js";
import { driversFromConfig } from "./drivers/from-config.js";
import { ReconcileLoop } from "./reconcile/loop.js";
import { PostureReporter } from "./posture/reporter.js";
import { run } from "../common/run.js";
import { AgentSession } from "./session.js";

export const AGENT_VERSION = "0.1.0";

interface Flags {
  config?: string;
  coordinator?: string;
  name?: string;
  address?: string;
  uplink?: string;
  stateDir?: string;
  tokenFile?: string;
  nsPrefix?: string;
  vcpus?: string;
  memoryMb?: string;
  diskGb?: string;
  label?: string[];
  drivers?: string;
  insecure?: boolean;
  logLevel?: string;
}

const int = (field: string, v: string | undefined): number | undefined => {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw invalid(field, `"${v}" is not a positive integer`);
  return n;
};

/** Flags in the config file's keys, so all layers merge the same way. */
export function flagsToLayer(f: Flags): Record<string, unknown> {
  const labels: Record<string, string> = {};
  for (const kv of f.label ?? []) {
    const i = kv.indexOf("=");
    if (i <= 0) throw invalid("label", `"${kv}" must be key=value`);
    labels[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return {
    coordinator: f.coordinator,
    name: f.name,
    address: f.address,
    uplink: f.uplink,
    state_dir: f.stateDir,
    token_file: f.tokenFile,
    ns_prefix: f.nsPrefix,
    insecure: f.insecure,
    log_level: f.logLevel,
    capacity: { vcpus: int("vcpus", f.vcpus), memory_mb: int("memory_mb", f.memoryMb), disk_gb: int("disk_gb", f.diskGb) },
    ...(f.label?.length ? { labels } : {}),
    ...(f.drivers !== undefined ? { drivers: f.drivers.split(",").map((d) => d.trim()).filter(Boolean) } : {}),
  };
}

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): { config: AgentConfig; token: string } {
  const program = new Command()
    .name("noid-agent")
    .option("--config <file>", `TOML config (default ${DEFAULT_CONFIG_FILE} if present)`)
    .option("--coordinator <addr>", "host:port or unix:/path")
    .option("--name <name>", "host name (DNS label)")
    .option("--address <ip>", "underlay address")
    .option("--uplink <ifname>", "interface tenant egress is NATed to (default: the default route's)")
    .option("--state-dir <dir>", "agent state directory")
    .option("--token-file <file>", "file holding the bearer token")
    .option("--ns-prefix <prefix>", "prefix of VM namespace names")
    .option("--vcpus <n>")
    .option("--memory-mb <n>")
    .option("--disk-gb <n>")
    .option("--label <k=v>", "host label (repeatable)", (v: string, acc: string[] = []) => [...acc, v])
    .option("--drivers <list>", "drivers to run, comma separated, default first (sandbox,qemu,firecracker)")
    .option("--insecure", "plaintext gRPC (unix socket / loopback only)")
    .option("--log-level <level>")
    .exitOverride()
    .parse(argv, { from: "user" });
  const flags = program.opts<Flags>();
  const e = readAgentEnv(env);
  const file = flags.config ?? e.configFile;
  const fileLayer = readConfigFile(file ?? DEFAULT_CONFIG_FILE, file !== undefined);
  const config = parseAgentConfig(mergeLayers(fileLayer, e.overrides, flagsToLayer(flags)));
  return { config, token: readToken(config, e.token) };
}

function channelCredentials(c: AgentConfig): ChannelCredentials {
  if (c.insecure) return credentials.createInsecure();
  const read = (p: string | undefined): Buffer | null => (p ? readFileSync(p) : null);
  return credentials.createSsl(read(c.tls.caFile), read(c.tls.keyFile), read(c.tls.certFile));
}

export async function main(argv: string[]): Promise<void> {
  const { config, token } = loadConfig(argv);
  const logger = createLogger({ name: "agent", level: config.logLevel }).child({ host: config.name });
  const drivers = await driversFromConfig(config, logger);

  // The loop reports through the session; the session feeds the loop. Tie the knot late.
  let session: AgentSession | undefined;
  let checkpoints: CheckpointRunner | undefined;
  const loop = new ReconcileLoop({
    drivers,
    logger: logger.child({ component: "reconcile" }),
    onStatus: (r) => {
      // A destroyed VM's checkpoints go with it (their records go in the same etcd transaction as the VM's).
      if (r.destroyed) checkpoints?.forget(r.vmId);
      session?.report(r);
    },
  });
  checkpoints = new CheckpointRunner(config.stateDir, drivers, loop, logger.child({ component: "checkpoint" }));
  const client = new AgentServiceClient(config.coordinator, channelCredentials(config), {
    "grpc.keepalive_time_ms": 20_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
  });
  session = new AgentSession({
    client,
    token,
    registration: {
      name: config.name,
      address: config.address,
      labels: config.labels,
      drivers: config.drivers,
      capacity: config.capacity,
      wireguardPublicKey: "",
      wireguardPort: 0,
      agentVersion: AGENT_VERSION,
      posture: undefined,
    },
    sink: loop,
    logger: logger.child({ component: "session" }),
    onState: (s) => logger.debug({ state: s }, "session state"),
    exec: new ExecRunner(async (vmId) => (await drivers.find(vmId))?.driver, logger.child({ component: "exec" })),
    checkpoint: checkpoints,
  });

  const posture = new PostureReporter({
    ...config.posture,
    runner: run,
    logger: logger.child({ component: "posture" }),
    onChange: (p) => session?.reportPosture(p),
  });
  session.reportPosture(await posture.check());
  posture.start();

  await loop.start();
  session.start();
  logger.info({ coordinator: config.coordinator, stateDir: config.stateDir, drivers: drivers.names }, "agent started");

  await new Promise<void>((resolve) => {
    const shutdown = (sig: string): void => {
      logger.info({ signal: sig }, "stopping (VMs keep running)");
      resolve();
    };
    process.once("SIGTERM", () => shutdown("SIGTERM"));
    process.once("SIGINT", () => shutdown("SIGINT"));
  });
  posture.stop();
  await session.stop();
  await loop.stop();
  client.close();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    // commander has printed help or the usage error already.
    if (e instanceof CommanderError) process.exit(e.code === "commander.helpDisplayed" ? 0 : 2);
    process.stderr.write(`noid-agent: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
