// Privileged: port exposure for real. The built coordinator and two agents in lab namespaces
// plus an "outside" namespace on the underlay (a client on the internet). Two tenants' sandbox
// VMs on host 1 share an address (the same default CIDR); each runs a tiny server started
// through exec. The outside reaches them only through exposed ports of host 1's address.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { killProcess, run } from "../../common/run.js";
import { startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { PORTS_TABLE } from "../../agent/network/ports-ruleset.js";
import { Role, VmPhase, isNoidApiError, type NoidClient, type Vm } from "../../sdk/index.js";

const prefix = `pt${randomBytes(3).toString("hex").slice(0, 5)}`;
const VM_PORT = 7000;
const HTTP_PORT = 7001;
const LONG_NAME = `${["a".repeat(60), "b".repeat(60), "c".repeat(60), "d".repeat(60)].join(".")}.test`; // a DNS name nginx cannot hash

let cluster: LocalCluster;
let admin: NoidClient;
let A: NoidClient;
let B: NoidClient;
const vms = new Map<string, Vm>();

const h1 = () => cluster.lab.hosts[0]!;
const h2 = () => cluster.lab.hosts[1]!;
const out = () => cluster.lab.outside!;

/** One TCP exchange from the outside: what the server said ("" = no connection). */
async function tcpFromOutside(port: number, waitS = 2): Promise<string> {
  const r = await run(["sh", "-c", `busybox nc -w ${waitS} ${h1().address} ${port} </dev/null`], { netns: out().netns, allowFail: true, timeoutMs: (waitS + 5) * 1000 });
  return r.exitCode === 0 ? r.stdout.trim() : "";
}

/** One UDP exchange from the outside (a node one-liner: send, print the first answer). */
async function udpFromOutside(port: number): Promise<string> {
  const js = `const s=require("dgram").createSocket("udp4");s.on("message",(m)=>{process.stdout.write(String(m));process.exit(0)});s.send("hi",${port},"${h1().address}");setTimeout(()=>process.exit(1),2000)`;
  const r = await run([process.execPath, "-e", js], { netns: out().netns, allowFail: true, timeoutMs: 10_000 });
  return r.exitCode === 0 ? r.stdout.trim() : "";
}

/** An HTTP request from the outside to the ingress host with this Host header: "STATUS BODY" ("" = no answer). */
async function httpFromOutside(hostHeader: string): Promise<string> {
  const argv = ["curl", "-s", "-m", "3", "-H", `Host: ${hostHeader}`, "-w", " %{http_code}", `http://${h2().address}/`];
  const r = await run(argv, { netns: out().netns, allowFail: true, timeoutMs: 10_000 });
  if (r.exitCode !== 0) return "";
  const i = r.stdout.lastIndexOf(" ");
  return `${r.stdout.slice(i + 1)} ${r.stdout.slice(0, i)}`.trim();
}

/** Positive reachability is awaited (bounded): rules and handshakes take a while under load. */
async function eventually(what: string, f: () => Promise<boolean>, timeoutMs = 45_000): Promise<void> {
  await waitFor(what, async () => ((await f()) ? true : undefined), timeoutMs);
}

const nftPorts = async () => (await run(["nft", "list", "table", "ip", PORTS_TABLE], { netns: h1().netns, allowFail: true })).stdout;

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "OK";
  } catch (e) {
    return isNoidApiError(e) ? e.code : String(e);
  }
}

/** Starts a server in the VM through exec; it outlives the exec (setsid) and dies with the VM. */
async function serve(c: NoidClient, vm: string): Promise<void> {
  const tcp = `setsid busybox nc -ll -p ${VM_PORT} -e /bin/echo ${vm} >/dev/null 2>&1 </dev/null &`;
  const udp = `setsid ${process.execPath} -e 'const s=require("dgram").createSocket("udp4");s.on("message",(m,r)=>s.send("${vm}",r.port,r.address));s.bind(${VM_PORT})' >/dev/null 2>&1 </dev/null &`;
  const http = `setsid ${process.execPath} -e 'require("http").createServer((q,s)=>s.end("${vm} says hi to "+q.headers.host)).listen(${HTTP_PORT})' >/dev/null 2>&1 </dev/null &`;
  const r = await c.exec(vm, ["sh", "-c", `${tcp} ${udp} ${http}`]);
  expect(r.exitCode, r.stderr.toString()).toBe(0);
}

