// WireGuard: read `wg show <if> dump`, diff the peers against the topology (pure), and make
// sure the interface exists: the kernel's if it has one, else wireguard-go, started in the
// host's own mount namespace so its /run/wireguard/<if>.sock does not collide with another
// simulated host's on one machine.
import { NoidError, during, precondition } from "../common/errors.js";
import { type ProcessRef, type RunOptions, type Runner, type Spawner, killProcess, processRef } from "../common/run.js";
import type { MeshAction } from "./actions.js";
import type { HostMeshDesired } from "./topology.js";

export interface WgObservedPeer {
  publicKey: string;
  endpoint?: string;
  allowedIps: string[];
  latestHandshake: number;
  rxBytes: number;
  txBytes: number;
}

export interface WgObserved {
  /** Undefined when no private key is set. */
  publicKey?: string;
  listenPort: number;
  peers: WgObservedPeer[];
}

/**
 * Parses `wg show <if> dump`: a first line "private public port fwmark" for the interface,
 * then one line per peer "public psk endpoint allowed-ips handshake rx tx keepalive" (tabs).
 * The private key in line one is dropped here so that it goes no further.
 */
export function parseWgDump(text: string): WgObserved {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  const head = lines[0]?.split("\t");
  if (!head || head.length < 4) throw new NoidError("INTERNAL", "wg dump: no interface line");
  const none = (s: string | undefined): string | undefined => (s === undefined || s === "(none)" ? undefined : s);
  const peers = lines.slice(1).map((l): WgObservedPeer => {
    const f = l.split("\t");
    if (f.length < 8) throw new NoidError("INTERNAL", `wg dump: bad peer line (${f.length} fields)`);
    const endpoint = none(f[2]);
    const ips = none(f[3]);
    return {
      publicKey: f[0]!,
      ...(endpoint ? { endpoint } : {}),
      allowedIps: ips ? ips.split(",").sort() : [],
      latestHandshake: Number(f[4]),
      rxBytes: Number(f[5]),
      txBytes: Number(f[6]),
    };
  });
  const pub = none(head[1]);
  return { ...(pub ? { publicKey: pub } : {}), listenPort: Number(head[2]), peers };
}

/** Changes that make the interface's key, port and peers what the topology says; nothing else. */
export function planWireguard(desired: HostMeshDesired["wg"], observed: WgObserved): MeshAction[] {
  const ifname = desired.ifname;
  const out: MeshAction[] = [];
  if (observed.publicKey !== desired.publicKey) out.push({ kind: "wg-key", ifname });
  if (observed.listenPort !== desired.listenPort) out.push({ kind: "wg-port", ifname, port: desired.listenPort });
  const have = new Map(observed.peers.map((p) => [p.publicKey, p]));
  const want = new Set(desired.peers.map((p) => p.publicKey));
  for (const p of observed.peers) if (!want.has(p.publicKey)) out.push({ kind: "wg-peer-remove", ifname, publicKey: p.publicKey });
  for (const p of desired.peers) {
    const h = have.get(p.publicKey);
    const ips = [...p.allowedIps].sort();
    if (!h || h.endpoint !== p.endpoint || h.allowedIps.join(",") !== ips.join(",")) {
      out.push({ kind: "wg-peer-set", ifname, peer: { ...p, allowedIps: ips } });
    }
  }
  return out;
}

export interface HostNs {
  runner: Runner;
  /** The host's network namespace (a lab host); undefined = the current one. */
  netns?: string;
  /** The host's mount namespace file, for wireguard-go's socket (see mountns.ts). */
  mountNs?: string;
}

export const wgOpts = (h: HostNs): RunOptions => ({
  ...(h.netns !== undefined ? { netns: h.netns } : {}),
  ...(h.mountNs !== undefined ? { mountNs: h.mountNs } : {}),
});

export async function readWgDump(ifname: string, h: HostNs): Promise<WgObserved | undefined> {
  const r = await h.runner(["wg", "show", ifname, "dump"], { ...wgOpts(h), allowFail: true });
  return r.exitCode === 0 ? parseWgDump(r.stdout) : undefined;
}

export interface EnsuredWireguard {
  /** "existing" when it was there already. */
  how: "existing" | "kernel" | "userspace";
  /** The wireguard-go process we started (kill it by this ref to remove the interface). */
  process?: ProcessRef;
}

export async function ensureWireguard(
  ifname: string,
  h: HostNs & { spawner: Spawner; logFile?: string; waitMs?: number },
): Promise<EnsuredWireguard> {
  if (await readWgDump(ifname, h)) return { how: "existing" };
  const nsOpt = h.netns !== undefined ? { netns: h.netns } : {};
  const link = await h.runner(["ip", "link", "show", "dev", ifname], { ...nsOpt, allowFail: true });
  if (link.exitCode === 0) throw precondition(`${ifname} exists but is not a WireGuard interface we can talk to`);
  const kernel = await h.runner(["ip", "link", "add", ifname, "type", "wireguard"], { ...nsOpt, allowFail: true });
  if (kernel.exitCode === 0) return { how: "kernel" };
  // No kernel module: userspace. -f keeps it in the foreground so the PID we get is the daemon's.
  let pid: number;
  try {
    pid = await h.spawner(["wireguard-go", "-f", ifname], { ...wgOpts(h), ...(h.logFile ? { logFile: h.logFile } : {}) });
  } catch (e) {
    throw during(`starting wireguard-go for ${ifname}`, e);
  }
  const ref = processRef(pid);
  if (!ref) throw new NoidError("UNAVAILABLE", `wireguard-go ${ifname} (pid ${pid}) exited at once`);
  const deadline = Date.now() + (h.waitMs ?? 10_000);
  while (Date.now() < deadline) {
    if (await readWgDump(ifname, h)) return { how: "userspace", process: ref };
    await new Promise((r) => setTimeout(r, 50));
  }
  // Nobody else knows this daemon: stop it, or every failed attempt leaves one behind.
  await killProcess(ref).catch(() => undefined);
  throw new NoidError("UNAVAILABLE", `wireguard-go ${ifname} (pid ${pid}) did not open its socket within ${h.waitMs ?? 10_000} ms`);
}
