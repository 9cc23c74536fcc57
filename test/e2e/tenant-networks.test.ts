// Privileged: tenant networks for real, across hosts. The built coordinator (embedded etcd)
// and three agent daemons in lab namespaces; each agent builds its share of the mesh from
// the coordinator's snapshots (wireguard-go, VXLAN per tenant network, bridges, nftables
// guards) and puts sandbox VMs on their network. Probes run inside the VMs' namespaces.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ProcessRef, isAlive, killProcess, processRef, run, spawnDetached } from "../../common/run.js";
import { startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { vmNetns } from "../../agent/drivers/sandbox/names.js";
import { parseFdb } from "../../mesh/vxlan.js";
import { parseWgDump } from "../../mesh/wireguard.js";
import { HostState, Role, VmPhase, type NoidClient, type Vm } from "../../sdk/index.js";

const prefix = `tn${randomBytes(3).toString("hex").slice(0, 5)}`;
const PORT = 7000;

interface VmDef {
  name: string;
  tenant: "A" | "B";
  host: 1 | 2 | 3;
  network?: string;
  group?: string;
}

// Tenant A on hosts 1, 2 and 3 (plus an isolated VM and two network groups); tenant B on
// hosts 1 and 2. Both use their default network, 10.0.0.0/24: the same CIDR.
const DEFS: VmDef[] = [
  { name: "a1", tenant: "A", host: 1 },
  { name: "a2", tenant: "A", host: 2 },
  { name: "a3", tenant: "A", host: 3 },
  { name: "ai", tenant: "A", host: 1, network: "isolated" },
  { name: "r1", tenant: "A", host: 1, group: "red" },
  { name: "r3", tenant: "A", host: 3, group: "red" },
  { name: "u2", tenant: "A", host: 2, group: "blue" },
  { name: "b1", tenant: "B", host: 1 },
  { name: "b2", tenant: "B", host: 2 },
];

let cluster: LocalCluster;
const tenants: Record<"A" | "B", NoidClient> = {} as Record<"A" | "B", NoidClient>;
const vms = new Map<string, Vm>();
const servers: ProcessRef[] = [];

const def = (name: string): VmDef => DEFS.find((d) => d.name === name)!;
const ipOf = (name: string): string => vms.get(name)!.status!.ip.split("/")[0]!;
const hostNs = (i: number): string => cluster.lab.hosts[i - 1]!.netns;
const nsOf = (name: string): string => vmNetns(`${prefix}-${cluster.lab.hosts[def(name).host - 1]!.name}`, vms.get(name)!.id);

async function ping(from: string, to: string, extra: string[] = []): Promise<boolean> {
  const argv = pingArgv(to, { count: 1, waitS: 1 });
  argv.splice(1, 0, ...extra);
  return (await run(argv, { netns: nsOf(from), allowFail: true })).exitCode === 0;
}

/** Who answers on TCP port PORT at `ip`, seen from VM `from` ("" = no connection). */
async function tcpWho(from: string, ip: string): Promise<string> {
  const r = await run(["sh", "-c", `busybox nc -w 2 ${ip} ${PORT} </dev/null`], { netns: nsOf(from), allowFail: true });
  return r.exitCode === 0 ? r.stdout.trim() : "";
}

/** Positive reachability is awaited with a bounded retry (handshakes under load take a while). */
async function reaches(from: string, to: string): Promise<boolean> {
  try {
    await waitFor(`${from} -> ${to}`, async () => ((await ping(from, ipOf(to))) && (await tcpWho(from, ipOf(to))) === to ? true : undefined), 30_000);
    return true;
  } catch {
    return false;
  }
}

const wgDump = async (i: number) =>
  parseWgDump((await run(["wg", "show", `${prefix}wg${i}`, "dump"], { netns: hostNs(i) })).stdout);
const fdb = async (i: number, vni: number) =>
  parseFdb((await run(["bridge", "-j", "fdb", "show", "dev", `vx${vni}`], { netns: hostNs(i), allowFail: true })).stdout);
const meshIp = async (i: number): Promise<string> => (await cluster.client().getHost(`host${i}`)).meshIp;

async function securityEvents(vm: string, kind: string): Promise<number> {
  const evs = await cluster.client().listAuditEvents({ event: `security.${kind}`, limit: 100 });
  return evs.filter((e) => e.vm === vms.get(vm)!.id || e.vm === vm).length;
}

beforeAll(async () => {
  cluster = await startLocalCluster({ prefix, dir: `/run/noid-e2e-${prefix}`, hosts: 3 });
  const admin = cluster.client();
  tenants.A = cluster.client((await admin.createToken({ name: `ta${prefix}`, role: Role.ROLE_USER })).secret);
  tenants.B = cluster.client((await admin.createToken({ name: `tb${prefix}`, role: Role.ROLE_USER })).secret);
  for (const d of DEFS) {
    await tenants[d.tenant].createVm(d.name, {
      vcpus: 1,
      memoryMb: 64,
      host: `host${d.host}`,
      ...(d.network ? { network: d.network } : {}),
      ...(d.group ? { networkGroup: d.group } : {}),
    });
  }
  for (const d of DEFS) {
    vms.set(d.name, await tenants[d.tenant].waitForVm(d.name, (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 90_000 }));
  }
  // Every VM answers TCP with its own name: a reply names the VM that was really reached.
  for (const d of DEFS) {
    const pid = await spawnDetached(["busybox", "nc", "-ll", "-p", String(PORT), "-e", "/bin/echo", d.name], { netns: nsOf(d.name) });
    servers.push(processRef(pid) ?? { pid, startTime: -1 });
  }
}, 240_000);

afterAll(async () => {
  for (const s of servers) await killProcess(s, 2000).catch(() => undefined);
  await cluster?.stop();
  expect(await labLeftovers(prefix)).toEqual([]);
}, 90_000);

describe("tenant networks across three hosts", () => {
  it("gives each VM its address, MTU and default route on its network bridge", async () => {
    const a1 = vms.get("a1")!;
    const b1 = vms.get("b1")!;
    expect(a1.status!.networkCidr).toBe(b1.status!.networkCidr); // the same CIDR in both tenants
    const link = JSON.parse((await run(["ip", "-j", "link", "show", "eth0"], { netns: nsOf("a1") })).stdout)[0];
    expect(link.mtu).toBe(1500 - 60 - 50);
    const route = (await run(["ip", "route", "show", "default"], { netns: nsOf("a1") })).stdout;
    expect(route).toContain(`via ${a1.status!.gateway}`);
    // Both tenants' bridges exist on host 1, each with its own VNI.
    const a = await tenants.A.getNetwork("default");
    const b = await tenants.B.getNetwork("default");
    expect(a.vni).not.toBe(b.vni);
    const links = (await run(["ip", "-j", "link", "show"], { netns: hostNs(1) })).stdout;
    expect(links).toContain(`"vmnet${a.vni}"`);
    expect(links).toContain(`"vmnet${b.vni}"`);
  });

  it("connects every pair inside a tenant network (ping and TCP), on one host and across hosts", async () => {
    const pairs: [string, string][] = [];
    for (const x of ["a1", "a2", "a3"]) for (const y of ["a1", "a2", "a3"]) if (x !== y) pairs.push([x, y]);
    pairs.push(["b1", "b2"], ["b2", "b1"], ["r1", "r3"], ["r3", "r1"]);
    for (const [x, y] of pairs) expect(await reaches(x, y), `${x} -> ${y}`).toBe(true);
  });

  it("keeps tenants apart although they share a CIDR, and enforces isolation and network groups", async () => {
    const A = DEFS.filter((d) => d.tenant === "A").map((d) => d.name);
    const B = DEFS.filter((d) => d.tenant === "B").map((d) => d.name);
    const checks: Promise<void>[] = [];
    // Across tenants: an address is only ever answered by a VM of the sender's own tenant.
    for (const x of [...A, ...B]) {
      const own = def(x).tenant === "A" ? A : B;
      const other = def(x).tenant === "A" ? B : A;
      for (const y of other) {
        checks.push(
          tcpWho(x, ipOf(y)).then((who) => {
            expect(other, `${x} reached ${y}'s address and got ${who}`).not.toContain(who);
            if (who !== "") expect(own).toContain(who);
          }),
        );
      }
    }
    // Tenant B has no VM at A's higher addresses: nothing answers there, whatever the protocol.
    for (const y of A.filter((n) => !B.some((b) => ipOf(b) === ipOf(n)))) {
      checks.push(ping("b1", ipOf(y)).then((ok) => expect(ok, `b1 pinged ${y}'s address`).toBe(false)));
    }
    // The isolated VM reaches no VM, and none reaches it; it still reaches its gateway.
    for (const y of A.filter((n) => n !== "ai")) {
      checks.push(ping("ai", ipOf(y)).then((ok) => expect(ok, `ai -> ${y}`).toBe(false)));
      checks.push(tcpWho(y, ipOf("ai")).then((who) => expect(who, `${y} -> ai`).toBe("")));
    }
    // Network groups: red and blue never meet, nor does a group meet the ungrouped VMs.
    for (const [x, y] of [["r1", "u2"], ["u2", "r1"], ["r3", "u2"], ["u2", "r3"], ["r1", "a1"], ["a2", "r3"], ["u2", "a2"]] as const) {
      checks.push(ping(x, ipOf(y)).then((ok) => expect(ok, `${x} -> ${y}`).toBe(false)));
      checks.push(tcpWho(x, ipOf(y)).then((who) => expect(who, `${x} -> ${y} (tcp)`).toBe("")));
    }
    await Promise.all(checks);
    expect(await ping("ai", vms.get("ai")!.status!.gateway)).toBe(true);
  });

  it("carries tenant traffic between hosts inside WireGuard only, never as plain VXLAN", async () => {
    const log = join(cluster.dir, "tcpdump-h1.log");
    const cap = await cluster.lab.spawn(cluster.lab.hosts[0]!, ["timeout", "20", "tcpdump", "-nli", "eth0", "-c", "8", "udp"], { logFile: log });
    for (let t = 0; t < 200 && !(existsSync(log) && readFileSync(log, "utf8").includes("listening on")); t++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    await run(["sh", "-c", `${pingArgv(ipOf("a2"), { count: 8, waitS: 1 }).join(" ")} -i 0.2`], { netns: nsOf("a1"), allowFail: true });
    for (let t = 0; t < 800 && isAlive(cap); t++) await new Promise((r) => setTimeout(r, 25));
    const lines = readFileSync(log, "utf8").split("\n").filter((l) => / IP /.test(l));
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) {
      expect(l).toMatch(/\.51820 > .*\.51820: UDP/);
      expect(l).not.toMatch(/\.4789\b/);
    }
  });

  it("blocks a VM that forges its source IP, its MAC, ARP for another VM's IP or DHCP replies, and audits it", async () => {
    const a1 = nsOf("a1");
    // Forged source IP (a2's address): dropped at a1's port.
    await run(["ip", "addr", "add", `${ipOf("a3")}/32`, "dev", "eth0"], { netns: a1 });
    expect(await ping("a1", ipOf("a2"), ["-I", ipOf("a3")])).toBe(false);
    await run(["ip", "addr", "del", `${ipOf("a3")}/32`, "dev", "eth0"], { netns: a1 });
    // Unsolicited ARP replies claiming a2's address (arping needs the address to send from).
    await run(["ip", "addr", "add", `${ipOf("a2")}/32`, "dev", "eth0"], { netns: a1 });
    await run(["busybox", "arping", "-A", "-c", "2", "-w", "2", "-I", "eth0", "-s", ipOf("a2"), ipOf("a2")], { netns: a1, allowFail: true });
    await run(["ip", "addr", "del", `${ipOf("a2")}/32`, "dev", "eth0"], { netns: a1 });
    expect(await reaches("a3", "a2")).toBe(true); // a3 still finds the real a2
    // A DHCP server's reply (UDP from port 67).
    const dhcp = `const s=require("dgram").createSocket("udp4");s.bind(67,()=>s.send("offer",68,"${ipOf("a2")}",()=>s.close()))`;
    await run([process.execPath, "-e", dhcp], { netns: a1, allowFail: true });
    // Forged MAC.
    const mac = vms.get("a1")!.status!.mac;
    await run(["ip", "link", "set", "eth0", "address", "02:66:66:66:66:66"], { netns: a1 });
    expect(await ping("a1", ipOf("a2"))).toBe(false);
    await run(["ip", "link", "set", "eth0", "address", mac], { netns: a1 });
    await run(["ip", "neigh", "flush", "dev", "eth0"], { netns: a1 });

    for (const kind of ["ip", "arpip", "dhcp", "mac"]) {
      await waitFor(`security.${kind} for a1 in the audit log`, async () => ((await securityEvents("a1", kind)) > 0 ? true : undefined), 30_000);
    }
    const ev = (await cluster.client().listAuditEvents({ event: "security.ip", limit: 10 })).find((e) => e.vm === vms.get("a1")!.id)!;
    expect(ev.host).toBe("host1");
    expect(ev.success).toBe(false);
    expect(ev.detail).toMatch(/count \d+/);
    expect(await reaches("a1", "a2")).toBe(true); // its legitimate traffic still flows
  });

  it("repairs guard rules changed behind the agent's back and reports the drift", async () => {
    await run(["nft", "delete", "table", "bridge", "noid_guard"], { netns: hostNs(2) });
    // The periodic resync (30 s) finds and repairs it.
    await waitFor("security.drift from host2", async () => {
      const evs = await cluster.client().listAuditEvents({ event: "security.drift", limit: 20 });
      return evs.some((e) => e.host === "host2" && e.detail.includes("guards repaired")) ? true : undefined;
    }, 60_000);
    const table = await run(["nft", "list", "table", "bridge", "noid_guard"], { netns: hostNs(2), allowFail: true });
    expect(table.exitCode).toBe(0);
    expect(await ping("u2", ipOf("r1"))).toBe(false); // the groups hold again
  }, 90_000);

  it("marks a host DEGRADED while other hosts get no WireGuard answer from it, and READY once they do", async () => {
    // Host 3's underlay stops taking WireGuard packets (a firewall in its namespace).
    const table = `${prefix}blk`;
    await run(["nft", "-f", "-"], {
      netns: hostNs(3),
      input: `table inet ${table} {\n chain in {\n  type filter hook input priority -10; policy accept;\n  udp dport 51820 drop\n }\n}\n`,
    });
    const pinger = processRef(await spawnDetached(pingArgv(ipOf("a3"), { count: 120, waitS: 1 }), { netns: nsOf("a1") }))!;
    try {
      const h = await waitFor("host3 DEGRADED", async () => {
        const host = await cluster.client().getHost("host3");
        return host.degradedReason.includes("no WireGuard answer to host1") ? host : undefined;
      }, 90_000);
      expect(h.state).toBe(HostState.HOST_STATE_READY); // still in the mesh, not silently dropped
      expect((await wgDump(1)).peers.length).toBe(2);
    } finally {
      await run(["nft", "delete", "table", "inet", table], { netns: hostNs(3), allowFail: true });
    }
    await waitFor("host3 healthy again", async () => ((await cluster.client().getHost("host3")).degradedReason === "" ? true : undefined), 60_000);
    await killProcess(pinger, 2000);
    expect(await reaches("a1", "a3")).toBe(true);
  }, 180_000);

  it("updates every other host's peers and FDB when a host leaves and comes back, without restarts", async () => {
    const aVni = (await tenants.A.getNetwork("default")).vni;
    const h3 = await meshIp(3);
    expect((await wgDump(1)).peers.length).toBe(2);
    expect((await fdb(1, aVni)).some((e) => e.dst === h3)).toBe(true);
    await killProcess(cluster.agents[2]!, 0); // host 3 disappears (its lease expires)
    await waitFor("host3 not READY", async () => ((await cluster.client().getHost("host3")).state !== HostState.HOST_STATE_READY ? true : undefined), 60_000);
    for (const i of [1, 2]) {
      await waitFor(`host${i} drops host3`, async () => ((await wgDump(i)).peers.length === 1 && !(await fdb(i, aVni)).some((e) => e.dst === h3) ? true : undefined), 30_000);
    }
    await cluster.startAgent(2); // and comes back
    for (const i of [1, 2]) {
      await waitFor(`host${i} has host3 again`, async () => ((await wgDump(i)).peers.length === 2 && (await fdb(i, aVni)).some((e) => e.dst === h3) ? true : undefined), 60_000);
    }
    expect(await reaches("a1", "a3")).toBe(true);
  });

  it("removes a host's FDB entries everywhere when the last VM of a network on it is destroyed", async () => {
    const bVni = (await tenants.B.getNetwork("default")).vni;
    const h2 = await meshIp(2);
    expect((await fdb(1, bVni)).some((e) => e.dst === h2)).toBe(true);
    await tenants.B.destroyVm("b2");
    await waitFor("host1 forgets host2 for tenant B", async () => (!(await fdb(1, bVni)).some((e) => e.dst === h2) ? true : undefined), 30_000);
    const links = async () => (await run(["ip", "-j", "link", "show"], { netns: hostNs(2) })).stdout;
    await waitFor("host2 drops tenant B's bridge", async () => (!(await links()).includes(`"vmnet${bVni}"`) ? true : undefined), 30_000);
    expect(await links()).toContain(`"vmnet${(await tenants.A.getNetwork("default")).vni}"`);
  });
});
