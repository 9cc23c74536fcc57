// Composition root of the agent: read config (file < NOID_* env < flags), build the drivers,
// the reconcile loop and the session, run until SIGTERM/SIGINT. VMs keep running when the
// agent stops; the next agent adopts them (driver.recover()).
//
//   node dist/agent/main.js --config /etc/noid/agent.toml
//   node dist/agent/main.js --coordinator coord:7654 --name h1 --join-token-file jt --ca-fingerprint sha256:...
//   node dist/agent/main.js --coordinator unix:/run/noid/coord.sock --name h1 --insecure --token-file t
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { CommanderError, Command } from "commander";
import { ExecRunner } from "./exec.js";
import { StreamRunner } from "./streams.js";
import { LogRing, teeDestination } from "../common/log-ring.js";
import { capabilityNames } from "./drivers/driver.js";
import { pino } from "pino";
import { CheckpointRunner } from "./checkpoint/runner.js";
import { MigrationRunner } from "./migration/runner.js";
import { MIGRATION_PORT, TransferServer } from "./migration/transfer.js";
import { credentials } from "@grpc/grpc-js";
import { createLogger } from "../common/logger.js";
import { invalid } from "../common/errors.js";
import { AgentServiceClient } from "../gen/noid/v1/agent.js";
import { coordinatorTarget } from "../sdk/targets.js";
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
import { Fence } from "./reconcile/fence.js";
import { PostureReporter } from "./posture/reporter.js";
import { run } from "../common/run.js";
import type { HypervisorDriver } from "./drivers/driver.js";
import { AgentSession } from "./session.js";
import { CHANNEL_OPTIONS, HostIdentity } from "./identity.js";
import { AgentMetrics, instrumentDriver, readLinkStats } from "./metrics.js";
import { serveMetrics } from "../common/metrics-http.js";
import { loadOrCreateKey } from "../mesh/keys.js";
import { NetworkedDriver } from "./network/attach.js";
import { MeshController } from "./network/controller.js";
import { applyEgress, detectUplink } from "./network/egress-apply.js";
import { DhcpServers, dhcpNetworksOf } from "./network/dhcp.js";
import { describeEgressAction, egressNetworkOf } from "./network/egress.js";
import { declaredListen } from "../common/listen-label.js";
import { UsageReporter } from "./usage.js";
import { PortsController } from "./network/ports.js";
import { NginxIngress } from "./ingress/nginx.js";
import type { PortReport } from "../gen/noid/v1/port.js";

export const AGENT_VERSION = "0.1.0";

