// The cluster lab: N "hosts" as network namespaces on one underlay bridge, as in
// shared/reference/netns-lab.sh. The bridge in the root namespace has no IP address,
// so the root namespace takes no part and no lab address leaves the machine.
import { agentCgroupDirs, removeCgroupTree } from "../../agent/drivers/sandbox/cgroup.js";
import { alreadyExists, during } from "../../common/errors.js";
import {
  type ProcessRef,
  type RunOptions,
  type RunResult,
  type Runner,
  type SpawnOptions,
  type Spawner,
  isAlive,
  killProcess,
  processRef,
  run as defaultRun,
  spawnDetached,
} from "../../common/run.js";
import {
  addressing,
  bridgeName,
  checkPrefix,
  defaultSubnet,
  hostNetns,
  hostUplink,
  outsideNetns,
  outsideUplink,
  ownedBy,
} from "./names.js";
import { type LabState, labDir, readLabState, removeLabDir, writeLabState } from "./state.js";

export interface LabHost {
  /** "h1", "h2", ... ("out" for the outside namespace). */
  name: string;
  netns: string;
  address: string;
}

export interface Lab {
  prefix: string;
  subnet: string;
  /** Directory for this lab's state and logs (/run/noid-lab/<prefix>). */
  dir: string;
  hosts: LabHost[];
  /** A namespace on the underlay that plays "the internet"/a client, when asked for. */
  outside?: LabHost;
  /** Runs a command on a host (by LabHost or name like "h1"). */
  exec(host: LabHost | string, argv: readonly string[], opts?: Omit<RunOptions, "netns">): Promise<RunResult>;
  /** Starts a long-running process on a host; its PID is recorded so destroy() kills it even after a crash. */
  spawn(host: LabHost | string, argv: readonly string[], opts?: Omit<SpawnOptions, "netns">): Promise<ProcessRef>;
  destroy(): Promise<void>;
}

export interface LabOptions {
  prefix: string;
  hosts: number;
  subnet?: string;
  outside?: boolean;
  runner?: Runner;
  spawner?: Spawner;
}

export async function createLab(opts: LabOptions): Promise<Lab> {
  const prefix = checkPrefix(opts.prefix);
  const run = opts.runner ?? defaultRun;
  const spawner = opts.spawner ?? spawnDetached;
  const addr = addressing(opts.subnet ?? defaultSubnet(prefix));
  if ((await listNetns(run)).some((n) => ownedBy(prefix, n)) || readLabState(prefix) !== undefined) {
    throw alreadyExists(`lab "${prefix}"`);
  }
  const state: LabState = { prefix, subnet: addr.subnet, hosts: opts.hosts, outside: !!opts.outside, processes: [] };
  writeLabState(state);

  const hosts: LabHost[] = [];
  try {
    const br = bridgeName(prefix);
    await run(["ip", "link", "add", br, "type", "bridge"]);
    // No IPv6 link-local either: the root namespace must hold no address on the lab.
    await run(["ip", "link", "set", br, "addrgenmode", "none"]);
    await run(["ip", "link", "set", br, "up"]);
    const plug = async (netns: string, uplink: string, address: string): Promise<void> => {
      await run(["ip", "netns", "add", netns]);
      await run(["ip", "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", netns]);
      await run(["ip", "link", "set", uplink, "addrgenmode", "none"]);
      await run(["ip", "link", "set", uplink, "master", br, "up"]);
      await run(["ip", "-n", netns, "link", "set", "lo", "up"]);
      await run(["ip", "-n", netns, "addr", "add", `${address}/${addr.prefixLen}`, "dev", "eth0"]);
      await run(["ip", "-n", netns, "link", "set", "eth0", "up"]);
      await run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], { netns });
    };
    for (let i = 1; i <= opts.hosts; i++) {
      const h: LabHost = { name: `h${i}`, netns: hostNetns(prefix, i), address: addr.host(i) };
      await plug(h.netns, hostUplink(prefix, i), h.address);
      hosts.push(h);
    }
    let outside: LabHost | undefined;
    if (opts.outside) {
      outside = { name: "out", netns: outsideNetns(prefix), address: addr.outside };
      await plug(outside.netns, outsideUplink(prefix), outside.address);
    }
    return labHandle(prefix, addr.subnet, hosts, outside, run, spawner);
  } catch (e) {
    await destroyLab(prefix, { runner: run }).catch(() => undefined);
    throw during(`creating lab ${prefix}`, e);
  }
}

