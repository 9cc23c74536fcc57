// Privileged, the whole system as the demo runs it (deploy/cluster.ts: built coordinator,
// real agents in two namespace hosts, sandbox VMs, an "outside" namespace on the underlay):
// per-VM byte counters split private (the tenant's peers, here on the other host) and egress
// (NAT to outside); a forged ARP, a DHCP server, an undeclared listener, a port scan and an
// address scan from VMs show up in `noidctl events` and as detection counters; every
// Grafana panel's query selects series that the coordinator's and the agents' real /metrics have.
import { randomBytes } from "node:crypto";
import { readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { run } from "../../common/run.js";
import { Role, VmPhase, type NoidClient, NoidApiError, type HostUsage } from "../../sdk/index.js";
import { run as noidctl } from "../../cli/program.js";
import { LISTEN_LABEL } from "../../common/listen-label.js";
import { type Exposition, parseExposition, sampleValue, scrape } from "../helpers/exposition.js";
import { selectors, selects } from "../helpers/promql.js";

const prefix = `m${randomBytes(3).toString("hex").slice(0, 5)}`;
const AGENT_METRICS_PORT = 9464;
const PING_BYTES = 1000; // ICMP payload: 1028 bytes per packet at L3, what the nft counters count
const PACKET = PING_BYTES + 28;
const COUNT = 5;

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe("network monitoring on the local cluster", () => {
  let cluster: LocalCluster;
  let alice: NoidClient;
  let coordMetrics = "";
  const ip: Record<string, string> = {};
  const id: Record<string, string> = {};
  let networkId = "";

  /** An agent's /metrics, fetched from inside its host's namespace (the lab is not routed from the root namespace). */
  async function scrapeAgent(i: number): Promise<Exposition> {
    const h = cluster.lab.hosts[i]!;
    const code = `fetch("http://${h.address}:${AGENT_METRICS_PORT}/metrics").then(async (r) => { if (r.status !== 200) process.exit(2); process.stdout.write(await r.text()); })`;
    const r = await run([process.execPath, "-e", code], { netns: h.netns, timeoutMs: 30_000 });
    return parseExposition(r.stdout);
  }
  const traffic = (m: Exposition, vm: string, scope: string, direction: string): number =>
    sampleValue(m, "noid_agent_vm_traffic_bytes_total", { vm: id[vm]!, scope, direction }) ?? 0;
  /** Pings `target` from VM `vm` with big packets until COUNT of them got through (bounded). */
  async function pingFrom(vm: string, target: string): Promise<void> {
    const argv = [...pingArgv(target, { count: COUNT, waitS: 2 }).slice(0, -1), "-s", String(PING_BYTES), target];
    await waitFor(`${vm} to reach ${target}`, async () => ((await alice.exec(vm, argv)).exitCode === 0 ? true : undefined), 60_000);
  }
  async function events(kind: string, vm: string): Promise<string> {
    let out = "";
    const io = { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" };
    const env = { NOID_SERVER: cluster.address, NOID_TOKEN: cluster.adminToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" };
    const code = await noidctl(["events", "--kind", kind, "--vm", vm, "-o", "wide"], { env, io });
    if (code !== 0) throw new Error(`noidctl events: ${out}`);
    return out;
  }

  beforeAll(async () => {
    coordMetrics = `127.0.0.1:${await freePort()}`;
    cluster = await startLocalCluster({
      prefix,
      dir: `/run/noid-e2e-${prefix}`,
      hosts: 2,
      outside: true,
      agentMetricsPort: AGENT_METRICS_PORT,
      coordinatorArgs: ["--metrics-listen", coordMetrics],
      // Usage counters reach the coordinator every 2 s (default 30 s).
      agentArgs: () => ["--usage-interval", "2"],
    });
    const admin = cluster.client();
    alice = cluster.client((await admin.createToken({ name: "alice", role: Role.ROLE_USER })).secret);
    // One tenant network across both hosts; a1 declares it listens on 22 only, a2 declares nothing.
    await alice.createVm("a1", { vcpus: 1, memoryMb: 128, host: "host1", labels: { [LISTEN_LABEL]: "22" } });
    await alice.createVm("a2", { vcpus: 1, memoryMb: 128, host: "host2" });
    for (const n of ["a1", "a2"]) {
      const vm = await alice.waitForVm(n, (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 90_000 });
      ip[n] = vm.status!.ip.split("/")[0]!;
      id[n] = vm.id;
      networkId = vm.status!.networkId;
    }
  }, 240_000);

  afterAll(async () => {
    await cluster?.stop();
    expect(await labLeftovers(prefix)).toEqual([]);
  }, 60_000);

  it("counts traffic to a peer on another host as private, on both ends", async () => {
    const [h1, h2] = [await scrapeAgent(0), await scrapeAgent(1)];
    await pingFrom("a1", ip.a2!);
    const [h1b, h2b] = [await scrapeAgent(0), await scrapeAgent(1)];
    expect(traffic(h1b, "a1", "private", "sent") - traffic(h1, "a1", "private", "sent")).toBeGreaterThanOrEqual(COUNT * PACKET);
    expect(traffic(h1b, "a1", "private", "received") - traffic(h1, "a1", "private", "received")).toBeGreaterThanOrEqual(COUNT * PACKET);
    expect(traffic(h2b, "a2", "private", "received") - traffic(h2, "a2", "private", "received")).toBeGreaterThanOrEqual(COUNT * PACKET);
    // Nothing of that left the network.
    expect(traffic(h1b, "a1", "egress", "sent") - traffic(h1, "a1", "egress", "sent")).toBeLessThan(PACKET);
    expect(sampleValue(h1b, "noid_agent_network_traffic_bytes_total", { network: networkId, scope: "private", direction: "sent" })).toBeGreaterThanOrEqual(COUNT * PACKET);
    // The per-network link counters are wired too: the pings crossed host1's VXLAN device.
    expect(sampleValue(h1b, "noid_agent_network_bytes_total", { network: networkId, path: "mesh", direction: "out" })).toBeGreaterThanOrEqual(COUNT * PACKET);
  });

  it("counts traffic out of the network (NAT to the outside namespace) as egress", async () => {
    const out = cluster.lab.outside!.address;
    const before = await scrapeAgent(0);
    await pingFrom("a1", out);
    const after = await scrapeAgent(0);
    expect(traffic(after, "a1", "egress", "sent") - traffic(before, "a1", "egress", "sent")).toBeGreaterThanOrEqual(COUNT * PACKET);
    expect(traffic(after, "a1", "egress", "received") - traffic(before, "a1", "egress", "received")).toBeGreaterThanOrEqual(COUNT * PACKET);
    expect(traffic(after, "a1", "private", "sent") - traffic(before, "a1", "private", "sent")).toBeLessThan(PACKET);
    expect(sampleValue(after, "noid_agent_network_traffic_bytes_total", { network: networkId, scope: "egress", direction: "sent" })).toBeGreaterThanOrEqual(COUNT * PACKET);
  });

  it("the hosts ship their NAT/firewall usage to the coordinator: noidctl host usage and noid_host_usage (admins only)", async () => {
    // The egress ping of the test before has been counted by host1's agent; its next report carries it.
    const egressSent = (u: HostUsage | undefined): number =>
      u?.samples.find((s) => s.metric === "network_traffic_bytes_total" && s.labels.network === networkId && s.labels.scope === "egress" && s.labels.direction === "sent")?.value ?? 0;
    const admin = cluster.client();
    const usage = await waitFor("host1's usage with egress traffic", async () => {
      const u = await admin.getHostUsage("host1");
      return egressSent(u) >= COUNT * PACKET ? u : undefined;
    }, 30_000);
    expect(usage!.samples.some((s) => s.metric === "guard_drops_total")).toBe(true);
    // The CLI shows it; a user (whose token cannot see other tenants' networks) gets none.
    let out = "";
    const io = { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" };
    const env = { NOID_SERVER: cluster.address, NOID_TOKEN: cluster.adminToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" };
    expect(await noidctl(["host", "usage", "host1"], { env, io }), out).toBe(0);
    expect(out).toMatch(new RegExp(`network_traffic_bytes_total\\s+direction=sent network=${networkId} scope=egress\\s+\\d+`));
    expect(await alice.getHostUsage("host1")).toBeUndefined();
    // The coordinator exports it per host.
    const m = await scrape(coordMetrics);
    expect(sampleValue(m, "noid_host_usage", { host: "host1", metric: "network_traffic_bytes_total", network: networkId, scope: "egress", direction: "sent" })).toBeGreaterThanOrEqual(COUNT * PACKET);
  });

  it("a forged ARP from a VM is a security event in noidctl events and a counter", async () => {
    const forged = ip.a1!.replace(/\.\d+$/, ".250");
    // busybox arping -U announces the address it is given as the sender: one the VM does not own.
    const r = await alice.exec("a1", ["sh", "-c", `echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind && busybox arping -U -c 2 -I eth0 -s ${forged} ${forged}`]);
    expect(r.exitCode, r.stderr.toString()).toBe(0);
    const out = await waitFor("the arp-spoof event", async () => {
      const o = await events("security.arp-spoof", "a1");
      return o.includes(forged) ? o : undefined;
    }, 30_000);
    expect(out).toMatch(/security\.arp-spoof\s+a1\s+host1\s+\d+ ARP frame\(s\) with a forged sender; senders in the last window: /);
    const m = await scrapeAgent(0);
    expect(sampleValue(m, "noid_agent_security_detections_total", { kind: "arp-spoof" })).toBeGreaterThanOrEqual(1);
    // The guards dropped those frames (and said so separately).
    expect(sampleValue(m, "noid_agent_guard_drops_total", { vm: id.a1!, kind: "arpip" })).toBeGreaterThanOrEqual(2);
  });

  it("a VM accepting connections on a port it did not declare is reported, with the port and the peer", async () => {
    const r = await alice.exec("a2", ["sh", "-c", "timeout 30 busybox nc -l -p 7777 </dev/null >/dev/null 2>&1 &"]);
    expect(r.exitCode).toBe(0);
    await waitFor("a1 to connect to a2:7777", async () => ((await alice.exec("a1", ["busybox", "nc", "-w", "2", ip.a2!, "7777"])).exitCode === 0 ? true : undefined), 30_000);
    const out = await waitFor("the undeclared-listener event", async () => {
      const o = await events("security.undeclared-listener", "a2");
      return o.includes("7777") ? o : undefined;
    }, 30_000);
    expect(out).toContain(`port(s) 7777; peers: ${ip.a1}`);
    expect(sampleValue(await scrapeAgent(1), "noid_agent_security_detections_total", { kind: "undeclared-listener" })).toBeGreaterThanOrEqual(1);
  });

  it("a VM running a DHCP server is reported with the clients it answered; its offers never reach them", { timeout: 120_000 }, async () => {
    // a3, next to a2 on host2, is the client.
    await alice.createVm("a3", { vcpus: 1, memoryMb: 128, host: "host2" });
    const a3 = await alice.waitForVm("a3", (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 60_000 });
    // Sandbox VMs share the host's filesystem: the server's files live here, removed below.
    const dir = `/tmp/noid-e2e-${prefix}-udhcpd`;
    const net = ip.a2!.replace(/\.\d+$/, "");
    const conf = `start ${net}.200\nend ${net}.210\ninterface eth0\nlease_file ${dir}/leases\npidfile ${dir}/pid\n`;
    const serve = `mkdir -p ${dir} && touch ${dir}/leases && printf '${conf}' > ${dir}/conf && (timeout 40 busybox udhcpd -f ${dir}/conf </dev/null >/dev/null 2>&1 &)`;
    try {
      expect((await alice.exec("a2", ["sh", "-c", serve])).exitCode).toBe(0);
      // a3 asks (again while no event came); -s /bin/true: nothing in a3 changes.
      const answers: string[] = [];
      const out = await waitFor("the rogue-dhcp event", async () => {
        answers.push((await alice.exec("a3", ["sh", "-c", "timeout 15 busybox udhcpc -i eth0 -n -q -t 3 -T 1 -s /bin/true 2>&1; true"])).stdout.toString());
        const o = await events("security.rogue-dhcp", "a2");
        return o.includes("DHCP reply") ? o : undefined;
      }, 40_000);
      expect(out).toMatch(/\d+ DHCP reply\(ies\) sent \(the VM runs a DHCP server\); to clients: /);
      // Only a3's host's server answered it: the guards dropped a2's offers.
      expect(answers.join("")).toContain(`lease of ${a3.status!.ip.split("/")[0]} obtained from ${a3.status!.gateway}`);
      expect(answers.join("")).not.toContain(`server ${ip.a2}`);
      const m = await scrapeAgent(1);
      expect(sampleValue(m, "noid_agent_security_detections_total", { kind: "rogue-dhcp" })).toBeGreaterThanOrEqual(1);
      expect(sampleValue(m, "noid_agent_guard_drops_total", { vm: id.a2!, kind: "dhcp" })).toBeGreaterThanOrEqual(1);
    } finally {
      await alice.exec("a2", ["sh", "-c", `kill $(cat ${dir}/pid) 2>/dev/null; true`]).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a VM trying many ports of one address in a short window is a port scan", async () => {
    // 80 ports (the default threshold is 64), each a SYN answered by a RST.
    const scan = `for p in $(seq 1 80); do busybox nc -w 1 ${ip.a2} $p </dev/null >/dev/null 2>&1; done; true`;
    expect((await alice.exec("a1", ["sh", "-c", scan])).exitCode).toBe(0);
    const out = await waitFor("the port-scan event", async () => {
      const o = await events("security.port-scan", "a1");
      return o.includes(`of ${ip.a2}`) ? o : undefined;
    }, 30_000);
    expect(out).toMatch(/\d+ distinct ports of \S+ tried in the window \(threshold 64\)/);
    expect(sampleValue(await scrapeAgent(0), "noid_agent_security_detections_total", { kind: "port-scan" })).toBeGreaterThanOrEqual(1);
  });

  it("a VM trying many addresses in a short window is an address scan", async () => {
    // 40 addresses outside the network (the default threshold is 32), tried at once.
    const sweep = `for i in $(seq 1 40); do busybox nc -w 1 198.18.0.$i 80 </dev/null >/dev/null 2>&1 & done; wait; true`;
    expect((await alice.exec("a1", ["sh", "-c", sweep])).exitCode).toBe(0);
    const out = await waitFor("the host-scan event", async () => {
      const o = await events("security.host-scan", "a1");
      return o.includes("198.18.0.") ? o : undefined;
    }, 30_000);
    expect(out).toMatch(/\d+ distinct addresses tried in the window \(threshold 32\): /);
    expect(sampleValue(await scrapeAgent(0), "noid_agent_security_detections_total", { kind: "host-scan" })).toBeGreaterThanOrEqual(1);
  });

  it("every Grafana panel's query selects series of the cluster's real scrapes", async () => {
    // An authentication failure, so the auth panels have their series.
    await expect(cluster.client("0".repeat(64)).listVms()).rejects.toBeInstanceOf(NoidApiError);
    const parts = [await scrape(coordMetrics), await scrapeAgent(0), await scrapeAgent(1)];
    const all: Exposition = { samples: parts.flatMap((p) => p.samples), types: new Map(parts.flatMap((p) => [...p.types])) };
    const file = fileURLToPath(new URL("../../deploy/grafana/noid.json", import.meta.url));
    const dash = JSON.parse(readFileSync(file, "utf8")) as { panels: Array<{ type: string; title: string; targets?: Array<{ expr: string }> }> };
    const missing: string[] = [];
    for (const p of dash.panels.filter((x) => x.type !== "row")) {
      for (const t of p.targets ?? []) for (const s of selectors(t.expr)) if (!selects(all, s)) missing.push(`${p.title}: ${s.name}${JSON.stringify(s.matchers)}`);
    }
    expect(missing).toEqual([]);
  });
});
