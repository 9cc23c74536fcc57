// Builds and starts a coordinator from a validated config: etcd (embedded or
// external), informers, services, controllers, gRPC server. main.ts only
// parses config and calls this; tests call it directly on port 0.
import { HostUsageStore } from "./agents/usage-store.js";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { HealthImplementation, protoPath as healthProtoPath } from "grpc-health-check";
import { ReflectionService } from "@grpc/reflection";
import type { Logger } from "pino";
import { AgentServiceService } from "../gen/noid/v1/agent.js";
import { AuditServiceService } from "../gen/noid/v1/audit.js";
import { AuthServiceService, Role } from "../gen/noid/v1/auth.js";
import { HostServiceService } from "../gen/noid/v1/host.js";
import { NetworkServiceService } from "../gen/noid/v1/network.js";
import { VmServiceService } from "../gen/noid/v1/vm.js";
import { NoidError } from "../common/errors.js";
import type { CoordinatorConfig } from "./config.js";
import type { Store } from "./store/store.js";
import { createEtcdStore } from "./store/index.js";
import { startEmbeddedEtcd, type EmbeddedEtcd } from "./etcd/embedded.js";
import { TokenStore } from "./auth/tokens.js";
import { AuditLog, auditKey } from "./audit-log.js";
import { InformerNameIndex } from "./state/name-index.js";
import { AuditChainStore } from "./auth/audit-chain-store.js";
import { AuthGuard } from "./auth/guard.js";
import { AuditThrottle, AuthFailureCounter, FailureLimiter } from "./auth/rate-limit.js";
import { UserRepo } from "./users/user-repo.js";
import { loadOrCreateSecretBox } from "./users/secret-box.js";
import { userService } from "./services/user-service.js";
import { UserServiceService } from "../gen/noid/v1/user.js";
import { ClusterState } from "./state/cluster.js";
import { keys } from "./state/keys.js";
import { HostRepo, parseMeshCidr } from "./state/host-repo.js";
import { VmRepo, newVmId, type Clock } from "./state/vm-repo.js";
import { PlacementController, type PlacementStats } from "./controllers/placement.js";
import { HostLossController } from "./controllers/host-loss.js";
import type { HandlerDeps } from "./grpc/handler.js";
import { vmService } from "./services/vm-service.js";
import { hostService } from "./services/host-service.js";
import { networkService } from "./services/network-service.js";
import { NetworkRepo } from "./networks/network-repo.js";
import { VmNetworks } from "./networks/vm-network.js";
import { authService } from "./services/auth-service.js";
import { auditService } from "./services/audit-service.js";
import { SecurityAudit } from "./security-events.js";
import { agentService } from "./services/agent-service.js";
import { execService } from "./services/exec-service.js";
import { consoleService } from "./services/console-service.js";
import { ConsoleServiceService } from "../gen/noid/v1/console.js";
import { SessionRegistry } from "./agents/registry.js";
import { ExecServiceService } from "../gen/noid/v1/exec.js";
import { hostname } from "node:os";
import { certFingerprint } from "../common/x509.js";
import { loadOrCreatePki, type ClusterPki } from "./pki/ca.js";
import { tlsServerCredentials } from "./pki/credentials.js";
import { HostIdentities } from "./pki/host-identity.js";
import { HostSessions } from "./services/agent-service.js";
import { EventServiceService } from "../gen/noid/v1/event.js";
import { eventService } from "./services/event-service.js";
import { EventLog, type EventInput } from "./events/event-log.js";
import { EventRecorder } from "./events/recorder.js";
import { CoordinatorMetrics, InstrumentedStore } from "./metrics.js";
import { serveMetrics, type MetricsServer } from "../common/metrics-http.js";

import { CheckpointServiceService } from "../gen/noid/v1/checkpoint.js";
import { MeshServiceService } from "../gen/noid/v1/mesh.js";
import { meshService } from "./services/mesh-service.js";
import { checkpointService } from "./services/checkpoint-service.js";
import { MigrationServiceService } from "../gen/noid/v1/migration.js";
import { migrationService } from "./services/migration-service.js";
import { LeaderElector, type LeaderStatus } from "./ha/leader.js";
import { PortServiceService } from "../gen/noid/v1/port.js";
import { portService } from "./services/port-service.js";
import { PortRepo } from "./ports/port-repo.js";
import { PortFeed } from "./ports/port-feed.js";
import { nodeIdOf } from "./ha/node-id.js";
import { installServerStreamWritev } from "./grpc/stream-writev.js";

