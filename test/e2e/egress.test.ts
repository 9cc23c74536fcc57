// Privileged: egress of tenant networks on a lab host with real nftables, policy routing and
// conntrack. Networks X and Y use the SAME CIDR and gateway on one host; Z denies all egress;
// W has allow/deny lists. "VMs" are namespaces with a veth into their network's bridge.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ProcessRef, isAlive, killProcess, processRef, run, spawnDetached } from "../../common/run.js";
import { createLab, destroyLab, labLeftovers, type Lab, type LabHost } from "../../deploy/lab/lab.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { type EgressHost, applyEgress, detectUplink, egressDiff, readEgressDrops, removeEgress } from "../../agent/network/egress-apply.js";
import { EGRESS_TABLE, type EgressNetwork, type EgressSpec, describeEgressAction } from "../../agent/network/egress.js";
import { gatewayMac } from "../../mesh/names.js";

const prefix = `eg${randomBytes(3).toString("hex")}`;
const PROBE = fileURLToPath(new URL("../helpers/tcp-probe.mjs", import.meta.url));
const OUT_PORT = 8080;
const VM_PORT = 9090;
const HOST_PORT = 7070;
const UPLINK_MTU = 1300; // below the VMs' 1500: only the clamp keeps their segments small
const ALLOWED = "192.0.2.1"; // extra addresses of the outside namespace (TEST-NET, lab only)
const DENIED = "198.51.100.1";

interface Vm { name: string; vni: number; ip: string; host?: 2 }
const NETS: (EgressNetwork & { name: string })[] = [
  { name: "x", vni: 4101, cidr: "10.20.0.0/24", gateway: "10.20.0.1" },
  { name: "y", vni: 4102, cidr: "10.20.0.0/24", gateway: "10.20.0.1" },
  { name: "z", vni: 4103, cidr: "10.30.0.0/24", gateway: "10.30.0.1", denyAll: true },
  { name: "w", vni: 4104, cidr: "10.40.0.0/24", gateway: "10.40.0.1", allow: ["192.0.2.0/24", "198.51.100.0/24"], deny: [`${DENIED}/32`] },
];
const VMS: Vm[] = [
  { name: "x1", vni: 4101, ip: "10.20.0.5" },
  { name: "x2", vni: 4101, ip: "10.20.0.6" },
  { name: "y1", vni: 4102, ip: "10.20.0.5" }, // same address as x1, other tenant
  { name: "z1", vni: 4103, ip: "10.30.0.5" },
  { name: "w1", vni: 4104, ip: "10.40.0.5" },
  { name: "x3", vni: 4101, ip: "10.20.0.7", host: 2 }, // X spans h1 and h2 (VXLAN)
];
const vm = (name: string): Vm => VMS.find((v) => v.name === name)!;
const vmNs = (v: Vm): string => `${prefix}-${v.name}`;

let lab: Lab;
let h1: LabHost;
let h2: LabHost;
let out: LabHost;
let eh: EgressHost;
let eh2: EgressHost;
const procs: ProcessRef[] = [];

