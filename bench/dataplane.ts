// Figure 5, the data plane: two "hosts" of a namespace lab (deploy/lab), the
// mesh built by the mesh library (wireguard-go, VXLAN, bridges), a tenant
// "VM" (a namespace with a veth, as the sandbox driver makes) on each host
// per path, and iperf3 TCP plus ping between the two VMs of each path:
//
//   underlay       host to host over the lab's veth + bridge (the limit)
//   vxlan          VMs on a "vxlan" network: VXLAN on the underlay, unencrypted
//   wg             VMs routed over the hosts' WireGuard link (no VXLAN)
//   vxlan_over_wg  VMs on a "wireguard" network: VXLAN between mesh IPs, inside WireGuard
//
// Everything it makes carries a unique lab prefix and is removed at the end
// (processes killed by PID, then destroyLab); nothing leaves the lab.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { isAlive, killProcess, processRef, run, spawnDetached, type ProcessRef } from "../common/run.js";
import { createLab, destroyLab, labLeftovers, type Lab } from "../deploy/lab/lab.js";
import { applyHostMesh } from "../mesh/apply.js";
import { generateKeyPair, type WgKeyPair } from "../mesh/keys.js";
import { createMountNs, removeMountNsDir } from "../mesh/mountns.js";
import { WG_IFNAME, bridgeName } from "../mesh/names.js";
import { hostMesh, meshIpFor, mtus, type MeshMember, type MeshNetwork } from "../mesh/topology.js";
import { figure, type Figure } from "./stats.js";

const SETTINGS = { meshCidr: "100.64.0.0/16", uplinkMtu: 1500 };
const WG_PORT = 51820;
const IPERF_PORT = 5201;
const NETS = {
  vxlan: { vni: 3101, mode: "vxlan" as const, cidr: "10.151.0.0/24", gateway: "10.151.0.1", ip: (i: number) => `10.151.0.${10 + i}` },
  vxlan_over_wg: { vni: 3102, mode: "wireguard" as const, cidr: "10.152.0.0/24", gateway: "10.152.0.1", ip: (i: number) => `10.152.0.${10 + i}` },
};
/** The routed-over-WireGuard VMs: host i has 10.153.i.0/24, its VM .2, its side of the veth .1. */
const wgVmIp = (i: number) => `10.153.${i}.2`;

type Path = "underlay" | "vxlan" | "wg" | "vxlan_over_wg";

export interface DataplaneResult {
  mbps: Record<Path, number>;
  rttMs: Record<Path, number>;
  /** Underlay throughput measured first and last (the limit is their mean). */
  underlayRuns: number[];
}