// A server stream's queued messages go out together (coordinator/grpc/stream-writev.ts).
installServerStreamWritev();

export const ADMIN_TOKEN_FILE = "admin.token";
const BOOTSTRAP_TOKEN_NAME = "bootstrap-admin";
/** gRPC health service name that is SERVING only on the leader replica. */
export const LEADER_HEALTH_SERVICE = "noid.v1.Leader";
const PUBLIC_SERVICES = ["noid.v1.VmService", "noid.v1.HostService", "noid.v1.NetworkService", "noid.v1.AuthService", "noid.v1.AuditService", "noid.v1.AgentService", "noid.v1.ExecService", "noid.v1.UserService", "noid.v1.CheckpointService", "noid.v1.EventService", "noid.v1.MeshService", "noid.v1.PortService", "noid.v1.ConsoleService", "noid.v1.MigrationService"];

export interface CoordinatorHandle {
  /** TCP port actually bound (useful with listen ":0"). */
  port: number;
  /** host:port clients can dial. */
  address: string;
  unixSocket?: string;
  /** Path of the 0600 file holding the bootstrap admin token. */
  adminTokenFile: string;
  store: Store;
  cluster: ClusterState;
  /** The placement controller while this replica leads, else undefined. */
  readonly placement: PlacementController | undefined;
  /** Leader election status of this replica (for status output and metrics). */
  leader(): LeaderStatus;
  /** The election itself (fault injection in tests: suspendRenewal). */
  elector: LeaderElector;
  etcd?: EmbeddedEtcd;
  /** The cluster CA (PEM, file and fingerprint); absent when serving plaintext. */
  ca?: { pem: string; file: string; fingerprint: string };
  /** Authentication failure counters (for the metrics exporter). */
  authFailures(): ReturnType<AuthGuard["failures"]>;
  /** The process's metrics registry, and its HTTP endpoint when server.metrics_listen is set. */
  metrics: CoordinatorMetrics;
  metricsServer?: MetricsServer;
  events: EventLog;
  /** Records an event (e.g. a security report from an agent); never throws. */
  recordEvent(ev: EventInput): void;
  stop(): Promise<void>;
}

export interface StartOptions {
  config: CoordinatorConfig;
  logger: Logger;
  clock?: Clock;
  /** Use this store instead of connecting (tests with the memory store). */
  store?: Store;
}

export function protoRoot(): string {
  // dist/coordinator/server.js or coordinator/server.ts -> <repo>/proto
  const here = dirname(fileURLToPath(import.meta.url));
  for (const cand of [join(here, "..", "proto"), join(here, "..", "..", "proto")]) {
    if (existsSync(join(cand, "noid", "v1", "vm.proto"))) return cand;
  }
  throw new NoidError("INTERNAL", "cannot find the proto/ folder for server reflection");
}

async function openStore(cfg: CoordinatorConfig, logger: Logger): Promise<{ store: Store; etcd?: EmbeddedEtcd }> {
  if (cfg.etcd.endpoints.length > 0) {
    return { store: await createEtcdStore({ endpoints: cfg.etcd.endpoints, prefix: cfg.etcd.prefix }) };
  }
  const dataDir = join(cfg.state_dir, "etcd");
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const etcd = await startEmbeddedEtcd({
    dataDir,
    clientPort: cfg.etcd.embedded_client_port,
    logger: logger.child({ component: "etcd" }),
  });
  logger.info({ endpoints: etcd.endpoints, dataDir }, "embedded etcd started");
  const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: cfg.etcd.prefix });
  return { store, etcd };
}

/** Keeps (or creates) the bootstrap admin token in <state_dir>/admin.token, mode 0600. */
async function bootstrapAdmin(tokens: TokenStore, stateDir: string, logger: Logger): Promise<string> {
  const file = join(stateDir, ADMIN_TOKEN_FILE);
  if (existsSync(file)) {
    const secret = readFileSync(file, "utf8").trim();
    if (await tokens.exists(secret)) return file;
    logger.warn({ file }, "admin token file does not match any token in etcd; issuing a new one");
  }
  const existing = (await tokens.list()).find((t) => t.record.name === BOOTSTRAP_TOKEN_NAME);
  const { secret } = existing
    ? await tokens.rotate(existing)
    : await tokens.create({ name: BOOTSTRAP_TOKEN_NAME, user: "admin", role: Role.ROLE_ADMIN, ttlSeconds: 0 });
  writeFileSync(file, secret + "\n", { mode: 0o600 });
  chmodSync(file, 0o600);
  logger.info({ file }, "bootstrap admin token written");
  return file;
}