const spec = (nets = NETS): EgressSpec => ({ uplink: "eth0", networks: nets, protect: [`${h2.address}/32`] });
const spec2 = (): EgressSpec => ({ uplink: "eth0", networks: [NETS[0]!], protect: [`${h1.address}/32`] });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function ping(v: Vm, target: string): Promise<boolean> {
  return (await run(pingArgv(target, { count: 1, waitS: 2 }), { netns: vmNs(v), allowFail: true })).exitCode === 0;
}
/** One TCP exchange from `netns`; the server's answer ("TOKEN peer:port") or undefined. */
async function ask(netns: string, host: string, port: number, waitMs = 5000): Promise<string | undefined> {
  const argv = [process.execPath, PROBE, "ask", host, String(port), "t"];
  const r = await run(argv, { netns, allowFail: true, timeoutMs: waitMs + 5000, env: { PROBE_TIMEOUT_MS: String(waitMs) } });
  return r.exitCode === 0 ? r.stdout.trim() : undefined;
}
/** Negative reachability: one attempt, given this long. */
const refused = async (netns: string, host: string, port: number) => (await ask(netns, host, port, 3000)) === undefined;
// Positive reachability is awaited (the machine is loaded); negative is one bounded attempt.
async function eventually(probe: () => Promise<unknown>, timeoutMs = 20_000): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > until) return false;
    await sleep(200);
  }
}
async function spawnIn(netns: string, argv: string[], logFile?: string): Promise<ProcessRef> {
  const pid = await spawnDetached(argv, { netns, ...(logFile ? { logFile } : {}) });
  const ref = processRef(pid) ?? { pid, startTime: -1 };
  procs.push(ref);
  return ref;
}
async function waitExit(p: ProcessRef): Promise<void> {
  for (let i = 0; i < 300 && isAlive(p); i++) await sleep(50);
}
const nftText = async () => (await run(["nft", "list", "table", "inet", EGRESS_TABLE], { netns: h1.netns, allowFail: true })).stdout;
const drops = async (kind: string, vni?: number) =>
  (await readEgressDrops(eh)).find((d) => d.kind === kind && d.vni === vni)?.packets ?? 0;
const ipRules = async () => (await run(["ip", "rule", "show"], { netns: h1.netns })).stdout;

beforeAll(async () => {
  lab = await createLab({ prefix, hosts: 2, outside: true });
  [h1, h2] = lab.hosts as [LabHost, LabHost];
  out = lab.outside!;
  eh = { runner: run, netns: h1.netns };
  eh2 = { runner: run, netns: h2.netns };
  await run(["ip", "link", "set", "eth0", "mtu", String(UPLINK_MTU)], { netns: h1.netns });
  for (const a of [ALLOWED, DENIED]) {
    await run(["ip", "addr", "add", `${a}/32`, "dev", "lo"], { netns: out.netns });
    await run(["ip", "route", "add", `${a}/32`, "via", out.address], { netns: h1.netns });
  }
  // The outside knows the way to tenant addresses (as an attacker on the uplink would).
  await run(["ip", "route", "add", "10.0.0.0/8", "via", h1.address], { netns: out.netns });
  const bridges: [LabHost, EgressNetwork][] = [...NETS.map((n): [LabHost, EgressNetwork] => [h1, n]), [h2, NETS[0]!]];
  for (const [h, n] of bridges) {
    // As the mesh makes them: the distributed gateway has one MAC on every host.
    const br = `vmnet${n.vni}`;
    await run(["ip", "link", "add", br, "address", gatewayMac(n.vni), "type", "bridge"], { netns: h.netns });
    await run(["ip", "addr", "add", `${n.gateway}/24`, "dev", br], { netns: h.netns });
    await run(["ip", "link", "set", br, "up"], { netns: h.netns });
  }
  for (const [h, peer] of [[h1, h2], [h2, h1]] as const) {
    const vx = ["ip", "link", "add", "vx4101", "type", "vxlan", "id", "4101", "local", h.address, "remote", peer.address, "dstport", "4789", "dev", "eth0"];
    await run(vx, { netns: h.netns });
    await run(["ip", "link", "set", "vx4101", "master", "vmnet4101", "up"], { netns: h.netns });
  }
  for (const v of VMS) {
    const ns = vmNs(v);
    const host = v.host === 2 ? h2 : h1;
    await run(["ip", "netns", "add", ns]);
    await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
    await run(["ip", "-n", host.netns, "link", "add", `${v.name}p`, "type", "veth", "peer", "name", "eth0", "netns", ns]);
    await run(["ip", "-n", host.netns, "link", "set", `${v.name}p`, "master", `vmnet${v.vni}`, "up"]);
    await run(["ip", "-n", ns, "addr", "add", `${v.ip}/24`, "dev", "eth0"]);
    await run(["ip", "-n", ns, "link", "set", "eth0", "up"]);
    await run(["ip", "-n", ns, "route", "add", "default", "via", NETS.find((n) => n.vni === v.vni)!.gateway]);
  }
  procs.push(await lab.spawn(out, [process.execPath, PROBE, "serve", String(OUT_PORT)]));
  procs.push(await lab.spawn(h1, [process.execPath, PROBE, "serve", String(HOST_PORT)]));
  await spawnIn(vmNs(vm("x1")), [process.execPath, PROBE, "serve", String(VM_PORT)]);
});