export async function measureDataplane(o: { seconds: number; log: (s: string) => void }): Promise<DataplaneResult> {
  const prefix = `bd${randomBytes(3).toString("hex")}`;
  const mntDir = `/run/noid-bench-${prefix}`;
  const procs: ProcessRef[] = [];
  let lab: Lab | undefined;
  try {
    lab = await createLab({ prefix, hosts: 2 });
    const L = lab;
    const keys: WgKeyPair[] = [generateKeyPair(), generateKeyPair()];
    const mountNs: string[] = [];
    for (const h of L.hosts) mountNs.push(await createMountNs(mntDir, h.name, { runner: run, netns: h.netns }));
    const mac = (net: number, i: number) => `02:00:00:${net.toString(16).padStart(2, "0")}:00:0${i}`;
    const members: MeshMember[] = [1, 2].map((i) => ({
      hostId: `host-${i}`,
      name: `h${i}`,
      underlay: L.hosts[i - 1]!.address,
      wgPublicKey: keys[i - 1]!.publicKey,
      wgPort: WG_PORT,
      meshIp: meshIpFor(SETTINGS.meshCidr, i),
      networks: (Object.entries(NETS) as [keyof typeof NETS, (typeof NETS)[keyof typeof NETS]][]).map(
        ([id, n]): MeshNetwork => ({ networkId: id, vni: n.vni, mode: n.mode, cidr: n.cidr, gateway: n.gateway, vms: [{ mac: mac(n.vni & 0xff, i), ip: n.ip(i) }] }),
      ),
    }));
    for (const i of [1, 2]) {
      const r = await applyHostMesh(hostMesh(members, `host-${i}`, SETTINGS), {
        runner: run,
        netns: L.hosts[i - 1]!.netns,
        mountNs: mountNs[i - 1]!,
        privateKey: keys[i - 1]!.privateKey,
        spawner: async (argv, so) => (await L.spawn(L.hosts[i - 1]!, argv, so ?? {})).pid,
        wgLogFile: join(L.dir, `wg-h${i}.log`),
      });
      if (r.wireguard.process) procs.push(r.wireguard.process);
    }
    const mtu = mtus(SETTINGS.uplinkMtu);
    const vmNs = (path: Path, i: number) => `${prefix}-${path === "vxlan" ? "x" : path === "wg" ? "w" : "e"}${i}`;
    // The VMs: a namespace each, a veth into the host (bridged for the VXLAN paths, routed for wg).
    for (const i of [1, 2]) {
      const h = L.hosts[i - 1]!.netns;
      for (const [path, n, m] of [
        ["vxlan", NETS.vxlan, mtu.vxlan],
        ["vxlan_over_wg", NETS.vxlan_over_wg, mtu.vxlanOverWg],
      ] as const) {
        const ns = vmNs(path, i);
        const port = `${path === "vxlan" ? "x" : "e"}${i}p`;
        await run(["ip", "netns", "add", ns]);
        await run(["ip", "-n", h, "link", "add", port, "mtu", String(m), "type", "veth", "peer", "name", "eth0", "netns", ns]);
        await run(["ip", "-n", ns, "link", "set", "eth0", "address", mac(n.vni & 0xff, i), "mtu", String(m), "up"]);
        await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
        await run(["ip", "-n", ns, "addr", "add", `${n.ip(i)}/24`, "dev", "eth0"]);
        await run(["ip", "-n", h, "link", "set", port, "master", bridgeName(n.vni), "up"]);
      }
      const ns = vmNs("wg", i);
      await run(["ip", "netns", "add", ns]);
      await run(["ip", "-n", h, "link", "add", `w${i}p`, "mtu", String(mtu.wg), "type", "veth", "peer", "name", "eth0", "netns", ns]);
      await run(["ip", "-n", h, "addr", "add", `10.153.${i}.1/24`, "dev", `w${i}p`]);
      await run(["ip", "-n", h, "link", "set", `w${i}p`, "up"]);
      await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
      await run(["ip", "-n", ns, "link", "set", "eth0", "mtu", String(mtu.wg), "up"]);
      await run(["ip", "-n", ns, "addr", "add", `${wgVmIp(i)}/24`, "dev", "eth0"]);
      await run(["ip", "-n", ns, "route", "add", "default", "via", `10.153.${i}.1`]);
      // The other host's VM subnet goes through WireGuard to that host's peer.
      const j = 3 - i;
      await run(["ip", "-n", h, "route", "add", `10.153.${j}.0/24`, "dev", WG_IFNAME]);
      await run(["wg", "set", WG_IFNAME, "peer", keys[j - 1]!.publicKey, "allowed-ips", `${members[j - 1]!.meshIp}/32,10.153.${j}.0/24`], {
        netns: h,
        mountNs: mountNs[i - 1]!,
      });
    }
    const ends: Record<Path, { client: string; server: string; ip: string }> = {
      underlay: { client: L.hosts[0]!.netns, server: L.hosts[1]!.netns, ip: L.hosts[1]!.address },
      vxlan: { client: vmNs("vxlan", 1), server: vmNs("vxlan", 2), ip: NETS.vxlan.ip(2) },
      wg: { client: vmNs("wg", 1), server: vmNs("wg", 2), ip: wgVmIp(2) },
      vxlan_over_wg: { client: vmNs("vxlan_over_wg", 1), server: vmNs("vxlan_over_wg", 2), ip: NETS.vxlan_over_wg.ip(2) },
    };
    // Reachability first (a WireGuard handshake on a loaded machine takes a while): bounded retry.
    for (const [path, e] of Object.entries(ends)) {
      const until = Date.now() + 30_000;
      while ((await run(["ping", "-c", "1", "-W", "1", e.ip], { netns: e.client, allowFail: true })).exitCode !== 0) {
        if (Date.now() > until) throw new Error(`dataplane: ${path} VM ${e.ip} unreachable after 30 s`);
      }
    }
    const rtt = async (e: { client: string; ip: string }): Promise<number> => {
      const r = await run(["ping", "-q", "-c", "20", "-i", "0.05", "-W", "1", e.ip], { netns: e.client, allowFail: true });
      const m = /= [\d.]+\/([\d.]+)\//.exec(r.stdout);
      if (!m) throw new Error(`dataplane: no ping summary from ${e.ip}: ${r.stdout}${r.stderr}`);
      return Number(m[1]);
    };
    const iperf = async (path: Path): Promise<number> => {
      const e = ends[path];
      const pid = await spawnDetached(["iperf3", "-s", "-1", "-B", e.ip, "-p", String(IPERF_PORT)], { netns: e.server });
      const ref = processRef(pid);
      if (ref) procs.push(ref);
      try {
        const until = Date.now() + 15_000;
        for (;;) {
          const r = await run(["iperf3", "-c", e.ip, "-p", String(IPERF_PORT), "-t", String(o.seconds), "-J"], {
            netns: e.client,
            allowFail: true,
            timeoutMs: (o.seconds + 30) * 1000,
          });
          let j: { error?: string; end?: { sum_received?: { bits_per_second: number } } } = {};
          try {
            j = JSON.parse(r.stdout) as typeof j;
          } catch {
            /* not JSON: reported below */
          }
          const bps = j.end?.sum_received?.bits_per_second;
          if (r.exitCode === 0 && bps !== undefined) return bps / 1e6;
          // The server may not listen yet: retry a refused connection, bounded.
          if (Date.now() > until) throw new Error(`dataplane: iperf3 over ${path} failed: ${j.error ?? r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
          await new Promise((res) => setTimeout(res, 200));
        }
      } finally {
        if (ref && isAlive(ref)) await killProcess(ref);
      }
    };
    const mbps = {} as Record<Path, number>;
    const rttMs = {} as Record<Path, number>;
    const first = await iperf("underlay");
    for (const p of ["vxlan", "wg", "vxlan_over_wg"] as const) mbps[p] = await iperf(p);
    const last = await iperf("underlay");
    mbps.underlay = (first + last) / 2;
    for (const p of ["underlay", "vxlan", "wg", "vxlan_over_wg"] as const) rttMs[p] = await rtt(ends[p]);
    o.log(
      `dataplane: TCP Mbit/s underlay ${first.toFixed(0)}/${last.toFixed(0)} (first/last), vxlan ${mbps.vxlan.toFixed(0)}, wg ${mbps.wg.toFixed(0)}, vxlan-over-wg ${mbps.vxlan_over_wg.toFixed(0)}; ` +
        `RTT ms underlay ${rttMs.underlay.toFixed(3)}, vxlan ${rttMs.vxlan.toFixed(3)}, wg ${rttMs.wg.toFixed(3)}, vxlan-over-wg ${rttMs.vxlan_over_wg.toFixed(3)}`,
    );
    return { mbps, rttMs, underlayRuns: [first, last] };
  } finally {
    for (const p of procs) if (isAlive(p)) await killProcess(p);
    await destroyLab(prefix).catch((e: unknown) => o.log(`dataplane: destroying lab ${prefix}: ${String(e)}`));
    await removeMountNsDir(mntDir, { runner: run }).catch((e: unknown) => o.log(`dataplane: removing ${mntDir}: ${String(e)}`));
    const left = await labLeftovers(prefix).catch(() => [] as string[]);
    if (left.length > 0) o.log(`dataplane: LEFT OVER after cleanup: ${left.join(", ")}`);
  }
}

export function dataplaneFigures(r: DataplaneResult, seconds: number): Figure[] {
  const names: Record<Exclude<Path, "underlay">, string> = { vxlan: "vxlan", wg: "wg", vxlan_over_wg: "vxlan_over_wg" };
  const what: Record<Exclude<Path, "underlay">, string> = {
    vxlan: "VXLAN on the underlay (unencrypted), VMs bridged",
    wg: "VMs routed over the hosts' WireGuard link (wireguard-go, no VXLAN)",
    vxlan_over_wg: "VXLAN between mesh IPs inside WireGuard (wireguard-go), VMs bridged: the default tenant network",
  };
  const figs: Figure[] = [];
  for (const p of ["vxlan", "wg", "vxlan_over_wg"] as const) {
    figs.push(
      figure({
        name: `dataplane_${names[p]}_ratio`,
        value: r.mbps[p],
        unit: "Mbit/s",
        limit: r.mbps.underlay,
        target: NaN,
        targetOn: "ratio",
        direction: "min",
        limitOf: `iperf3 TCP (1 stream, ${seconds} s) between two namespaces on the lab's plain veth underlay, same run (first ${r.underlayRuns[0]!.toFixed(0)}, last ${r.underlayRuns[1]!.toFixed(0)} Mbit/s)`,
        notes: `${what[p]}; iperf3 TCP 1 stream ${seconds} s VM to VM across two lab hosts`,
      }),
    );
  }
  for (const p of ["vxlan", "wg", "vxlan_over_wg"] as const) {
    figs.push(
      figure({
        name: `dataplane_${names[p]}_rtt_ms`,
        value: r.rttMs[p],
        unit: "ms",
        limit: r.rttMs.underlay,
        target: NaN,
        targetOn: "value",
        direction: "max",
        limitOf: `ping RTT (mean of 20) host to host on the plain veth underlay, same run`,
        notes: `${what[p]}; ping mean of 20, VM to VM`,
      }),
    );
  }
  return figs;
}