interface Flags {
  config?: string;
  coordinator?: string;
  name?: string;
  address?: string;
  uplink?: string;
  stateDir?: string;
  tokenFile?: string;
  joinTokenFile?: string;
  caFile?: string;
  caFingerprint?: string;
  nsPrefix?: string;
  vcpus?: string;
  memoryMb?: string;
  diskGb?: string;
  label?: string[];
  drivers?: string;
  insecure?: boolean;
  logLevel?: string;
  metricsListen?: string;
  usageInterval?: string;
  wgInterface?: string;
  wgPort?: string;
  uplinkMtu?: string;
  ingress?: boolean;
  ingressPort?: string;
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
    join_token_file: f.joinTokenFile,
    ca_fingerprint: f.caFingerprint,
    ...(f.caFile ? { tls: { ca_file: f.caFile } } : {}),
    ns_prefix: f.nsPrefix,
    insecure: f.insecure,
    log_level: f.logLevel,
    metrics_listen: f.metricsListen,
    usage_interval_seconds: int("usage_interval_seconds", f.usageInterval),
    wg_interface: f.wgInterface,
    wg_port: int("wg_port", f.wgPort),
    uplink_mtu: int("uplink_mtu", f.uplinkMtu),
    ingress: f.ingress,
    ingress_port: int("ingress_port", f.ingressPort),
    capacity: { vcpus: int("vcpus", f.vcpus), memory_mb: int("memory_mb", f.memoryMb), disk_gb: int("disk_gb", f.diskGb) },
    ...(f.label?.length ? { labels } : {}),
    ...(f.drivers !== undefined ? { drivers: f.drivers.split(",").map((d) => d.trim()).filter(Boolean) } : {}),
  };
}

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): { config: AgentConfig; token: string | undefined } {
  const program = new Command()
    .name("noid-agent")
    .option("--config <file>", `TOML config (default ${DEFAULT_CONFIG_FILE} if present)`)
    .option("--coordinator <addr>", "host:port, unix:/path, or replicas a:7654,b:7654")
    .option("--name <name>", "host name (DNS label)")
    .option("--address <ip>", "underlay address")
    .option("--uplink <ifname>", "interface tenant egress is NATed to (default: the default route's)")
    .option("--state-dir <dir>", "agent state directory")
    .option("--token-file <file>", "file holding a bearer token (--insecure coordinators only)")
    .option("--join-token-file <file>", "file holding a one-time join token (first start; never pass the token itself)")
    .option("--ca-file <file>", "CA certificate (PEM) the coordinator is checked against")
    .option("--ca-fingerprint <sha256>", "fetch the coordinator's CA at the first join and pin it if its fingerprint is this")
    .option("--ns-prefix <prefix>", "prefix of VM namespace names")
    .option("--vcpus <n>")
    .option("--memory-mb <n>")
    .option("--disk-gb <n>")
    .option("--label <k=v>", "host label (repeatable)", (v: string, acc: string[] = []) => [...acc, v])
    .option("--drivers <list>", "drivers to run, comma separated, default first (sandbox,qemu,firecracker)")
    .option("--insecure", "plaintext gRPC with a bearer token (development only; a warning is logged)")
    .option("--log-level <level>")
    .option("--metrics-listen <host:port>", "serve Prometheus metrics at http://<host:port>/metrics (default: off)")
    .option("--usage-interval <seconds>", "send NAT/firewall usage counters to the coordinator this often (default 30)")
    .option("--wg-interface <name>", "WireGuard interface (default wg-noid)")
    .option("--wg-port <port>", "WireGuard listen port (default 51820)")
    .option("--uplink-mtu <n>", "MTU of the underlay uplink (default 1500)")
    .option("--ingress", "run the HTTP ingress (nginx) for HTTP routes")
    .option("--ingress-port <port>", "port of the HTTP ingress (default 80)")
    .exitOverride()
    .parse(argv, { from: "user" });
  const flags = program.opts<Flags>();
  const e = readAgentEnv(env);
  const file = flags.config ?? e.configFile;
  const fileLayer = readConfigFile(file ?? DEFAULT_CONFIG_FILE, file !== undefined);
  const config = parseAgentConfig(mergeLayers(fileLayer, e.overrides, flagsToLayer(flags)));
  return { config, token: readToken(config, e.token) };
}