afterAll(async () => {
  for (const p of procs) if (isAlive(p)) await killProcess(p);
  await destroyLab(prefix);
  expect(await labLeftovers(prefix)).toEqual([]);
});

describe("egress on a lab host", () => {
  it("without egress the host forwards anything (the controls for what follows)", async () => {
    await run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], { netns: h1.netns });
    expect(await eventually(() => ask(out.netns, vm("x1").ip, VM_PORT))).toBe(true);
    expect(await eventually(() => ping(vm("x1"), vm("z1").ip))).toBe(true);
    expect(await eventually(() => ask(vmNs(vm("x1")), h1.address, HOST_PORT))).toBe(true);
  });

  it("finds the uplink (no default route on a lab host: the interface holding its address)", async () => {
    expect(await detectUplink(eh, h1.address)).toBe("eth0");
    await expect(detectUplink(eh)).rejects.toThrow(/set "uplink" in the agent config/);
    await expect(applyEgress({ ...spec(), uplink: "eth9" }, eh)).rejects.toThrow(/uplink eth9 does not exist/);
    await expect(applyEgress(spec([...NETS, { name: "gone", vni: 4999, cidr: "10.50.0.0/24", gateway: "10.50.0.1" }]), eh)).rejects.toThrow(/bridge vmnet4999 does not exist/);
    await run(["ip", "link", "set", "vmnet4104", "down"], { netns: h1.netns });
    await expect(applyEgress(spec(), eh)).rejects.toThrow(/bridge vmnet4104 is down/);
    await run(["ip", "link", "set", "vmnet4104", "up"], { netns: h1.netns });
    expect(await egressDiff(spec(), eh)).not.toEqual([]); // refused before changing anything
    expect((await run(["nft", "list", "tables"], { netns: h1.netns })).stdout).not.toContain(EGRESS_TABLE);
  });

  it("applies, and a second apply of the same spec changes nothing", async () => {
    const first = await applyEgress(spec(), eh);
    expect(first.map((a) => a.kind)).toContain("nft");
    expect(await applyEgress(spec(), eh)).toEqual([]);
    expect(await egressDiff(spec(), eh)).toEqual([]);
    expect((await applyEgress(spec2(), eh2)).length).toBeGreaterThan(0);
  });

  it("a network spanning hosts stays one network (no NAT inside it); each host NATs its own VMs", async () => {
    expect(await eventually(() => ping(vm("x3"), vm("x1").ip))).toBe(true);
    let answer: string | undefined;
    expect(await eventually(async () => (answer = await ask(vmNs(vm("x3")), vm("x1").ip, VM_PORT)))).toBe(true);
    expect(answer).toMatch(/^t 10\.20\.0\.7:\d+$/);
    expect(await eventually(async () => (answer = await ask(vmNs(vm("x3")), out.address, OUT_PORT)))).toBe(true);
    expect(answer).toMatch(new RegExp(`^t ${h2.address.replace(/\./g, "\\.")}:\\d+$`));
    expect(await ping(vm("y1"), vm("x3").ip)).toBe(false); // same CIDR, other tenant
  });

  it("two tenants with the same address and source port reach the outside at once, NATed, in separate connections", async () => {
    for (const v of [vm("x1"), vm("y1")]) {
      expect(await eventually(() => ask(vmNs(v), out.address, OUT_PORT))).toBe(true);
    }
    const go = join(lab.dir, "go");
    const logs = { x1: join(lab.dir, "x1.log"), y1: join(lab.dir, "y1.log") };
    const hold = (v: Vm) => spawnIn(vmNs(v), [process.execPath, PROBE, "hold", out.address, String(OUT_PORT), v.name, "41000", go], logs[v.name as "x1"]);
    const answered = (f: string) => existsSync(f) && readFileSync(f, "utf8").includes("\n");
    const px = await hold(vm("x1"));
    expect(await eventually(async () => answered(logs.x1), 10_000)).toBe(true);
    const py = await hold(vm("y1")); // the same 5-tuple as x1's open connection, from another tenant
    expect(await eventually(async () => answered(logs.y1), 10_000)).toBe(true);

    // The outside sees two connections from the host's uplink address; their segments are
    // clamped to the uplink's MTU although the VMs' own MTU is 1500.
    const ss = (await run(["ss", "-tnHi", "state", "established", "dst", h1.address], { netns: out.netns })).stdout;
    const mss = [...ss.matchAll(/ mss:(\d+)/g)].map((m) => Number(m[1]));
    expect(mss).toHaveLength(2);
    for (const m of mss) expect(m).toBeLessThanOrEqual(UPLINK_MTU - 40);

    writeFileSync(go, ""); // both ask again on their still-open connection
    await waitExit(px);
    await waitExit(py);
    const lines = (f: string) => readFileSync(f, "utf8").trim().split("\n");
    const [x, xAgain] = lines(logs.x1);
    const [y, yAgain] = lines(logs.y1);
    expect(x).toMatch(new RegExp(`^x1 ${h1.address.replace(/\./g, "\\.")}:\\d+$`));
    expect(y).toMatch(new RegExp(`^y1 ${h1.address.replace(/\./g, "\\.")}:\\d+$`));
    expect(x!.split(":")[1]).not.toBe(y!.split(":")[1]); // two NAT mappings, not one merged connection
    expect(xAgain).toBe(`x1-again ${x!.split(" ")[1]}`);
    expect(yAgain).toBe(`y1-again ${y!.split(" ")[1]}`);
  });

  it("ICMP: both tenants ping the outside and their own gateway; a network stays one network", async () => {
    for (const v of [vm("x1"), vm("y1")]) {
      expect(await eventually(() => ping(v, out.address))).toBe(true);
      expect(await eventually(() => ping(v, "10.20.0.1"))).toBe(true); // answered into the right bridge
    }
    expect(await eventually(() => ping(vm("x2"), vm("x1").ip))).toBe(true);
    expect(await eventually(() => ask(vmNs(vm("x2")), vm("x1").ip, VM_PORT))).toBe(true);
  });

  it("honours deny-all, allow and deny lists, and the protected addresses", async () => {
    expect(await eventually(() => ask(vmNs(vm("w1")), ALLOWED, OUT_PORT))).toBe(true);
    const blocked = await Promise.all([
      ping(vm("z1"), out.address),
      refused(vmNs(vm("z1")), out.address, OUT_PORT).then((r) => !r),
      refused(vmNs(vm("w1")), DENIED, OUT_PORT).then((r) => !r), // allowed range, denied address
      refused(vmNs(vm("w1")), out.address, OUT_PORT).then((r) => !r), // not in the allow list
      ping(vm("x1"), h2.address), // another host of the cluster
    ]);
    expect(blocked).toEqual([false, false, false, false, false]);
    // Each refusal was counted where it happened.
    expect(await drops("deny-all", 4103)).toBeGreaterThan(0);
    expect(await drops("deny", 4104)).toBeGreaterThan(0);
    expect(await drops("not-allowed", 4104)).toBeGreaterThan(0);
    expect(await drops("protect", 4101)).toBeGreaterThan(0);
    expect(await drops("deny-all", 4101)).toBe(0);
  });

  it("denies inbound connections, routing between networks, and the host's own services", async () => {
    const reached = await Promise.all([
      refused(out.netns, vm("x1").ip, VM_PORT).then((r) => !r),
      ping(vm("x1"), vm("z1").ip),
      ping(vm("x1"), vm("w1").ip),
      refused(vmNs(vm("x1")), h1.address, HOST_PORT).then((r) => !r),
      refused(vmNs(vm("x1")), "10.20.0.1", HOST_PORT).then((r) => !r),
    ]);
    expect(reached).toEqual([false, false, false, false, false]);
    for (const kind of ["inbound", "between-networks", "host"]) expect(await drops(kind)).toBeGreaterThan(0);
  });

  it("detects drift (a deleted nft rule, a deleted ip rule) and repairs it", async () => {
    const handle = /comment "between-networks" # handle (\d+)/.exec(
      (await run(["nft", "-a", "list", "chain", "inet", EGRESS_TABLE, "forward"], { netns: h1.netns })).stdout,
    )?.[1];
    expect(handle).toBeDefined();
    await run(["nft", "delete", "rule", "inet", EGRESS_TABLE, "forward", "handle", handle!], { netns: h1.netns });
    const fwmarkRule = /^5000:\s+from all fwmark (0x[0-9a-f]+) lookup (\d+)/m.exec(await ipRules());
    await run(["ip", "rule", "del", "pref", "5000", "fwmark", fwmarkRule![1]!, "lookup", fwmarkRule![2]!], { netns: h1.netns });

    const drift = (await egressDiff(spec(), eh)).map(describeEgressAction).join("\n");
    expect(drift).toMatch(/between-networks/);
    expect(drift).toContain(`fwmark ${fwmarkRule![1]}`);
    const counted = await drops("deny-all", 4103);
    expect((await applyEgress(spec(), eh)).length).toBe(2);
    expect(await drops("deny-all", 4103)).toBe(counted); // counts survive the table's replacement
    expect(await egressDiff(spec(), eh)).toEqual([]);
    expect(await ping(vm("x1"), vm("z1").ip)).toBe(false);
  });

  it("removing a network's egress removes its rules, routes and NAT; other networks keep theirs", async () => {
    const before = await ipRules();
    const yTable = new RegExp(`iif vmnet4102 lookup (\\d+)`).exec(before)![1]!;
    const xTable = new RegExp(`iif vmnet4101 lookup (\\d+)`).exec(before)![1]!;
    const actions = await applyEgress(spec(NETS.filter((n) => n.name !== "y")), eh);
    expect(actions.map((a) => a.kind).sort()).toEqual(["nft", "route-del", "rule-del", "rule-del"]);
    const rules = await ipRules();
    expect(rules).not.toContain("vmnet4102");
    expect(rules).not.toContain(`lookup ${yTable}`);
    expect(rules).toContain(`iif vmnet4101 lookup ${xTable}`); // X keeps its slot
    expect((await run(["ip", "route", "show", "table", yTable], { netns: h1.netns, allowFail: true })).stdout.trim()).toBe("");
    expect(await nftText()).not.toContain("vmnet4102");
    expect(await refused(vmNs(vm("y1")), out.address, OUT_PORT)).toBe(true);
    expect(await eventually(() => ask(vmNs(vm("x1")), out.address, OUT_PORT))).toBe(true);
  });

  it("removeEgress leaves nothing of ours", async () => {
    await removeEgress(eh);
    await removeEgress(eh2);
    expect((await run(["nft", "list", "tables"], { netns: h2.netns })).stdout).not.toContain(EGRESS_TABLE);
    expect(await nftText()).toBe("");
    expect(await ipRules()).not.toMatch(/lookup 18527\d+/);
    expect((await run(["ip", "route", "show", "table", "all"], { netns: h1.netns })).stdout).not.toMatch(/table 18527\d+/);
  });
});