beforeAll(async () => {
  // Host 2 is the HTTP ingress (nginx); the VMs run on host 1: requests cross the mesh.
  cluster = await startLocalCluster({ prefix, dir: `/run/noid-e2e-${prefix}`, hosts: 2, outside: true, agentArgs: (i) => (i === 1 ? ["--ingress"] : []) });
  admin = cluster.client();
  A = cluster.client((await admin.createToken({ name: `pa${prefix}`, role: Role.ROLE_USER, user: "alice" })).secret);
  B = cluster.client((await admin.createToken({ name: `pb${prefix}`, role: Role.ROLE_USER, user: "bob" })).secret);
  for (const [c, name] of [[A, "web"], [B, "api"]] as const) await c.createVm(name, { vcpus: 1, memoryMb: 64, host: "host1" });
  for (const [c, name] of [[A, "web"], [B, "api"]] as const) {
    vms.set(name, await c.waitForVm(name, (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 90_000 }));
    await serve(c, name);
  }
}, 240_000);

afterAll(async () => {
  await cluster?.stop();
  expect(await labLeftovers(prefix)).toEqual([]);
}, 90_000);

describe("L4 port exposure", () => {
  it("keeps every port closed until it is exposed", async () => {
    // Both VMs have the same address in their tenants' networks: only the exposure tells them apart.
    expect(vms.get("web")!.status!.ip).toBe(vms.get("api")!.status!.ip);
    expect(await tcpFromOutside(8080)).toBe("");
  });

  it("exposes a port: the outside reaches the VM's service on the host's address", async () => {
    const p = await A.exposePort("web", "8080:7000/tcp");
    expect(p).toMatchObject({ hostName: "host1", hostPort: 8080, vmPort: VM_PORT, protocol: "tcp", vmName: "web" });
    await eventually("web through 8080", async () => (await tcpFromOutside(8080)) === "web");
    await waitFor("the port reported applied", async () => ((await A.listPorts()).ports[0]?.state === "applied" ? true : undefined), 30_000);
    const listed = await A.listPorts();
    expect(listed.ports.map((x) => [x.vmName, x.hostPort, x.address])).toEqual([["web", 8080, h1().address]]);
  });

  it("tells two tenants' VMs with the same address apart (overlapping CIDRs), TCP and UDP", async () => {
    await B.exposePort("api", { hostPort: 8081, vmPort: VM_PORT });
    await B.exposePort("api", "5353:7000/udp");
    await eventually("api through 8081", async () => (await tcpFromOutside(8081)) === "api");
    await eventually("api through 5353/udp", async () => (await udpFromOutside(5353)) === "api");
    expect(await tcpFromOutside(8080)).toBe("web");
    // The agent reports each rule applied soon after it works (the state is part of what the next test compares).
    await waitFor("every port reported applied", async () => ((await admin.listPorts()).ports.every((x) => x.state === "applied") ? true : undefined), 30_000);
    // A's listing shows only A's ports; an admin sees both tenants'.
    expect((await A.listPorts()).ports.map((x) => x.hostPort)).toEqual([8080]);
    expect((await admin.listPorts()).ports.map((x) => `${x.owner}:${x.hostPort}/${x.protocol}`).sort()).toEqual(["alice:8080/tcp", "bob:5353/udp", "bob:8081/tcp"]);
  });

  it("leaves ports that are not exposed closed", async () => {
    expect(await tcpFromOutside(8082)).toBe("");
    expect(await tcpFromOutside(VM_PORT)).toBe("");
  });

  it("refuses bad requests with clear codes and changes nothing", async () => {
    const before = JSON.stringify(await admin.listPorts());
    const audits = (await admin.listAuditEvents({ event: "vm.expose", limit: 100 })).length;
    expect(await codeOf(B.exposePort("api", "8080:7000/tcp"))).toBe("ALREADY_EXISTS"); // host port taken on host1
    expect(await codeOf(A.exposePort("web", "80:7000/tcp"))).toBe("PERMISSION_DENIED"); // below 1024: admins only
    expect(await codeOf(A.exposePort("web", "9000-9010:7000/tcp"))).toBe("INVALID_ARGUMENT"); // a range
    expect(await codeOf(A.exposePort("api", "9000:7000/tcp"))).toBe("NOT_FOUND"); // bob's VM
    expect(await codeOf(A.exposePort("web", "9000:7000/sctp"))).toBe("INVALID_ARGUMENT");
    expect(await codeOf(A.unexposePort("web", "9999/tcp"))).toBe("NOT_FOUND");
    expect(JSON.stringify(await admin.listPorts())).toBe(before);
    expect((await admin.listAuditEvents({ event: "vm.expose", limit: 100 })).length).toBe(audits);
    // An admin may expose a privileged port (and takes it back).
    await admin.exposePort("web", "443:7000/tcp", { owner: "alice" });
    await admin.unexposePort("web", "443/tcp", { owner: "alice" });
  });

  it("repairs a rule deleted behind the agent's back and reports it as a security event", async () => {
    const handle = /comment "tcp\/8080" # handle (\d+)/.exec((await run(["nft", "-a", "list", "chain", "ip", PORTS_TABLE, "pre_nat"], { netns: h1().netns })).stdout)?.[1];
    expect(handle).toBeDefined();
    await run(["nft", "delete", "rule", "ip", PORTS_TABLE, "pre_nat", "handle", handle!], { netns: h1().netns });
    await waitFor("the rule repaired", async () => ((await nftPorts()).includes('comment "tcp/8080"') ? true : undefined), 45_000);
    await waitFor("a port-drift security event", async () => ((await admin.listAuditEvents({ event: "security.port-drift", limit: 10 })).length > 0 ? true : undefined), 30_000);
    await eventually("web through 8080 again", async () => (await tcpFromOutside(8080)) === "web");
  });

  it("unexpose closes the port", async () => {
    await A.unexposePort("web", "8080/tcp");
    await waitFor("the rule removed", async () => (!(await nftPorts()).includes('comment "tcp/8080"') ? true : undefined), 30_000);
    expect(await tcpFromOutside(8080)).toBe("");
    expect((await A.listPorts()).ports).toEqual([]);
    // The host port is free again: another tenant may take it.
    await B.exposePort("api", "8080:7000/tcp");
    await eventually("api through 8080", async () => (await tcpFromOutside(8080)) === "api");
  });

  it("releases a VM's ports when the VM is destroyed", async () => {
    await B.destroyVm("api");
    await waitFor("api gone", async () => ((await B.listVms()).length === 0 ? true : undefined), 60_000);
    expect((await admin.listPorts()).ports).toEqual([]);
    await waitFor("its rules removed", async () => (!(await nftPorts()).includes("dnat") ? true : undefined), 30_000);
    expect(await tcpFromOutside(8081)).toBe("");
    // The user's count went back too: bob may expose as many as before (limit 10).
  });
});