function labHandle(
  prefix: string,
  subnet: string,
  hosts: LabHost[],
  outside: LabHost | undefined,
  run: Runner,
  spawner: Spawner,
): Lab {
  const all = outside ? [...hosts, outside] : hosts;
  const resolve = (h: LabHost | string): LabHost => {
    if (typeof h !== "string") return h;
    const found = all.find((x) => x.name === h || x.netns === h);
    if (!found) throw new Error(`lab ${prefix}: no host "${h}"`);
    return found;
  };
  return {
    prefix,
    subnet,
    dir: labDir(prefix),
    hosts,
    ...(outside ? { outside } : {}),
    exec: (h, argv, o = {}) => run(argv, { ...o, netns: resolve(h).netns }),
    async spawn(h, argv, o = {}) {
      const pid = await spawner(argv, { ...o, netns: resolve(h).netns });
      const ref = processRef(pid) ?? { pid, startTime: -1 };
      const s = readLabState(prefix);
      if (s) writeLabState({ ...s, processes: [...s.processes, { ...ref, argv: [...argv] }] });
      return ref;
    },
    destroy: () => destroyLab(prefix, { runner: run }),
  };
}

async function listNetns(run: Runner): Promise<string[]> {
  const r = await run(["ip", "-j", "netns", "list"], { allowFail: true });
  if (r.exitCode !== 0 || r.stdout.trim() === "") return [];
  return (JSON.parse(r.stdout) as { name: string }[]).map((n) => n.name);
}

async function listLinks(run: Runner): Promise<string[]> {
  const r = await run(["ip", "-j", "link", "show"]);
  return (JSON.parse(r.stdout) as { ifname: string }[]).map((l) => l.ifname);
}

/**
 * Removes everything of the lab `prefix`: recorded processes, every process living in one
 * of its namespaces (also VMs and daemons that agents started there), the namespaces,
 * the root-namespace links, and the state directory. Safe to call repeatedly and after a crash.
 */
export async function destroyLab(prefix: string, opts: { runner?: Runner } = {}): Promise<void> {
  checkPrefix(prefix);
  const run = opts.runner ?? defaultRun;
  const state = readLabState(prefix);
  for (const p of state?.processes ?? []) if (isAlive(p)) await killProcess(p);

  const namespaces = (await listNetns(run)).filter((n) => ownedBy(prefix, n));
  for (const ns of namespaces) {
    const r = await run(["ip", "netns", "pids", ns], { allowFail: true });
    const pids = r.stdout.split("\n").map(Number).filter((n) => Number.isInteger(n) && n > 0);
    await Promise.all(pids.map((pid) => processRef(pid)).filter((p) => p !== undefined).map((p) => killProcess(p)));
  }
  for (const ns of namespaces) await run(["ip", "netns", "del", ns], { allowFail: true });
  for (const link of (await listLinks(run)).filter((l) => ownedBy(prefix, l))) {
    await run(["ip", "link", "del", link], { allowFail: true });
  }
  // Namespace teardown is asynchronous in the kernel: wait until its veth ends are gone.
  for (let i = 0; i < 100; i++) {
    if (!(await listLinks(run)).some((l) => ownedBy(prefix, l))) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  // Sandbox VMs' cgroups (their processes were killed with the namespaces above).
  for (const dir of agentCgroupDirs((nsPrefix) => ownedBy(prefix, nsPrefix))) await removeCgroupTree(dir);
  removeLabDir(prefix);
}

/** What of the lab `prefix` still exists (empty when fully destroyed); for tests and `lab status`. */
export async function labLeftovers(prefix: string, opts: { runner?: Runner } = {}): Promise<string[]> {
  const run = opts.runner ?? defaultRun;
  const left = [
    ...(await listNetns(run)).filter((n) => ownedBy(prefix, n)).map((n) => `netns ${n}`),
    ...(await listLinks(run)).filter((l) => ownedBy(prefix, l)).map((l) => `link ${l}`),
  ];
  if (readLabState(prefix) !== undefined) left.push(`state ${labDir(prefix)}`);
  for (const dir of agentCgroupDirs((nsPrefix) => ownedBy(prefix, nsPrefix))) left.push(`cgroup ${dir}`);
  return left;
}
