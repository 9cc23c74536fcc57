// Privileged: the mesh library on a 3-host namespace lab with real wireguard-go, VXLAN and
// nftables. Two tenants use the SAME CIDR; their VMs (netns + veth) sit on per-network bridges.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ProcessRef, isAlive, killProcess, run } from "../../common/run.js";
import { createLab, destroyLab, labLeftovers, type Lab, type LabHost } from "../../deploy/lab/lab.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { applyHostMesh } from "../../mesh/apply.js";
import { applyGuards, readGuardCounters } from "../../mesh/guards-apply.js";
import type { GuardSpec } from "../../mesh/guards.js";
import { type WgKeyPair, generateKeyPair } from "../../mesh/keys.js";
import { createMountNs, removeMountNsDir } from "../../mesh/mountns.js";
import { parseFdb } from "../../mesh/vxlan.js";
import { parseWgDump } from "../../mesh/wireguard.js";
import { type MeshMember, type MeshNetwork, hostMesh, meshIpFor } from "../../mesh/topology.js";

const prefix = `ms${randomBytes(3).toString("hex")}`;
const mntDir = `/run/noid-mesh-${prefix}`;
const settings = { meshCidr: "100.64.0.0/16", uplinkMtu: 1500 };
const WG_PORT = 51820;

interface Vm { name: string; host: number; tenant: "ta" | "tb"; mac: string; ip: string }
const VMS: Vm[] = [
  { name: "a1", host: 1, tenant: "ta", mac: "02:00:00:0a:00:01", ip: "10.20.0.11" },
  { name: "a2", host: 2, tenant: "ta", mac: "02:00:00:0a:00:02", ip: "10.20.0.12" },
  { name: "b1", host: 1, tenant: "tb", mac: "02:00:00:0b:00:01", ip: "10.20.0.11" }, // same IP as a1
  { name: "b3", host: 3, tenant: "tb", mac: "02:00:00:0b:00:03", ip: "10.20.0.13" },
];
const VNI = { ta: 1001, tb: 1002 } as const;
const vmNs = (v: Vm): string => `${prefix}-${v.name}`;
const vmPort = (v: Vm): string => `${v.name}p`;

let lab: Lab;
const keys: WgKeyPair[] = [];
const mountNs: string[] = [];
const wgProcs: ProcessRef[] = [];

const host = (i: number): LabHost => lab.hosts[i - 1]!;
function members(hosts: number[]): MeshMember[] {
  return hosts.map((i) => {
    const networks: MeshNetwork[] = (["ta", "tb"] as const)
      .filter((t) => VMS.some((v) => v.host === i && v.tenant === t))
      .map((t) => ({
        networkId: t, vni: VNI[t], mode: "wireguard", cidr: "10.20.0.0/24", gateway: "10.20.0.1",
        vms: VMS.filter((v) => v.host === i && v.tenant === t).map((v) => ({ mac: v.mac, ip: v.ip })),
      }));
    return {
      hostId: `host-${i}`, name: `h${i}`, underlay: host(i).address, wgPublicKey: keys[i - 1]!.publicKey, wgPort: WG_PORT,
      meshIp: meshIpFor(settings.meshCidr, i), networks,
    };
  });
}

async function applyHost(i: number, ms: MeshMember[]) {
  const r = await applyHostMesh(hostMesh(ms, `host-${i}`, settings), {
    runner: run,
    netns: host(i).netns,
    mountNs: mountNs[i - 1]!,
    privateKey: keys[i - 1]!.privateKey,
    spawner: async (argv, o) => (await lab.spawn(host(i), argv, o ?? {})).pid,
    wgLogFile: join(lab.dir, `wg-h${i}.log`),
  });
  if (r.wireguard.process) wgProcs.push(r.wireguard.process);
  return r;
}

