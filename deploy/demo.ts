// `npm run demo`: a whole Noid cluster on this machine (deploy/cluster.ts):
// embedded etcd + coordinator, three agent hosts in network namespaces, two
// tenants and their VMs. `npm run demo -- --down` removes every namespace,
// link and process it made.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { configPath, loadConfig, saveConfig, withContext } from "../cli/config.js";
import { run as noidctl } from "../cli/program.js";
import { isAlive } from "../common/run.js";
import { Role, VmPhase } from "../sdk/index.js";
import { labLeftovers } from "./lab/lab.js";
import { readClusterState, repoRoot, startLocalCluster, stopLocalCluster } from "./cluster.js";

const PREFIX = "nd";
const DIR = "/run/noid-demo";
const LISTEN = "127.0.0.1:7654";
const METRICS = "127.0.0.1:9654";
const CONTEXTS = ["demo", "demo-alice", "demo-bob"];
const TENANTS: Record<string, string[]> = { alice: ["web-1", "web-2", "db"], bob: ["api-1", "api-2"] };

const say = (s = "") => process.stdout.write(s + "\n");

/** The hosts offer qemu too when its guest is built (deploy/guest/build.sh) and QEMU is installed; VMs still default to sandbox. */
const qemuReady = (): boolean =>
  existsSync(join(repoRoot, ".noid/guest/vmlinuz")) &&
  (process.env.PATH ?? "").split(":").some((d) => d !== "" && existsSync(join(d, "qemu-system-x86_64")));

const cliDeps = {
  env: process.env,
  io: {
    stdout: (s: string) => void process.stdout.write(s),
    stderr: (s: string) => void process.stderr.write(s),
    readStdin: async () => "",
    isTTY: false,
    cwd: process.cwd(),
  },
};

function forgetContexts(): void {
  const path = configPath(process.env);
  if (!existsSync(path)) return;
  const cfg = loadConfig(path);
  for (const c of CONTEXTS) delete cfg.contexts[c];
  if (cfg.current_context && CONTEXTS.includes(cfg.current_context)) delete cfg.current_context;
  saveConfig(path, cfg);
}

async function down(): Promise<void> {
  say(`stopping the demo: coordinator, embedded etcd, agents, VMs, namespaces and links of "${PREFIX}"`);
  const left = await stopLocalCluster(DIR, PREFIX);
  forgetContexts();
  if (left.length) {
    say(`warning: still present: ${left.join(", ")}`);
    process.exitCode = 1;
  } else say("demo stopped; nothing left behind");
}

async function up(): Promise<void> {
  const st = readClusterState(DIR);
  if (st && isAlive(st.coordinator)) {
    say("the demo is already running: npx noidctl --context demo list --all-users   (stop: npm run demo -- --down)");
    return;
  }
  if (st || (await labLeftovers(PREFIX)).length) {
    say("cleaning up what an earlier demo left behind");
    await down();
  }
  const t0 = Date.now();
  const drivers = qemuReady() ? ["sandbox", "qemu"] : ["sandbox"];
  const cluster = await startLocalCluster({ prefix: PREFIX, dir: DIR, hosts: 3, listen: LISTEN, outside: true, drivers, coordinatorArgs: ["--metrics-listen", METRICS] });
  say(`coordinator on ${LISTEN} and ${cluster.socket} (embedded etcd); hosts: ${cluster.lab.hosts.map((h, i) => `${cluster.hostNames[i]} (${h.netns}, ${h.address})`).join(", ")}`);
  const admin = cluster.client();

  const secrets: Record<string, string> = {};
  for (const name of Object.keys(TENANTS)) {
    const created = await admin.createToken({ name, role: Role.ROLE_USER });
    secrets[name] = created.secret;
  }
  const path = configPath(process.env);
  let cfg = loadConfig(path);
  for (const name of Object.keys(TENANTS)) cfg = withContext(cfg, `demo-${name}`, { server: LISTEN, token: secrets[name]!, ca_file: cluster.caFile });
  cfg = withContext(cfg, "demo", { server: LISTEN, token: cluster.adminToken, ca_file: cluster.caFile });
  saveConfig(path, cfg);

  for (const [user, names] of Object.entries(TENANTS)) {
    const c = cluster.client(secrets[user]);
    for (const n of names) await c.createVm(n, { vcpus: 1, memoryMb: 256, driver: "sandbox", antiAffinityGroup: n.replace(/-\d+$/, "") });
    for (const n of names) await c.waitForVm(n, (vm) => vm.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 60_000 });
  }
  say(`${Object.values(TENANTS).flat().length} VMs of ${Object.keys(TENANTS).length} tenants running, ${((Date.now() - t0) / 1000).toFixed(1)} s after start\n`);
  await noidctl(["--context", "demo", "list", "--all-users"], cliDeps);
  say();
  await noidctl(["--context", "demo", "hosts"], cliDeps);
  say();
  const vms = (await Promise.all(Object.keys(TENANTS).map((o) => admin.listVms({ owner: o })))).flat();
  say("VMs per tenant and host (tenant networks and the cross-host connectivity matrix come with the mesh)");
  say("            " + cluster.hostNames.map((h) => h.padEnd(8)).join(""));
  for (const owner of Object.keys(TENANTS)) {
    say(`  ${owner.padEnd(10)}` + cluster.hostNames.map((h) => String(vms.filter((v) => v.owner === owner && v.status?.hostName === h).length).padEnd(8)).join(""));
  }
  say(`
Use it (contexts written to ${path}):
  npx noidctl --context demo list --all-users        # as admin
  npx noidctl --context demo-alice create web-3      # as tenant alice
  npx noidctl --context demo-bob list                # bob sees only his VMs
  npx noidctl --context demo hosts${drivers.includes("qemu") ? "\n  npx noidctl --context demo-alice create vm-q --driver qemu --memory 256   # a real QEMU guest (TCG)" : ""}
  npx noidctl --context demo events --watch          # VM lifecycle, hosts, security
  curl -s http://${METRICS}/metrics                # the coordinator's Prometheus metrics
Logs: ${DIR}/*.log
Stop: npm run demo -- --down`);
  process.exit(0);
}

const args = process.argv.slice(2);
if (args.includes("--help") || args.includes("-h")) {
  say("usage: npm run demo [-- --down]\n  starts (or stops) a local three-host Noid cluster in network namespaces");
} else if (args.includes("--down")) {
  down().catch((e: unknown) => {
    process.stderr.write(`demo --down failed: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
} else {
  up().catch(async (e: unknown) => {
    process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n`);
    for (const f of existsSync(DIR) ? readdirSync(DIR).filter((n) => n.endsWith(".log")) : []) {
      const tail = readFileSync(join(DIR, f), "utf8").trimEnd().split("\n").slice(-5).join("\n  ");
      process.stderr.write(`--- ${f} (last lines)\n  ${tail}\n`);
    }
    process.stderr.write("cleaning up\n");
    await down().catch(() => undefined);
    process.exit(1);
  });
}
