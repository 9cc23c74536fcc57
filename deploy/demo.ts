// `npm run demo`: a whole Noid cluster on this machine. An embedded etcd and a
// coordinator in the root namespace, three agent hosts in network namespaces
// (reaching the coordinator through a unix socket), two tenants and their VMs.
// `npm run demo -- --down` removes every namespace, link and process it made.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createLab, destroyLab, labLeftovers } from "./lab/lab.js";
import { isAlive, killProcess, processRef, spawnDetached, type ProcessRef } from "../common/run.js";
import { configPath, loadConfig, saveConfig, withContext } from "../cli/config.js";
import { run as noidctl } from "../cli/program.js";
import { connect, Role, VmPhase, type NoidClient } from "../sdk/index.js";

const PREFIX = "nd";
const DIR = "/run/noid-demo";
const SOCKET = join(DIR, "coordinator.sock");
const STATE_FILE = join(DIR, "demo.json");
const LISTEN = "127.0.0.1:7654";
const HOSTS = 3;
const CONTEXTS = ["demo", "demo-alice", "demo-bob"];
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

interface DemoState {
  coordinator: ProcessRef;
  startedAt: string;
}

const say = (s = "") => process.stdout.write(s + "\n");

async function waitFor<T>(what: string, f: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last instanceof Error ? `: ${last.message}` : ""}`);
}

function readState(): DemoState | undefined {
  if (!existsSync(STATE_FILE)) return undefined;
  return JSON.parse(readFileSync(STATE_FILE, "utf8")) as DemoState;
}

async function down(): Promise<void> {
  const st = readState();
  if (st && isAlive(st.coordinator)) {
    say(`stopping coordinator (pid ${st.coordinator.pid}) and its embedded etcd`);
    await killProcess(st.coordinator, 10_000);
  }
  say(`removing lab "${PREFIX}": agents, VMs, namespaces, links`);
  await destroyLab(PREFIX);
  const left = await labLeftovers(PREFIX);
  rmSync(DIR, { recursive: true, force: true });
  const path = configPath(process.env);
  const cfg = loadConfig(path);
  for (const c of CONTEXTS) delete cfg.contexts[c];
  if (cfg.current_context && CONTEXTS.includes(cfg.current_context)) delete cfg.current_context;
  if (existsSync(path)) saveConfig(path, cfg);
  if (left.length) {
    say(`warning: still present: ${left.join(", ")}`);
    process.exitCode = 1;
  } else say("demo stopped; nothing left behind");
}

async function up(): Promise<void> {
  const st = readState();
  if (st && isAlive(st.coordinator)) {
    say("the demo is already running (npm run demo -- --down stops it)");
    return;
  }
  if (st || (await labLeftovers(PREFIX)).length) {
    say("cleaning up what an earlier demo left behind");
    await down();
  }
  mkdirSync(DIR, { recursive: true, mode: 0o700 });
  const stateDir = join(DIR, "coordinator");
  const t0 = Date.now();

  // 1. Coordinator with embedded etcd, on loopback and on a unix socket for the hosts.
  const pid = await spawnDetached(
    [process.execPath, join(root, "dist/coordinator/main.js"), "--insecure", "--listen", LISTEN, "--unix-socket", SOCKET, "--state-dir", stateDir],
    { logFile: join(DIR, "coordinator.log") },
  );
  const ref = processRef(pid);
  if (!ref) throw new Error(`coordinator exited at once; see ${join(DIR, "coordinator.log")}`);
  writeFileSync(STATE_FILE, JSON.stringify({ coordinator: ref, startedAt: new Date().toISOString() } satisfies DemoState));
  const tokenFile = join(stateDir, "admin.token");
  await waitFor("the coordinator's admin token", async () => (existsSync(tokenFile) && existsSync(SOCKET) ? true : undefined), 30_000);
  const adminToken = readFileSync(tokenFile, "utf8").trim();
  const admin = connect({ address: LISTEN, token: adminToken, insecure: true });
  await waitFor("the coordinator to answer", () => admin.whoAmI(), 30_000);
  say(`coordinator up on ${LISTEN} (embedded etcd, state in ${stateDir})`);

  // 2. Three hosts, each a network namespace on one underlay bridge, each running an agent.
  const lab = await createLab({ prefix: PREFIX, hosts: HOSTS, outside: true });
  for (const [i, h] of lab.hosts.entries()) {
    await lab.spawn(
      h,
      [
        process.execPath,
        join(root, "dist/agent/main.js"),
        "--coordinator",
        `unix:${SOCKET}`,
        "--insecure",
        "--name",
        `host${i + 1}`,
        "--address",
        h.address,
        "--state-dir",
        join(DIR, `agent-${h.name}`),
        "--token-file",
        tokenFile,
        "--ns-prefix",
        `${PREFIX}-${h.name}`,
        "--vcpus",
        "4",
        "--memory-mb",
        "4096",
        "--disk-gb",
        "40",
        "--label",
        `zone=z${i + 1}`,
      ],
      { logFile: join(DIR, `agent-${h.name}.log`) },
    );
  }
  await waitFor(
    `${HOSTS} hosts to join`,
    async () => ((await admin.listHosts()).filter((h) => h.state === 1).length === HOSTS ? true : undefined),
    30_000,
  );
  say(`${HOSTS} hosts joined: ${lab.hosts.map((h, i) => `host${i + 1} (${h.netns}, ${h.address})`).join(", ")}`);

  // 3. Two tenants with tokens and contexts, and their VMs.
  const tenants: Record<string, string> = {};
  for (const name of ["alice", "bob"]) {
    const existing = (await admin.listTokens()).find((t) => t.name === name);
    const created = existing ? await admin.rotateToken(name) : await admin.createToken({ name, role: Role.ROLE_USER });
    tenants[name] = created.secret;
  }
  const path = configPath(process.env);
  let cfg = loadConfig(path);
  cfg = withContext(cfg, "demo-alice", { server: LISTEN, token: tenants.alice!, insecure: true });
  cfg = withContext(cfg, "demo-bob", { server: LISTEN, token: tenants.bob!, insecure: true });
  cfg = withContext(cfg, "demo", { server: LISTEN, token: adminToken, insecure: true });
  saveConfig(path, cfg);

  const plan: Record<string, string[]> = { alice: ["web-1", "web-2", "db"], bob: ["api-1", "api-2"] };
  const clients: NoidClient[] = [admin];
  for (const [user, names] of Object.entries(plan)) {
    const c = connect({ address: LISTEN, token: tenants[user]!, insecure: true });
    clients.push(c);
    for (const n of names) await c.createVm(n, { vcpus: 1, memoryMb: 256, driver: "sandbox", antiAffinityGroup: n.replace(/-\d+$/, "") });
    for (const n of names) await c.waitForVm(n, (vm) => vm.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 60_000 });
  }
  say(`${Object.values(plan).flat().length} VMs of 2 tenants running, in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  say();
  await noidctl(["--context", "demo", "list", "--all-users"], cliDeps());
  say();
  await noidctl(["--context", "demo", "hosts"], cliDeps());
  say();
  // Placement matrix: which tenant runs where. (Tenant networks and the
  // cross-host connectivity matrix arrive with the mesh capability.)
  const vms = await admin.listVms({});
  const all = (await Promise.all(["alice", "bob"].map((o) => admin.listVms({ owner: o })))).flat();
  const hostNames = (await admin.listHosts()).map((h) => h.name);
  say("placement       " + hostNames.map((h) => h.padEnd(10)).join(""));
  for (const owner of ["alice", "bob"]) {
    const row = hostNames.map((h) => String(all.filter((v) => v.owner === owner && v.status?.hostName === h).length).padEnd(10));
    say(`  ${owner.padEnd(14)}${row.join("")}`);
  }
  void vms;
  clients.forEach((c) => c.close());
  say(`
Use it:
  npx noidctl --context demo list --all-users        # as admin
  npx noidctl --context demo-alice create web-3       # as tenant alice
  npx noidctl --context demo-bob list                 # bob sees only his VMs
  npx noidctl --context demo hosts
Logs: ${DIR}/*.log
Stop: npm run demo -- --down`);
}

function cliDeps() {
  return {
    env: process.env,
    io: {
      stdout: (s: string) => void process.stdout.write(s),
      stderr: (s: string) => void process.stderr.write(s),
      readStdin: async () => "",
      isTTY: false,
      cwd: process.cwd(),
    },
  };
}

const args = process.argv.slice(2);
if (args.includes("--help") || args.includes("-h")) {
  say("usage: npm run demo [-- --down]\n  starts (or stops) a local three-host Noid cluster in network namespaces");
} else {
  const main = args.includes("--down") ? down : up;
  main().catch(async (e: unknown) => {
    process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n(logs in ${DIR}; cleaning up)\n`);
    await down().catch(() => undefined);
    process.exit(1);
  });
}