const guardSpec = (i: number): GuardSpec => ({
  vms: VMS.filter((v) => v.host === i).map((v) => ({ vmId: `vm-${v.name}`, port: vmPort(v), mac: v.mac, ip: v.ip })),
  uplinks: (["ta", "tb"] as const).filter((t) => VMS.some((v) => v.host === i && v.tenant === t)).map((t) => ({ port: `vx${VNI[t]}`, gateway: "10.20.0.1" })),
});

async function ping(v: Vm, target: string, extra: string[] = []): Promise<boolean> {
  const argv = [...pingArgv(target, { count: 2, waitS: 1 })];
  argv.splice(1, 0, ...extra);
  return (await run(argv, { netns: vmNs(v), allowFail: true })).exitCode === 0;
}

// Positive reachability is awaited (a WireGuard handshake under a loaded CI machine can take
// seconds); negative reachability is a single bounded attempt, asserted false.
async function reaches(v: Vm, target: string, extra: string[] = [], timeoutMs = 20_000): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await ping(v, target, extra)) return true;
    if (Date.now() > until) return false;
  }
}

async function wgDump(i: number) {
  return parseWgDump((await run(["wg", "show", "wg-noid", "dump"], { netns: host(i).netns, mountNs: mountNs[i - 1]! })).stdout);
}
async function fdb(i: number, dev: string) {
  return parseFdb((await run(["bridge", "-j", "fdb", "show", "dev", dev], { netns: host(i).netns })).stdout);
}

beforeAll(async () => {
  lab = await createLab({ prefix, hosts: 3 });
  for (const h of lab.hosts) {
    keys.push(generateKeyPair());
    mountNs.push(await createMountNs(mntDir, h.name, { runner: run, netns: h.netns }));
  }
});

afterAll(async () => {
  for (const p of wgProcs) if (isAlive(p)) await killProcess(p);
  await destroyLab(prefix);
  await removeMountNsDir(mntDir, { runner: run });
  expect(await labLeftovers(prefix)).toEqual([]);
  expect(existsSync(mntDir)).toBe(false);
});

