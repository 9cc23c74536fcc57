// Applies one host's share of the mesh: observe, diff (plan.ts), run only the difference,
// observe again and require an empty diff. A second apply on an unchanged host runs no
// changing command at all.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NoidError, during, invalid } from "../common/errors.js";
import { type Runner, type Spawner, spawnDetached } from "../common/run.js";
import { KEY_FILE, type MeshAction, actionCommands, describeAction } from "./actions.js";
import { publicKeyOf } from "./keys.js";
import { parseLinks } from "./links.js";
import { isMeshVxlan } from "./names.js";
import { type HostMeshObserved, planHostMesh } from "./plan.js";
import type { FdbEntrySpec, HostMeshDesired } from "./topology.js";
import { parseFdb } from "./vxlan.js";
import { type EnsuredWireguard, type HostNs, ensureWireguard, readWgDump, wgOpts } from "./wireguard.js";

export interface ApplyOptions extends Partial<HostNs> {
  runner: Runner;
  /** This host's WireGuard private key (base64); must match desired.wg.publicKey. */
  privateKey: string;
  /** Starts wireguard-go when the kernel has no WireGuard (default: spawnDetached). */
  spawner?: Spawner;
  /** wireguard-go's log. */
  wgLogFile?: string;
}

export interface ApplyResult {
  /** The changes made, in order; empty when the host already matched. */
  actions: MeshAction[];
  wireguard: EnsuredWireguard;
}

export async function observeHostMesh(ifname: string, h: HostNs): Promise<HostMeshObserved> {
  const wg = await readWgDump(ifname, h);
  if (!wg) throw new NoidError("UNAVAILABLE", `WireGuard interface ${ifname} is not reachable`);
  const ns = h.netns !== undefined ? { netns: h.netns } : {};
  const links = parseLinks((await h.runner(["ip", "-j", "-d", "addr", "show"], ns)).stdout);
  const fdb: Record<string, FdbEntrySpec[]> = {};
  for (const l of links) {
    if (l.kind !== "vxlan" || !isMeshVxlan(l.name)) continue;
    fdb[l.name] = parseFdb((await h.runner(["bridge", "-j", "fdb", "show", "dev", l.name], ns)).stdout);
  }
  return { wg, links, fdb };
}

/**
 * The private key, in a 0600 file in a fresh 0700 directory for as long as `fn` runs. Under
 * the OS temp dir, which a lab host's mount namespace shares (its /run is private).
 */
async function withKeyFile<T>(privateKey: string, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "noid-wgkey-"));
  try {
    const path = join(dir, "key");
    writeFileSync(path, `${privateKey}\n`, { mode: 0o600 });
    return await fn(path);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function runActions(actions: readonly MeshAction[], h: HostNs, privateKey: string): Promise<void> {
  const ns = h.netns !== undefined ? { netns: h.netns } : {};
  for (const a of actions) {
    for (const c of actionCommands(a)) {
      try {
        const opts = c.wg ? wgOpts(h) : ns;
        if (c.keyFile) {
          await withKeyFile(privateKey, (path) => h.runner(c.argv.map((x) => (x === KEY_FILE ? path : x)), opts));
        } else {
          await h.runner(c.argv, opts);
        }
      } catch (e) {
        throw during(`mesh: ${describeAction(a)}`, e);
      }
    }
  }
}

export async function applyHostMesh(desired: HostMeshDesired, opts: ApplyOptions): Promise<ApplyResult> {
  if (publicKeyOf(opts.privateKey) !== desired.wg.publicKey) {
    throw invalid("privateKey", `does not belong to the public key the mesh knows for ${desired.hostId}`);
  }
  const h: HostNs = {
    runner: opts.runner,
    ...(opts.netns !== undefined ? { netns: opts.netns } : {}),
    ...(opts.mountNs !== undefined ? { mountNs: opts.mountNs } : {}),
  };
  const wireguard = await ensureWireguard(desired.wg.ifname, {
    ...h,
    spawner: opts.spawner ?? spawnDetached,
    ...(opts.wgLogFile !== undefined ? { logFile: opts.wgLogFile } : {}),
  });
  const actions = planHostMesh(desired, await observeHostMesh(desired.wg.ifname, h));
  await runActions(actions, h, opts.privateKey);
  const left = planHostMesh(desired, await observeHostMesh(desired.wg.ifname, h));
  if (left.length > 0) {
    throw new NoidError("INTERNAL", `mesh of ${desired.hostId} did not converge; still: ${left.map(describeAction).join("; ")}`);
  }
  return { actions, wireguard };
}
