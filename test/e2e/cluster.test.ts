// The whole system as the demo runs it: the built coordinator (embedded etcd)
// and real agent daemons in three namespace hosts, sandbox VMs, the SDK.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { killProcess } from "../../common/run.js";
import { HostState, Role, VmPhase, type NoidClient } from "../../sdk/index.js";
import { run as noidctl } from "../../cli/program.js";

const prefix = `c${randomBytes(3).toString("hex").slice(0, 5)}`;

function vmNamespaces(): string[] {
  return execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(`${prefix}-h`) && n.includes("-vm-"));
}

function pidsIn(ns: string): string {
  return execFileSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).trim().split("\n").sort().join(",");
}

describe("local cluster: coordinator + 3 agent hosts", () => {
  let cluster: LocalCluster;
  let alice: NoidClient;
  let aliceToken = "";

  beforeAll(async () => {
    cluster = await startLocalCluster({ prefix, dir: `/run/noid-e2e-${prefix}`, hosts: 3 });
    const admin = cluster.client();
    aliceToken = (await admin.createToken({ name: "alice", role: Role.ROLE_USER })).secret;
    alice = cluster.client(aliceToken);
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
    expect(await labLeftovers(prefix)).toEqual([]);
  }, 60_000);

  it("places VMs across the hosts and every agent runs its own", async () => {
    for (let i = 1; i <= 3; i++) await alice.createVm(`web-${i}`, { vcpus: 1, memoryMb: 128, antiAffinityGroup: "web" });
    const vms = await waitFor(
      "3 VMs RUNNING",
      async () => {
        const l = await alice.listVms();
        return l.length === 3 && l.every((v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING) ? l : undefined;
      },
      60_000,
    );
    expect(new Set(vms.map((v) => v.status?.hostName))).toEqual(new Set(cluster.hostNames));
    // One namespace per VM, each on the host the coordinator chose.
    const ns = vmNamespaces();
    expect(ns.length).toBe(3);
    for (const [i] of cluster.hostNames.entries()) expect(ns.filter((n) => n.startsWith(`${prefix}-h${i + 1}-vm-`)).length).toBe(1);
  });

  it("noidctl mesh show prints a host's peers, networks and FDB entries; only admins may see it", async () => {
    let out = "";
    const io = { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" };
    const env = (token: string) => ({ NOID_SERVER: cluster.address, NOID_TOKEN: token, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" });
    const code = await noidctl(["mesh", "show", "host1"], { env: env(cluster.adminToken), io });
    expect(code, out).toBe(0);
    expect(out).toMatch(/^peers \(2\):/m);
    expect(out).toMatch(/^ {2}host2 /m);
    expect(out).toMatch(/^ {2}host3 /m);
    // web-1 is on host1 and its network also has VMs on host2 and host3: unicast FDB toward both.
    const hosts = await cluster.client().listHosts();
    for (const h of hosts.filter((x) => x.name !== "host1")) expect(out).toContain(`-> ${h.meshIp} (${h.name})`);
    const json = await (async () => {
      let j = "";
      await noidctl(["mesh", "show", "host1", "-o", "json"], { env: env(cluster.adminToken), io: { ...io, stdout: (x: string) => void (j += x) } });
      return JSON.parse(j) as { wg: { peers: unknown[] }; networks: { bridge: { name: string } }[] };
    })();
    expect(json.wg.peers).toHaveLength(2);
    expect(json.networks[0]?.bridge.name).toMatch(/^vmnet\d+$/);
    out = "";
    expect(await noidctl(["mesh", "show", "host1"], { env: env(aliceToken), io })).not.toBe(0);
    expect(out).toMatch(/role user may not host\.mesh/);
  });

  it("a DHCP client in a VM gets exactly the address the coordinator reserved, from its host's server on the bridge", async () => {
    const vm = await alice.getVm("web-1");
    const ip = vm.status!.ip.split("/")[0]!;
    const gw = vm.status!.gateway;
    // Drop the address the driver set, ask DHCP for one, then put things back as they were.
    const script = `ip addr flush dev eth0; timeout 20 busybox udhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/true 2>&1; rc=$?; ip addr replace ${ip}/24 dev eth0; ip route replace default via ${gw}; exit $rc`;
    const r = await alice.exec("web-1", ["sh", "-c", script]);
    expect(r.exitCode, r.stdout.toString()).toBe(0);
    expect(r.stdout.toString()).toContain(`lease of ${ip} obtained from ${gw}`);
  });

  it("every agent reports its host's posture; a lab host has no inbound firewall, and says so", async () => {
    for (const h of await cluster.client().listHosts()) {
      expect(h.posture?.checks.map((c) => c.name)).toEqual(["ssh-password-off", "ssh-restricted", "auto-updates", "firewall", "fail2ban"]);
      expect(h.posture?.checks.find((c) => c.name === "firewall")).toMatchObject({ ok: false, detail: expect.stringMatching(/no input chain with policy drop/) });
      expect(h.posture?.ok).toBe(false);
    }
  });

  it("adopts running VMs after the agent is SIGKILLed, without restarting them", async () => {
    const before = Object.fromEntries(vmNamespaces().map((n) => [n, pidsIn(n)]));
    await killProcess(cluster.agents[0]!, 0);
    await cluster.startAgent(0);
    const admin = cluster.client();
    await waitFor("host1 READY again", async () => ((await admin.getHost("host1")).state === HostState.HOST_STATE_READY ? true : undefined), 30_000);
    // Give the restarted agent time to reconcile (it would recreate anything it did not adopt).
    await new Promise((r) => setTimeout(r, 2000));
    const after = Object.fromEntries(vmNamespaces().map((n) => [n, pidsIn(n)]));
    expect(after).toEqual(before);
    expect((await alice.listVms()).every((v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING)).toBe(true);
  });

  it("runs commands in a VM through coordinator and agent (exec), with env that stays out of argv", async () => {
    const vm = await alice.getVm("web-2");
    const link = await alice.exec("web-2", ["ip", "-o", "link", "show", "eth0"]);
    expect(link.exitCode).toBe(0);
    expect(link.stdout.toString()).toContain(vm.status!.mac || "link/ether"); // inside the VM's own namespace
    const env = await alice.exec("web-2", ["sh", "-c", 'echo "$GREETING"; env'], { env: { GREETING: "hello-from-exec" } });
    expect(env.stdout.toString().split("\n")[0]).toBe("hello-from-exec");
    expect(env.stdout.toString()).not.toMatch(/NOID_|authorization/i); // the agent's environment does not leak in
    const failing = await alice.exec("web-2", ["sh", "-c", "echo oops >&2; exit 3"]);
    expect(failing.exitCode).toBe(3);
    expect(failing.stderr.toString().trim()).toBe("oops");
    // Another tenant cannot exec in alice's VM; a stopped or unknown VM is refused clearly.
    const bob = cluster.client((await cluster.client().createToken({ name: "bob", role: Role.ROLE_USER })).secret);
    await expect(bob.exec({ id: vm.id }, ["true"])).rejects.toMatchObject({ code: "NOT_FOUND" });
    await expect(alice.exec("nope", ["true"])).rejects.toMatchObject({ code: "NOT_FOUND" });
    await expect(alice.exec("web-2", [])).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    // The same through noidctl: output streamed, the command's exit code becomes noidctl's.
    let out = "";
    const code = await noidctl(["exec", "web-2", "-e", "WHO", "--", "sh", "-c", 'echo "hi $WHO"; exit 7'], {
      env: { NOID_SERVER: cluster.address, NOID_TOKEN: aliceToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml", WHO: "alice" },
      io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" },
    });
    expect(code, out).toBe(7);
    expect(out.trim()).toBe("hi alice");
    const audit = await cluster.client().listAuditEvents({ event: "vm.exec", limit: 10 });
    expect(audit.some((e) => e.vm === "web-2" && e.detail.includes("GREETING") && !e.detail.includes("hello-from-exec"))).toBe(true);
  });

  it("streams exec: output before the exit, stdin in, signals and the timeout enforced", async () => {
    // Output arrives while the command still runs.
    const seen: string[] = [];
    let firstAt = 0;
    const r = await alice.exec("web-2", ["sh", "-c", "echo first; sleep 1.5; echo second"], {
      onStdout: (b) => {
        if (!firstAt) firstAt = Date.now();
        seen.push(b.toString());
      },
    });
    expect(r.exitCode).toBe(0);
    expect(seen.join("")).toBe("first\nsecond\n");
    expect(Date.now() - firstAt).toBeGreaterThan(1000); // "first" came a good second before the end
    expect(seen[0]).toBe("first\n"); // its own chunk: streamed, not collected at the exit

    // stdin, streamed in chunks, then end of input.
    const s = alice.spawn("web-2", ["sh", "-c", "wc -c; read -r x 2>/dev/null; echo done"], { stdin: true });
    s.write("hello ");
    s.write(Buffer.from("world\n"));
    s.end();
    const wc = await s.result;
    expect(wc.stdout.toString().split("\n")[0]!.trim()).toBe("12");
    // The SDK's exec with a string for stdin.
    expect((await alice.exec("web-2", ["cat"], { stdin: "through cat" })).stdout.toString()).toBe("through cat");

    // A signal (Ctrl-C in noidctl) ends a long command at once, with 128+2.
    const sleeper = alice.spawn("web-2", ["sleep", "30"]);
    await new Promise((res) => setTimeout(res, 500));
    const k0 = Date.now();
    sleeper.kill("INT");
    const killed = await sleeper.result;
    expect(killed).toMatchObject({ exitCode: 130, signal: "INT", timedOut: false });
    expect(Date.now() - k0).toBeLessThan(10_000);
    await expect(alice.spawn("web-2", ["sleep", "1"]).result).resolves.toMatchObject({ exitCode: 0 });

    // The agent enforces the timeout: TERM, exit 124, timed_out.
    const slow = await alice.exec("web-2", ["sleep", "30"], { timeoutSeconds: 1 });
    expect(slow).toMatchObject({ exitCode: 124, timedOut: true });

    // Bad input is refused clearly: stdin on an exec started without it, an unknown signal.
    const noStdin = alice.spawn("web-2", ["sleep", "5"]);
    noStdin.kill("BOGUS" as "INT");
    await expect(noStdin.result).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
  });

  it("noidctl exec -i pipes stdin and exits with the command's code", async () => {
    let out = "";
    const chunks = async function* () {
      yield "line one\n";
      yield "line two\n";
    };
    const code = await noidctl(["exec", "-i", "web-2", "--", "sh", "-c", "sort -r; exit 4"], {
      env: { NOID_SERVER: cluster.address, NOID_TOKEN: aliceToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" },
      io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/", stdinStream: chunks() },
    });
    expect(code, out).toBe(4);
    expect(out).toBe("line two\nline one\n");
  });

  it("Ctrl-C in a real noidctl exec reaches the command in the VM", async () => {
    const child = spawn(process.execPath, [join(repoRoot, "bin/noidctl.js"), "exec", "web-2", "--", "sh", "-c", "echo started; sleep 30"], {
      env: { ...process.env, NOID_SERVER: cluster.address, NOID_TOKEN: aliceToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (out += b.toString()));
    await waitFor("the command to start", async () => (out.includes("started") ? true : undefined), 15_000);
    const t0 = Date.now();
    child.kill("SIGINT");
    const code = await new Promise<number | null>((res) => child.once("exit", (c) => res(c)));
    expect(code, out).toBe(130); // the remote sh died of INT: 128 + 2
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it("a secret passed to exec is never written anywhere: logs, etcd's files, state dirs, process arguments", async () => {
    const secret = `s3cr3t-${randomBytes(12).toString("hex")}`;
    const s = alice.spawn("web-2", ["sh", "-c", 'sleep 1; test "$API_KEY" = "$EXPECTED" && echo match'], {
      env: { API_KEY: secret, EXPECTED: secret },
    });
    await new Promise((res) => setTimeout(res, 300));
    // While it runs: no process on the machine carries it in its command line.
    const cmdlines = execFileSync("ps", ["-eo", "args"], { encoding: "utf8" });
    expect(cmdlines.includes(secret)).toBe(false);
    expect((await s.result).stdout.toString().trim()).toBe("match");
    // Give logs and the audit record time to be written, then search every byte we own.
    await new Promise((res) => setTimeout(res, 500));
    const grep = spawnSync("grep", ["-rlaF", "--", secret, cluster.dir, `/run/noid-lab/${prefix}`], { encoding: "utf8" });
    expect(grep.status, grep.stderr).toBe(1); // 1: searched everything, found nothing
    expect(grep.stdout).toBe("");
    // The search itself works: the audit log names the variable.
    expect(spawnSync("grep", ["-rlaF", "--", "API_KEY", cluster.dir], { encoding: "utf8" }).status).toBe(0);
  }, 30_000);

  it("stops, starts and destroys through the agent", async () => {
    await alice.stopVm("web-1");
    await alice.waitForVm("web-1", (vm) => vm.status?.phase === VmPhase.VM_PHASE_STOPPED, { timeoutMs: 30_000 });
    await alice.startVm("web-1");
    await alice.waitForVm("web-1", (vm) => vm.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 30_000 });
    for (const v of await alice.listVms()) await alice.destroyVm(v.name);
    await waitFor("all VMs gone", async () => ((await alice.listVms()).length === 0 ? true : undefined), 30_000);
    await waitFor("all VM namespaces gone", async () => (vmNamespaces().length === 0 ? true : undefined), 10_000);
    const hosts = await cluster.client().listHosts();
    expect(hosts.map((h) => h.allocated?.vcpus)).toEqual([0, 0, 0]);
  });
});