describe("mesh on a 3-host lab", () => {
  it("builds the mesh, isolates tenants that share a CIDR, and guards VM ports", async () => {
    const all = members([1, 2, 3]);
    for (const i of [1, 2, 3]) {
      const r = await applyHost(i, all);
      expect(r.actions.length).toBeGreaterThan(0);
      expect(r.wireguard.how).not.toBe("existing");
    }
    // "VMs": a namespace each, a veth into its network's bridge, MTU of the overlay.
    for (const v of VMS) {
      const h = host(v.host).netns;
      await run(["ip", "netns", "add", vmNs(v)]);
      await run(["ip", "-n", h, "link", "add", vmPort(v), "mtu", "1390", "type", "veth", "peer", "name", "eth0", "netns", vmNs(v)]);
      await run(["ip", "-n", vmNs(v), "link", "set", "eth0", "address", v.mac, "mtu", "1390", "up"]);
      await run(["ip", "-n", vmNs(v), "addr", "add", `${v.ip}/24`, "dev", "eth0"]);
      await run(["ip", "-n", h, "link", "set", vmPort(v), "master", `vmnet${VNI[v.tenant]}`, "up"]);
    }
    for (const i of [1, 2, 3]) expect(await applyGuards(guardSpec(i), { runner: run, netns: host(i).netns })).not.toEqual([]);

    const [a1, a2, b1, b3] = VMS as [Vm, Vm, Vm, Vm];
    expect(await reaches(a1, a2.ip)).toBe(true); // tenant A, h1 -> h2
    expect(await reaches(b3, b1.ip)).toBe(true); // tenant B, h3 -> h1 (b1 has a1's IP)
    expect(await ping(a1, b3.ip)).toBe(false); // tenant A cannot reach tenant B's VM
    expect(await ping(b3, a2.ip)).toBe(false);
    const neigh = (await run(["ip", "-n", vmNs(b3), "-j", "neigh", "show", b1.ip])).stdout;
    expect(neigh).toContain(b1.mac); // the same IP resolved inside tenant B only

    // On the underlay only WireGuard is seen: capture on h1's uplink during a VM ping.
    const log = join(lab.dir, "tcpdump-h1.log");
    const cap = await lab.spawn(host(1), ["timeout", "15", "tcpdump", "-nli", "eth0", "-c", "6", "ip"], { logFile: log });
    for (let t = 0; t < 200 && !(existsSync(log) && readFileSync(log, "utf8").includes("listening on")); t++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    await run(["ping", "-c", "6", "-i", "0.2", a2.ip], { netns: vmNs(a1) });
    for (let t = 0; t < 400 && isAlive(cap); t++) await new Promise((r) => setTimeout(r, 25));
    const lines = readFileSync(log, "utf8").split("\n").filter((l) => / IP /.test(l));
    expect(lines.length).toBe(6);
    for (const l of lines) expect(l).toMatch(new RegExp(`\\.${WG_PORT} > .*\\.${WG_PORT}: UDP`));

    // A spoofed source IP from a1 is dropped at its port and counted.
    const before = (await readGuardCounters(guardSpec(1), { runner: run, netns: host(1).netns })).find((c) => c.vm === "vm-a1" && c.kind === "ip")!;
    await run(["ip", "-n", vmNs(a1), "addr", "add", "10.20.0.99/24", "dev", "eth0"]);
    expect(await ping(a1, a2.ip, ["-I", "10.20.0.99"])).toBe(false);
    await run(["ip", "-n", vmNs(a1), "addr", "del", "10.20.0.99/24", "dev", "eth0"]);
    const after = (await readGuardCounters(guardSpec(1), { runner: run, netns: host(1).netns })).find((c) => c.vm === "vm-a1" && c.kind === "ip")!;
    expect(after.packets).toBeGreaterThan(before.packets);
    expect(await reaches(a1, a2.ip)).toBe(true); // legit traffic still flows

    // Tampering is drift: the table is replaced, and the counts survive the replacement.
    await run(["nft", "flush", "chain", "bridge", "noid_guard", "vmports"], { netns: host(1).netns });
    expect((await applyGuards(guardSpec(1), { runner: run, netns: host(1).netns })).join()).toMatch(/rules differ/);
    const kept = (await readGuardCounters(guardSpec(1), { runner: run, netns: host(1).netns })).find((c) => c.vm === "vm-a1" && c.kind === "ip")!;
    expect(kept.packets).toBeGreaterThanOrEqual(after.packets);

    // A second apply changes nothing.
    for (const i of [1, 2, 3]) {
      expect((await applyHost(i, all)).actions).toEqual([]);
      expect(await applyGuards(guardSpec(i), { runner: run, netns: host(i).netns })).toEqual([]);
    }
  });

  it("removing a host removes its peer and FDB entries everywhere", async () => {
    const h3 = members([1, 2, 3])[2]!;
    expect((await fdb(1, "vx1002")).map((e) => e.dst)).toContain(h3.meshIp);
    const rest = members([1, 2]);
    for (const i of [1, 2]) {
      const kinds = (await applyHost(i, rest)).actions.map((a) => a.kind);
      expect(kinds).toContain("wg-peer-remove");
    }
    for (const i of [1, 2]) {
      const dump = await wgDump(i);
      expect(dump.peers.map((p) => p.publicKey)).not.toContain(h3.wgPublicKey);
      expect(dump.peers).toHaveLength(1);
    }
    expect(await fdb(1, "vx1002")).toEqual([]);
    expect((await fdb(1, "vx1001")).map((e) => e.dst).every((d) => d === members([2])[0]!.meshIp)).toBe(true);
    expect(await reaches(VMS[0]!, VMS[1]!.ip)).toBe(true);
    for (const i of [1, 2]) expect((await applyHost(i, rest)).actions).toEqual([]);
  });
});