describe("HTTP ingress", () => {
  const agentLog = () => readFileSync(join(cluster.dir, "agent-h2.log"), "utf8");
  const nginxPid = () => (JSON.parse(readFileSync(join(cluster.dir, "agent-h2", "ingress", "nginx.json"), "utf8")) as { pid: number }).pid;

  it("routes a hostname at the ingress host to the VM over the mesh", async () => {
    expect((await admin.getHost("host2")).ingress).toBe(true);
    expect(await httpFromOutside("app.example.test")).toMatch(/^404/); // no route yet
    const r = await A.exposeHttp("web", "app.example.test", { port: HTTP_PORT });
    expect(r).toMatchObject({ hostname: "app.example.test", vmName: "web", hostName: "host1", vmPort: HTTP_PORT });
    await eventually("the route answered", async () => (await httpFromOutside("app.example.test")) === "200 web says hi to app.example.test");
    await waitFor("the route reported applied", async () => ((await A.listPorts()).routes[0]?.state === "applied" ? true : undefined), 30_000);
    expect((await A.listPorts()).routes.map((x) => [x.hostname, x.ingress])).toEqual([["app.example.test", [h2().address]]]);
    // The VM side is reachable only over the mesh: its port is closed on host 1's underlay.
    expect(await tcpFromOutside(r.meshPort)).toBe("");
  });

  it("puts nginx's access log into the agent's log (component ingress)", async () => {
    await waitFor("the access line in the agent log", async () => {
      const line = agentLog().split("\n").find((l) => l.includes('"component":"ingress"') && l.includes('"host":"app.example.test"') && l.includes('"status":200'));
      return line ? true : undefined;
    }, 20_000);
  });

  it("keeps the running configuration when a new one fails nginx -t, and reports why", async () => {
    const pid = nginxPid();
    await A.exposeHttp("web", LONG_NAME, { port: HTTP_PORT });
    await waitFor("the refusal reported", async () => {
      const route = (await A.listPorts()).routes.find((x) => x.hostname === LONG_NAME);
      return route?.state.startsWith("error:") ? route.state : undefined;
    }, 30_000).then((state) => expect(state).toMatch(/server_names_hash/));
    expect(await httpFromOutside("app.example.test")).toBe("200 web says hi to app.example.test");
    expect(nginxPid()).toBe(pid);
    // A good route added meanwhile is served; the refused one still is not.
    await A.exposeHttp("web", "ok.example.test", { port: HTTP_PORT });
    await eventually("the good route answered", async () => (await httpFromOutside("ok.example.test")) === "200 web says hi to ok.example.test");
    // nginx serves the route before the agent's report of it reaches the coordinator: wait for the report.
    const states = async () => (await A.listPorts()).routes.map((r) => `${r.hostname.slice(0, 10)} ${r.state.split(":")[0]}`).sort();
    await eventually("the good route reported applied", async () => (await states()).includes("ok.example applied"));
    expect(await states()).toEqual([
      "aaaaaaaaaa error",
      "app.exampl applied",
      "ok.example applied",
    ]);
    expect(await httpFromOutside(LONG_NAME)).toMatch(/^404/);
    await A.unexposeHttp("web", LONG_NAME);
    await A.unexposeHttp("web", "ok.example.test");
  });

  it("keeps serving across an agent restart (the new agent adopts nginx)", async () => {
    const pid = nginxPid();
    await killProcess(cluster.agents[1]!, 10_000);
    expect(await httpFromOutside("app.example.test")).toBe("200 web says hi to app.example.test"); // no agent: nginx serves on
    await cluster.startAgent(1);
    await waitFor("the agent adopting nginx", async () => (agentLog().includes('"msg":"nginx adopted"') ? true : undefined), 60_000);
    expect(nginxPid()).toBe(pid);
    await eventually("served after the restart", async () => (await httpFromOutside("app.example.test")) === "200 web says hi to app.example.test");
  });

  it("reaches a VM on the ingress host itself (nginx connects to its own mesh address)", async () => {
    await A.createVm("near", { vcpus: 1, memoryMb: 64, host: "host2" });
    await A.waitForVm("near", (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 90_000 });
    await serve(A, "near");
    await A.exposeHttp("near", "near.example.test", { port: HTTP_PORT });
    await eventually("the local route answered", async () => (await httpFromOutside("near.example.test")) === "200 near says hi to near.example.test");
    expect(await httpFromOutside("app.example.test")).toBe("200 web says hi to app.example.test");
    await A.destroyVm("near"); // its route goes with it
    await eventually("the local route gone", async () => (await httpFromOutside("near.example.test")).startsWith("404"), 60_000);
    expect((await A.listPorts()).routes.map((r) => r.hostname)).toEqual(["app.example.test"]);
  });

  it("lists routes with the ports, and unexpose removes the route", async () => {
    await A.unexposeHttp("web", "app.example.test");
    await eventually("the route gone", async () => (await httpFromOutside("app.example.test")).startsWith("404"), 30_000);
    expect((await A.listPorts()).routes).toEqual([]);
  });
});