export const PKI_DIR = "pki";

/**
 * TLS unless plaintext was asked for explicitly: the cluster CA and (unless
 * tls_cert/tls_key are configured) a server certificate it signs, created in
 * <state_dir>/pki on first start and reused afterwards.
 */
async function serverCredentials(cfg: CoordinatorConfig, logger: Logger): Promise<{ creds: grpc.ServerCredentials; pki?: ClusterPki }> {
  if (cfg.server.insecure && !cfg.server.tls_cert) {
    logger.warn("serving plaintext gRPC (--insecure): tokens cross the network unencrypted and agents authenticate with an admin token");
    return { creds: grpc.ServerCredentials.createInsecure() };
  }
  const listenHost = cfg.server.listen.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const wildcard = listenHost === "0.0.0.0" || listenHost === "::";
  const pki = await loadOrCreatePki({
    dir: join(cfg.state_dir, PKI_DIR),
    sans: [...cfg.server.tls_sans, ...(wildcard ? [] : [listenHost]), hostname().toLowerCase()],
    ...(cfg.server.tls_cert ? { tlsCert: cfg.server.tls_cert, tlsKey: cfg.server.tls_key } : {}),
    onCreate: (what, path) => logger.info({ path }, `${what} created`),
  });
  logger.info({ caFingerprint: certFingerprint(pki.ca.certPem), generatedServerCert: pki.generatedServerCert }, "serving TLS (minimum TLS 1.2)");
  return { creds: tlsServerCredentials({ certChainPem: pki.serverCertPem, keyPem: pki.serverKeyPem, clientCaPem: pki.ca.certPem }), pki };
}

function bind(server: grpc.Server, addr: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync(addr, creds, (err, port) => (err ? reject(new NoidError("UNAVAILABLE", `binding ${addr}: ${err.message}`, { cause: err })) : resolve(port))),
  );
}

