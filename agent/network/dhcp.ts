// DHCP on each tenant network bridge: one dnsmasq per bridge (Debian's dnsmasq-base), bound to
// that bridge only, answering only the MAC -> IP pairs the coordinator reserved for this host's
// VMs of the network (static leases, no dynamic range), with the gateway and the network's MTU.
// Overlapping tenant CIDRs on one host are fine: each instance serves one bridge. A request that
// crosses the mesh to another host finds no reservation there and gets no answer.
//
// Pure rendering (dhcpConf) + apply by diff: a changed config (a VM came or went) restarts that
// network's server. The reservations are in the config itself, which dnsmasq reads as root
// before it drops to "nobody" (a hosts file reread on SIGHUP would have to be readable by
// nobody). Processes are recorded by PID and start time and killed by PID only; an agent
// restart adopts the running ones.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import ipaddr from "ipaddr.js";
import type { Logger } from "../../common/logger.js";
import { type ProcessRef, type Spawner, isAlive, killProcess, processRef, spawnDetached } from "../../common/run.js";
import { findExecutable } from "../drivers/from-config.js";
import type { MeshView } from "./view.js";

export interface DhcpNetwork {
  vni: number;
  cidr: string;
  gateway: string;
  mtu: number;
  /** This host's VMs on the network. */
  vms: readonly { mac: string; ip: string }[];
}

const bridgeOf = (vni: number): string => `vmnet${vni}`;

/** Pure: what each network's server must serve on this host, from the host's mesh view. */
export function dhcpNetworksOf(view: Pick<MeshView, "selfNetworks" | "local" | "desired">): DhcpNetwork[] {
  const local = [...view.local.values()];
  return view.selfNetworks.flatMap((n) => {
    const bridge = view.desired.networks.find((d) => d.vni === n.vni)?.bridge;
    if (!bridge) return []; // no bridge on this host (yet): nothing to serve it on
    const vms = local.filter((a) => a.networkId === n.networkId).map((a) => ({ mac: a.mac, ip: a.ip }));
    return [{ vni: n.vni, cidr: n.cidr, gateway: n.gateway, mtu: bridge.mtu, vms }];
  });
}

/** dnsmasq's config for one network; reservations sorted so equal sets render equal. */
export function dhcpConf(n: DhcpNetwork, dir: string): string {
  const [addr, len] = ipaddr.parseCIDR(n.cidr);
  const mask = ipaddr.IPv4.subnetMaskFromPrefixLength(len).toString();
  const b = bridgeOf(n.vni);
  const hosts = [...n.vms].map((v) => `dhcp-host=${v.mac.toLowerCase()},${v.ip}`).sort();
  return [
    "# Written by the noid agent (agent/network/dhcp.ts): DHCP for one tenant network.",
    "port=0", // no DNS
    `interface=${b}`,
    "bind-interfaces",
    "except-interface=lo",
    `dhcp-range=${addr.toString()},static,${mask},1h`,
    ...hosts,
    `dhcp-option=option:router,${n.gateway}`,
    `dhcp-option=option:mtu,${n.mtu}`,
    // Requests flood over the mesh to the other hosts of the network, whose servers share the
    // gateway address: a server ignores every client it has no reservation for (never a NAK).
    "dhcp-ignore=tag:!known",
    `dhcp-leasefile=${join(dir, `${b}.leases`)}`,
    "no-resolv",
    "no-hosts",
    "",
  ].join("\n");
}

interface Running {
  ref: ProcessRef;
  conf: string;
}

export class DhcpServers {
  private readonly dir: string;
  private warned = false;

  constructor(private readonly o: { stateDir: string; logger: Logger; spawner?: Spawner; binary?: string }) {
    this.dir = join(o.stateDir, "dhcp");
  }

  private path(vni: number, ext: string): string {
    return join(this.dir, `${bridgeOf(vni)}.${ext}`);
  }

  private running(vni: number): Running | undefined {
    const f = this.path(vni, "json");
    if (!existsSync(f)) return undefined;
    try {
      const r = JSON.parse(readFileSync(f, "utf8")) as Running;
      return isAlive(r.ref) ? r : undefined;
    } catch {
      return undefined;
    }
  }

  /** Makes the servers match `networks` (their bridges must exist). Returns what changed. */
  async apply(networks: readonly DhcpNetwork[]): Promise<string[]> {
    const bin = this.o.binary ?? findExecutable("dnsmasq");
    if (!bin) {
      if (!this.warned) this.o.logger.warn("dnsmasq is not installed (Debian dnsmasq-base): no DHCP on tenant bridges; VMs get their address directly");
      this.warned = true;
      return [];
    }
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const changes: string[] = [];
    const want = new Set(networks.map((n) => n.vni));
    for (const n of networks) {
      const conf = dhcpConf(n, this.dir);
      let cur = this.running(n.vni);
      if (cur && cur.conf === conf) continue;
      if (cur) await killProcess(cur.ref);
      writeFileSync(this.path(n.vni, "conf"), conf, { mode: 0o600 });
      const spawn = this.o.spawner ?? spawnDetached;
      const pid = await spawn([bin, "--keep-in-foreground", `--conf-file=${this.path(n.vni, "conf")}`], { logFile: this.path(n.vni, "log") });
      const ref = processRef(pid);
      if (!ref) throw new Error(`dnsmasq for ${bridgeOf(n.vni)} exited at once; see ${this.path(n.vni, "log")}`);
      writeFileSync(this.path(n.vni, "json"), JSON.stringify({ ref, conf } satisfies Running));
      changes.push(`${cur ? "restart" : "start"} dhcp on ${bridgeOf(n.vni)} (${n.vms.length} reservations)`);
      cur = undefined;
    }
    // Networks that left this host.
    for (const f of existsSync(this.dir) ? readdirSync(this.dir) : []) {
      const m = /^vmnet(\d+)\.json$/.exec(f);
      if (!m || want.has(Number(m[1]))) continue;
      const vni = Number(m[1]);
      const cur = this.running(vni);
      if (cur) await killProcess(cur.ref);
      for (const ext of ["json", "conf", "leases", "log"]) rmSync(this.path(vni, ext), { force: true });
      changes.push(`stop dhcp on ${bridgeOf(vni)}`);
    }
    return changes;
  }
}