export async function main(argv: string[]): Promise<void> {
  const { config, token } = loadConfig(argv);
  // The recent lines stay in memory too, for `noidctl logs --host` (redacted by pino first).
  const logRing = new LogRing();
  const logger = createLogger({ name: "agent", level: config.logLevel, destination: teeDestination(pino.destination(2), logRing) }).child({ host: config.name });
  // The WireGuard key is made once and kept (0600) in the state dir; only its public half leaves the host.
  const wgKey = loadOrCreateKey(join(config.stateDir, "wireguard.key"));
  let session: AgentSession | undefined;
  const meshLog = logger.child({ component: "mesh" });
  const metrics = new AgentMetrics();
  const egressHost = { runner: run };
  const dhcp = new DhcpServers({ stateDir: config.stateDir, logger: logger.child({ component: "dhcp" }) });
  let uplink: string | undefined = config.uplink || undefined;
  // Exposed ports (DNAT to VMs) and, on an ingress host, HTTP routes: one report of both.
  const portReport: PortReport = { applied: [], error: "", ingress: false, routes: [], ingressError: "" };
  const portsLog = logger.child({ component: "ports" });
  const ports = new PortsController({
    wgIfname: config.wgInterface,
    uplink: async () => (uplink ??= await detectUplink(egressHost, config.address || undefined)),
    onSecurity: (e) => {
      if (!session) portsLog.warn({ event: e }, "security event not sent: the session is not set up yet");
      else if (!session.security(e)) portsLog.info({ event: e }, "security event held until the session is back");
    },
    onApplied: (applied, error) => session?.reportPorts({ ...Object.assign(portReport, { applied, error }) }),
    logger: portsLog,
  });
  const ingress = config.ingress.enabled
    ? new NginxIngress({
        prefix: join(config.stateDir, "ingress"),
        listen: `${config.address || "*"}:${config.ingress.port}`,
        binary: config.ingress.binary,
        logger: logger.child({ component: "ingress" }),
      })
    : undefined;
  if (ingress) {
    await ingress.start();
    portReport.ingress = true;
  }
  // The session's port snapshots: DNATs for the ports controller, routes for the ingress.
  const portSink = {
    setSnapshot(s: Parameters<PortsController["setSnapshot"]>[0]): void {
      ports.setSnapshot(s);
      // Exposed ports are declared listeners: the monitor table follows them.
      if (config.monitor.enabled) void mesh.sync().catch(() => undefined);
      if (!ingress) return;
      void ingress.setRoutes(s.routes).then((st) => {
        if (JSON.stringify([st.routes, st.error]) === JSON.stringify([portReport.routes, portReport.ingressError])) return;
        session?.reportPorts({ ...Object.assign(portReport, { routes: st.routes, ingressError: st.error }) });
      });
    },
  };
  // Scrape-time reads and the mesh's port list use the raw drivers: neither is a driver operation.
  const rawDrivers: HypervisorDriver[] = [];
  // The loop is made after the mesh controller; the monitor asks it for VM labels later.
  let loopRef: ReconcileLoop | undefined;
  const mesh = new MeshController({
    privateKey: wgKey.privateKey,
    wgIfname: config.wgInterface,
    uplinkMtu: config.uplinkMtu,
    stateDir: config.stateDir,
    ports: async () => new Map((await Promise.all(rawDrivers.map((d) => d.list()))).flat().map((v) => [v.id, v.hostPort])),
    onSecurity: (e) => {
      if (!session) meshLog.warn({ event: e }, "security event not sent: the session is not set up yet");
      else if (!session.security(e)) meshLog.info({ event: e }, "security event held until the session is back");
    },
    onCondition: (c) => session?.setCondition(c),
    ...(config.monitor.enabled
      ? {
          monitor: {
            ...config.monitor,
            // Declared: the label's ports and the VM's exposed TCP ports.
            listen: (vmId: string) => {
              const declared = declaredListen(loopRef?.desiredVm(vmId)?.labels);
              if (declared === "any") return declared;
              return [...new Set([...declared, ...ports.exposedTcpPorts(vmId)])].sort((a, b) => a - b);
            },
            onDetection: (d) => metrics.detected(d.kind),
          },
        }
      : {}),
    logger: meshLog,
    // Egress: NAT to the uplink with each network's policy, once its bridge exists.
    onNetworks: async (_networks, view) => {
      uplink ??= await detectUplink(egressHost, config.address || undefined);
      const actions = await applyEgress(
        {
          uplink,
          networks: view.selfNetworks.map(egressNetworkOf),
          // Tenants never reach the other hosts' underlay addresses through NAT.
          protect: view.members.filter((m) => m.hostId !== view.selfId && m.underlay).map((m) => `${m.underlay}/32`),
        },
        egressHost,
      );
      if (actions.length) meshLog.info({ egress: actions.map(describeEgressAction) }, "egress applied");
      // Exposed ports need the networks' slots, which egress has just set.
      ports.setView(view);
      // DHCP answers only the reservations of this host's VMs, per network bridge.
      const dhcpChanges = await dhcp.apply(dhcpNetworksOf(view));
      if (dhcpChanges.length) meshLog.info({ dhcp: dhcpChanges }, "dhcp applied");
    },
  });
  // Each VM joins its tenant network (NetworkedDriver) and every driver operation is measured.
  const drivers = await driversFromConfig(config, logger, (d) => {
    rawDrivers.push(d);
    return instrumentDriver(new NetworkedDriver(d, mesh), metrics);
  });

  // The loop reports through the session; the session feeds the loop. Tie the knot late.
  let checkpoints: CheckpointRunner | undefined;
  let migrations: MigrationRunner | undefined;
  const loop = new ReconcileLoop({
    drivers,
    logger: logger.child({ component: "reconcile" }),
    onStatus: (r) => {
      // A destroyed VM's checkpoints go with it (their records go in the same etcd transaction as the VM's).
      // A VM that moved to another host keeps them: their records name this host.
      if (r.destroyed && !migrations?.movedAway(r.vmId)) checkpoints?.forget(r.vmId);
      if (r.destroyed) migrations?.forget(r.vmId);
      session?.report(r);
    },
    observer: metrics.reconcile,
    restore: (a, vm) => migrations!.restoreIncoming(vm, drivers.must(a.driver), a.incoming),
  });
  loopRef = loop;
  checkpoints = new CheckpointRunner(config.stateDir, drivers, loop, logger.child({ component: "checkpoint" }));
  const migrationLog = logger.child({ component: "migration" });
  migrations = new MigrationRunner({
    stateDir: config.stateDir,
    drivers,
    hold: loop,
    wants: (id) => loop.wants(id),
    desiredOf: (id) => loop.desiredOf(id),
    // Served on the mesh address only (WireGuard), never on the underlay.
    server: new TransferServer({ host: () => mesh.selfMeshIp(), port: MIGRATION_PORT, logger: migrationLog }),
    logger: migrationLog,
  });
  let identity: HostIdentity | undefined;
  let client: AgentServiceClient;
  if (config.insecure) {
    logger.warn("plaintext connection to the coordinator (--insecure): the bearer token crosses unencrypted");
    // Several replicas ("a:7654,b:7654"): one channel that moves to a live one when the session breaks.
    const target = coordinatorTarget(config.coordinator);
    client = new AgentServiceClient(target.target, credentials.createInsecure(), { ...CHANNEL_OPTIONS, ...target.options });
  } else {
    identity = new HostIdentity({
      coordinator: config.coordinator,
      name: config.name,
      stateDir: config.stateDir,
      ...(config.tls.caFile ? { caFile: config.tls.caFile } : {}),
      ...(config.caFingerprint ? { caFingerprint: config.caFingerprint } : {}),
      ...(config.joinTokenFile ? { joinTokenFile: config.joinTokenFile } : {}),
      logger: logger.child({ component: "identity" }),
      onRenewed: (c) => session?.setClient(c),
    });
    client = await identity.start();
  }
  metrics.setWireguardReader(config.wgInterface, () => mesh.wireguard());
  metrics.setGuardReader(() => mesh.guardCounters());
  if (config.monitor.enabled) metrics.setMonitorReader(() => mesh.monitorReadings());
  metrics.setSources({
    networks: () => mesh.networkDevices(),
    reports: () => loop.lastReports(),
    vmPorts: async () => (await Promise.all(rawDrivers.map((d) => d.list()))).flat(),
    linkStats: () => readLinkStats(run),
  });
  const metricsServer = config.metricsListen
    ? await serveMetrics(metrics.registry, config.metricsListen, (err) => logger.warn({ err }, "collecting metrics failed"))
    : undefined;
  if (metricsServer) logger.info({ metrics: `http://${metricsServer.address}/metrics` }, "metrics serving");
  session = new AgentSession({
    client,
    ...(token ? { token } : {}),
    registration: {
      name: config.name,
      address: config.address,
      labels: config.labels,
      drivers: config.drivers,
      capacity: config.capacity,
      wireguardPublicKey: wgKey.publicKey,
      wireguardPort: config.wgPort,
      agentVersion: AGENT_VERSION,
      posture: undefined,
    },
    sink: loop,
    mesh,
    logger: logger.child({ component: "session" }),
    onState: (s) => logger.debug({ state: s }, "session state"),
    exec: new ExecRunner(async (vmId) => (await drivers.find(vmId))?.driver, logger.child({ component: "exec" })),
    checkpoint: checkpoints,
    ports: portSink,
    streams: new StreamRunner({ driverFor: async (vmId) => (await drivers.find(vmId))?.driver, hostLogs: (n) => logRing.lines(n), logger: logger.child({ component: "streams" }) }),
    capabilities: () => drivers.names.map((name) => ({ driver: name, capabilities: capabilityNames(drivers.must(name).capabilities()) })),
    migration: migrations,
  });

  const posture = new PostureReporter({
    ...config.posture,
    runner: run,
    logger: logger.child({ component: "posture" }),
    onChange: (p) => session?.reportPosture(p),
  });
  session.reportPosture(await posture.check());
  posture.start();
  const usage = new UsageReporter({ registry: metrics.registry, intervalMs: config.usageIntervalMs, send: (u) => session?.reportUsage(u), logger: logger.child({ component: "usage" }) });
  usage.start();

  mesh.start();
  ports.start();
  await loop.start();
  session.start();
  const s = session;
  const fence = new Fence({ loop, lastRenewedAt: () => s.lastRenewedAt, heartbeatIntervalMs: () => s.heartbeatIntervalMs, logger: logger.child({ component: "fence" }) });
  fence.start();
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
  usage.stop();
  fence.stop();
  identity?.stop();
  await session.stop();
  await loop.stop();
  await mesh.stop();
  await ports.stop();
  ingress?.stop();
  await metricsServer?.close();
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