export async function startCoordinator(opts: StartOptions): Promise<CoordinatorHandle> {
  const { config: cfg, logger } = opts;
  const clock: Clock = opts.clock ?? { now: () => new Date() };
  mkdirSync(cfg.state_dir, { recursive: true, mode: 0o700 });
  const { creds, pki: clusterPki } = await serverCredentials(cfg, logger);

  const { store: rawStore, etcd } = opts.store ? { store: opts.store, etcd: undefined } : await openStore(cfg, logger);
  // Every audit event written through this store is linked into the hash chain in its own transaction.
  const metrics = new CoordinatorMetrics();
  const store = new AuditChainStore(new InstrumentedStore(rawStore, metrics));
  const cleanups: (() => Promise<void>)[] = [async () => store.close(), async () => etcd?.stop()];
  const stopAll = async () => {
    for (const c of cleanups.reverse()) await c().catch((err) => logger.warn({ err }, "shutdown step failed"));
  };

  try {
    const tokens = new TokenStore(store, clock, cfg.auth.token_rotation_overlap_seconds);
    const adminTokenFile = await bootstrapAdmin(tokens, cfg.state_dir, logger);
    // Calls are authenticated from a watched copy of the token records (no etcd read per call).
    await tokens.startCache(logger.child({ component: "tokens" }));
    cleanups.push(() => tokens.stopCache());
    // Seals TOTP secrets in etcd; replicas share the key file like admin.token (deploy/ha.md).
    const secretBox = loadOrCreateSecretBox(cfg.state_dir, (path) => logger.info({ path }, "secrets key created"));
    const audit = new AuditLog(store, clock, cfg.logging.audit);
    const events = new EventLog({
      store,
      clock,
      retention: { maxCount: cfg.events.retention_count, maxAgeMs: cfg.events.retention_seconds * 1000 },
      onRecord: metrics.onEvent,
      onTrimError: (err) => logger.warn({ err }, "trimming events failed"),
    });
    const writeAudit = (e: Parameters<AuditLog["write"]>[0]) => audit.write(e);
    const guard = new AuthGuard({
      inner: tokens,
      limiter: new FailureLimiter({ maxFailures: cfg.auth.max_failures_per_minute, windowMs: 60_000, cooldownMs: cfg.auth.failure_cooldown_seconds * 1000 }, clock),
      counter: new AuthFailureCounter(),
      throttle: new AuditThrottle(60_000, cfg.auth.failure_audit_per_minute, clock),
      audit: writeAudit,
      logger: logger.child({ component: "auth" }),
    });
    const cluster = new ClusterState(store, logger.child({ component: "informer" }), { requirePosture: cfg.scheduler.require_posture });
    await cluster.start();
    cleanups.push(() => cluster.stop());
    // Events from informer changes, and from auth.failure / security.* audit entries (a watch on audit/):
    // followed by the leader only (started on election below).
    const recorder = new EventRecorder({ log: events, cluster, store, logger: logger.child({ component: "events" }) });
    cleanups.push(() => recorder.stop());

    const netSettings = cfg.networks;
    const networks = new NetworkRepo({ store, clock, settings: netSettings, auditKey });
    const vmNetworks = new VmNetworks({ store, clock, repo: networks, graceSeconds: netSettings.ip_reuse_grace_seconds, logger: logger.child({ component: "ipam" }) });
    const portRepo = new PortRepo({ store, clock, auditKey });
    // The placement controller while this replica leads (see the leader election below).
    let placement: PlacementController | undefined;
    const vms = new VmRepo({ store, clock, newId: newVmId, auditKey, network: vmNetworks, ports: portRepo, names: new InformerNameIndex(cluster.vms),
      cached: (id) => {
        const e = cluster.vms.get(keys.vm(id));
        return e ? { vm: e.value, modRevision: e.modRevision } : undefined;
      },
      // The leader places VMs in their create transaction; other replicas create them unplaced.
      placeAtCreate: (list, room) => placement?.placeAtCreate(list, room),
    });
    // VMs created elsewhere (another replica) or removed make the creates' cached counters stale.
    const offVmChanges = cluster.vms.onChange((c) => vms.noteVmChange(c));
    cleanups.push(async () => offVmChanges());
    const meshCidr = parseMeshCidr(cfg.mesh.cidr);
    const hosts = new HostRepo(store, clock, meshCidr);
    const portFeed = new PortFeed({ store, cluster, hosts, clock, logger: logger.child({ component: "ports" }) });
    await portFeed.start();
    cleanups.push(() => portFeed.stop());
    const base: HandlerDeps = { auth: guard, logger: logger.child({ component: "api" }), onCall: metrics.onCall };

    const hostLoss = { policy: cfg.host_loss.policy, graceSeconds: cfg.host_loss.grace_seconds };
    const sessions = new SessionRegistry();
    const hostSessions = new HostSessions();
    const pki = clusterPki ? { ca: clusterPki.ca, ids: new HostIdentities(store, clock, clusterPki.ca, cfg.agents.cert_ttl_seconds) } : undefined;
    if (pki) {
      // Heartbeats check their host's certificate against a watched copy of the revocations.
      await pki.ids.startRevocationCache(logger.child({ component: "revocations" }));
      cleanups.push(() => pki.ids.stopRevocationCache());
    }
    const security = new SecurityAudit(writeAudit, clock);
    cleanups.push(async () => security.stop());
    const server = new grpc.Server({ "grpc.keepalive_time_ms": 20_000, "grpc.keepalive_timeout_ms": 10_000, "grpc.keepalive_permit_without_calls": 1 });
    const users = new UserRepo(store, clock, secretBox);
    // Snapshotted into every VM created: from a watched copy, not an etcd read per create.
    await users.startSshKeyCache(logger.child({ component: "ssh-keys" }));
    cleanups.push(() => users.stopSshKeyCache());
    const sshKeysOf = async (user: string) => users.sshKeysFor(user);
    server.addService(VmServiceService, vmService({ ...base, repo: vms, cluster, limits: () => cfg.limits, sshKeysOf }));
    server.addService(MeshServiceService, meshService({ ...base, cluster, meshPrefixLen: meshCidr.prefix }));
    const hostUsage = new HostUsageStore();
    server.addService(HostServiceService, hostService({ ...base, hosts, cluster, store, clock, audit: writeAudit, hostSessions, usage: hostUsage, ...(pki ? { pki } : {}) }));
    server.addService(NetworkServiceService, networkService({ ...base, networks }));
    server.addService(AuthServiceService, authService({ ...base, tokens, audit: writeAudit }));
    server.addService(AuditServiceService, auditService({ ...base, audit }));
    server.addService(
      UserServiceService,
      userService({ ...base, users, tokens, guard, clock, sessionTtlSeconds: cfg.auth.session_ttl_seconds, totpIssuer: cfg.auth.totp_issuer }),
    );
    server.addService(
      AgentServiceService,
      agentService({
        ...base,
        store,
        cluster,
        hosts,
        vms,
        leaseTtlSeconds: cfg.agents.lease_ttl_seconds,
        heartbeatIntervalMs: cfg.agents.heartbeat_interval_ms,
        logger: logger.child({ component: "agents" }),
        sessions,
        meshPrefixLen: meshCidr.prefix,
        guard,
        hostSessions,
        usage: hostUsage,
        audit: writeAudit,
        ...(pki ? { pki } : {}),
        security,
        ports: portFeed,
        hostLoss,
      }),
    );
    server.addService(ExecServiceService, execService({ ...base, repo: vms, sessions, audit: writeAudit }));
    server.addService(ConsoleServiceService, consoleService({ ...base, repo: vms, cluster, sessions, audit: writeAudit }));
    server.addService(CheckpointServiceService, checkpointService({ ...base, repo: vms, store, sessions, limits: () => cfg.limits, audit: writeAudit, clock }));
    server.addService(MigrationServiceService, migrationService({ ...base, repo: vms, cluster, sessions, audit: writeAudit, clock, ports: portRepo }));
    server.addService(EventServiceService, eventService({ ...base, events }));
    server.addService(PortServiceService, portService({ ...base, repo: vms, ports: portRepo, store, cluster, limits: () => cfg.limits }));
    const health = new HealthImplementation({
      "": "SERVING",
      ...Object.fromEntries(PUBLIC_SERVICES.map((s) => [s, "SERVING" as const])),
      [LEADER_HEALTH_SERVICE]: "NOT_SERVING",
    });
    health.addToServer(server);
    const root = protoRoot();
    const pkg = protoLoader.loadSync(
      ["noid/v1/vm.proto", "noid/v1/host.proto", "noid/v1/network.proto", "noid/v1/auth.proto", "noid/v1/audit.proto", "noid/v1/agent.proto", "noid/v1/exec.proto", "noid/v1/user.proto", "noid/v1/event.proto", "noid/v1/checkpoint.proto", "noid/v1/mesh.proto", "noid/v1/port.proto", "noid/v1/console.proto", "noid/v1/migration.proto"],
      { includeDirs: [root] },
    );
    new ReflectionService({ ...pkg, ...protoLoader.loadSync(healthProtoPath) }).addToServer(server);

    const port = await bind(server, cfg.server.listen, creds);
    let unixSocket: string | undefined;
    if (cfg.server.unix_socket) {
      rmSync(cfg.server.unix_socket, { force: true });
      mkdirSync(dirname(cfg.server.unix_socket), { recursive: true });
      await bind(server, `unix:${cfg.server.unix_socket}`, creds);
      unixSocket = cfg.server.unix_socket;
    }
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 3000);
          server.tryShutdown(() => {
            clearTimeout(t);
            resolve();
          });
        }),
    );

    // Only the leader runs controllers; their writes go through a store fenced by its term.
    let hostLossCtl: HostLossController | undefined;
    const pastTerms: PlacementStats = { attempts: 0, placed: 0, conflicts: 0, unplaceable: 0 };
    let maintenance: NodeJS.Timeout | undefined;
    const elector = new LeaderElector({
      store,
      nodeId: cfg.ha.node_id || nodeIdOf(cfg.state_dir),
      leaseSeconds: cfg.ha.leader_lease_seconds,
      logger: logger.child({ component: "leader" }),
      onElected: ({ fence, fenced }) => {
        health.setStatus(LEADER_HEALTH_SERVICE, "SERVING");
        placement = new PlacementController({ store: fenced, fence, cluster, policy: cfg.scheduler.policy, logger: logger.child({ component: "placement" }), clock });
        placement.start();
        hostLossCtl = new HostLossController({ store: fenced, cluster, defaults: hostLoss, logger: logger.child({ component: "host-loss" }), clock });
        hostLossCtl.start();
        void recorder.start().catch((err: unknown) => logger.warn({ err }, "following events failed"));
        // Compaction keeps transactions fast; trimming keeps the audit log bounded.
        const leaderAudit = new AuditLog(fenced, clock, cfg.logging.audit);
        const leaderTokens = new TokenStore(fenced, clock, cfg.auth.token_rotation_overlap_seconds);
        maintenance = setInterval(() => {
          void (async () => {
            const rev = await fenced.revision();
            const target = rev - cfg.etcd.compact_keep_revisions;
            if (target > 0) await fenced.compact(target);
            await leaderAudit.trim(cfg.logging.audit_retention);
            await leaderTokens.sweep();
            await pki?.ids.sweep();
            await events.trim();
          })().catch((err) => logger.warn({ err }, "maintenance failed"));
        }, 60_000);
      },
      onDeposed: async () => {
        health.setStatus(LEADER_HEALTH_SERVICE, "NOT_SERVING");
        clearInterval(maintenance);
        const p = placement;
        if (p) for (const k of ["attempts", "placed", "conflicts", "unplaceable"] as const) pastTerms[k] += p.stats[k];
        placement = undefined;
        const h = hostLossCtl;
        hostLossCtl = undefined;
        await Promise.all([p?.stop(), h?.stop(), recorder.stop()]);
      },
    });
    await elector.start();
    // Scheduling counters add up over every term this replica led (a counter never goes back).
    const placementTotals = (): PlacementStats => {
      const cur = placement?.stats ?? { attempts: 0, placed: 0, conflicts: 0, unplaceable: 0 };
      return { attempts: pastTerms.attempts + cur.attempts, placed: pastTerms.placed + cur.placed, conflicts: pastTerms.conflicts + cur.conflicts, unplaceable: pastTerms.unplaceable + cur.unplaceable };
    };
    metrics.attach({ cluster, placement: { get stats() { return placementTotals(); } }, authFailures: () => guard.failures(), limits: () => cfg.limits, isLeader: () => elector.status().isLeader, usage: hostUsage });
    let metricsServer: MetricsServer | undefined;
    if (cfg.server.metrics_listen) {
      metricsServer = await serveMetrics(metrics.registry, cfg.server.metrics_listen, (err) => logger.warn({ err }, "collecting metrics failed"));
      cleanups.push(() => metricsServer!.close());
      logger.info({ metrics: `http://${metricsServer.address}/metrics` }, "metrics serving");
    }
    cleanups.push(async () => {
      await elector.stop();
      clearInterval(maintenance);
      await placement?.stop();
      await hostLossCtl?.stop();
    });

    // Health follows etcd: NOT_SERVING while the store cannot answer.
    let healthy = true;
    const probe = setInterval(() => {
      void store.revision().then(
        () => {
          if (!healthy) logger.info("etcd reachable again");
          healthy = true;
          health.setStatus("", "SERVING");
        },
        (err) => {
          if (healthy) logger.warn({ err }, "etcd unreachable");
          healthy = false;
          health.setStatus("", "NOT_SERVING");
        },
      );
    }, 2000);
    cleanups.push(async () => clearInterval(probe));

    const host = cfg.server.listen.replace(/:\d+$/, "");
    const dialHost = host === "0.0.0.0" || host === "[::]" ? "127.0.0.1" : host;
    logger.info({ listen: cfg.server.listen, port, unixSocket }, "coordinator serving");
    return {
      port,
      address: `${dialHost}:${port}`,
      ...(unixSocket ? { unixSocket } : {}),
      adminTokenFile,
      store,
      cluster,
      get placement() {
        return placement;
      },
      leader: () => elector.status(),
      elector,
      ...(etcd ? { etcd } : {}),
      ...(clusterPki ? { ca: { pem: clusterPki.ca.certPem, file: join(cfg.state_dir, PKI_DIR, "ca.crt"), fingerprint: certFingerprint(clusterPki.ca.certPem) } } : {}),
      authFailures: () => guard.failures(),
      metrics,
      ...(metricsServer ? { metricsServer } : {}),
      events,
      recordEvent: (ev) => recorder.record(ev),
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
