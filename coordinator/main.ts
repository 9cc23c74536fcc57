#!/usr/bin/env node
// noid-coordinator: the composition root. Reads config (file < NOID_* env <
// flags), validates it once, and starts the coordinator.
import { Command, Option } from "commander";
import { createLogger } from "../common/logger.js";
import { NoidError } from "../common/errors.js";
import { DEFAULT_CONFIG_PATH, envLayer, readConfigFile, resolveConfig, splitList, type ConfigLayer } from "./config.js";
import { startCoordinator } from "./server.js";

function flagsLayer(o: Record<string, unknown>): ConfigLayer {
  const server: ConfigLayer = {};
  const layer: ConfigLayer = {};
  if (o.listen !== undefined) server.listen = o.listen;
  if (o.unixSocket !== undefined) server.unix_socket = o.unixSocket;
  if (o.insecure !== undefined) server.insecure = o.insecure;
  if (o.tlsCert !== undefined) server.tls_cert = o.tlsCert;
  if (o.tlsKey !== undefined) server.tls_key = o.tlsKey;
  if (o.tlsSan !== undefined) server.tls_sans = splitList(String(o.tlsSan));
  if (o.metricsListen !== undefined) server.metrics_listen = o.metricsListen;
  if (Object.keys(server).length) layer.server = server;
  if (o.stateDir !== undefined) layer.state_dir = o.stateDir;
  if (o.etcd !== undefined) layer.etcd = { endpoints: splitList(String(o.etcd)) };
  if (o.policy !== undefined) layer.scheduler = { policy: o.policy };
  if (o.logLevel !== undefined) layer.logging = { level: o.logLevel };
  return layer;
}

const program = new Command("noid-coordinator")
  .description("Noid mesh coordinator: the gRPC API, state in etcd, scheduler and controllers")
  .option("-c, --config <file>", `config file (default ${DEFAULT_CONFIG_PATH} if present; env NOID_COORDINATOR_CONFIG)`)
  .option("--listen <host:port>", "gRPC listen address (default 0.0.0.0:7654)")
  .option("--unix-socket <path>", "also serve gRPC on this unix socket")
  .option("--state-dir <dir>", "state directory: admin token, embedded etcd data (default /var/lib/noid)")
  .option("--etcd <urls>", "comma-separated etcd endpoints; omit to run an embedded etcd")
  .option("--tls-cert <file>", "TLS server certificate chain (PEM); default: generated, signed by the cluster CA in <state-dir>/pki")
  .option("--tls-key <file>", "TLS private key (PEM)")
  .option("--tls-san <names>", "comma-separated extra DNS names/IPs for the generated server certificate")
  .option("--insecure", "serve plaintext gRPC (development only; agents then use an admin token)")
  .option("--metrics-listen <host:port>", 'serve Prometheus metrics at http://<host:port>/metrics (default off; "" turns off)')
  .addOption(new Option("--policy <policy>", "placement policy").choices(["spread", "binpack"]))
  .addOption(new Option("--log-level <level>", "log level").choices(["trace", "debug", "info", "warn", "error", "silent"]))
  .showHelpAfterError()
  .addHelpText(
    "after",
    `
Examples:
  noid-coordinator --state-dir /tmp/noid --tls-san noid.example.com   # TLS with a generated cluster CA
  noid-coordinator --insecure --state-dir /tmp/noid          # embedded etcd, plaintext
  noid-coordinator --config /etc/noid/coordinator.toml
  noid-coordinator --etcd https://a:2379,https://b:2379 --tls-cert cert.pem --tls-key key.pem`,
  );

async function main(): Promise<void> {
  program.parse();
  const o = program.opts();
  const env = process.env;
  const path = (o.config as string | undefined) ?? env.NOID_COORDINATOR_CONFIG ?? DEFAULT_CONFIG_PATH;
  const explicit = o.config !== undefined || env.NOID_COORDINATOR_CONFIG !== undefined;
  const config = resolveConfig(readConfigFile(path, explicit), envLayer(env), flagsLayer(o));
  const logger = createLogger({ name: "coordinator", level: config.logging.level });
  const handle = await startCoordinator({ config, logger });
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal: sig }, "stopping");
    void handle.stop().then(() => process.exit(0));
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

main().catch((e: unknown) => {
  const msg = e instanceof NoidError ? e.message : e instanceof Error ? e.message : String(e);
  process.stderr.write(`noid-coordinator: ${msg}\n`);
  process.exit(1);
});
