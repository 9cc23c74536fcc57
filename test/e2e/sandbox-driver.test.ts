// Privileged: the sandbox driver against real namespaces. The driver's "host" is a lab host
// netns, as when the agent runs inside the cluster lab. Lifecycle, recover, exec, limits and
// cleanup are the driver contract's (test/e2e/sandbox-contract.test.ts).
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../common/run.js";
import { createLab, destroyLab, labLeftovers, type Lab } from "../../deploy/lab/lab.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { hostPort, vmNetns } from "../../agent/drivers/sandbox/names.js";
import { SandboxDriver } from "../../agent/drivers/sandbox/sandbox.js";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";

const prefix = `sd${randomBytes(3).toString("hex")}`;
let lab: Lab;
let stateDir: string;
let nsPrefix: string;

const spec: VmCreateSpec = {
  id: `vm-${randomBytes(6).toString("hex")}`,
  vcpus: 1,
  memoryMb: 128,
  diskGb: 1,
  image: "",
  net: { mac: "02:00:00:ab:cd:11", ip: "10.200.0.11", prefixLen: 24, bridge: "vmbr0" },
};

const driver = (): SandboxDriver => new SandboxDriver({ stateDir, nsPrefix, netns: lab.hosts[0]!.netns });
const linkJson = async (netns: string, dev: string): Promise<{ address: string; master?: string; operstate: string }> =>
  (JSON.parse((await run(["ip", "-n", netns, "-j", "link", "show", "dev", dev])).stdout) as never[])[0]!;

beforeAll(async () => {
  lab = await createLab({ prefix, hosts: 1 });
  nsPrefix = lab.hosts[0]!.netns;
  stateDir = mkdtempSync(join(tmpdir(), "noid-sandbox-"));
  // The tenant bridge the VM plugs into, with a gateway address to ping the VM from.
  await lab.exec("h1", ["ip", "link", "add", "vmbr0", "type", "bridge"]);
  await lab.exec("h1", ["ip", "addr", "add", "10.200.0.1/24", "dev", "vmbr0"]);
  await lab.exec("h1", ["ip", "link", "set", "vmbr0", "up"]);
});

afterAll(async () => {
  await destroyLab(prefix);
  rmSync(stateDir, { recursive: true, force: true });
});

describe("sandbox driver (what the contract does not cover: its network plumbing)", () => {
  it("plugs the VM's veth into the host's bridge with the assigned MAC and address; the host reaches it", async () => {
    const d = driver();
    const h1 = lab.hosts[0]!.netns;
    const ns = vmNetns(nsPrefix, spec.id);
    const port = hostPort(spec.id);
    expect(d.capabilities()).toMatchObject({ exec: true, checkpoint: false, restore: false });

    await d.create(spec);
    const eth0 = await linkJson(ns, "eth0");
    expect(eth0.address).toBe(spec.net.mac);
    const hp = await linkJson(h1, port);
    expect(hp.master).toBe("vmbr0");
    // The host port is in the lab host's netns, not in the root namespace.
    expect((await run(["ip", "link", "show", "dev", port], { allowFail: true })).exitCode).not.toBe(0);

    await d.start(spec.id);
    const ping = await lab.exec("h1", pingArgv("10.200.0.11"), { allowFail: true });
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);
    const inVm = await d.exec(spec.id, ["ip", "-j", "addr", "show", "dev", "eth0"]);
    expect(inVm.stdout).toContain("10.200.0.11");

    await d.destroy(spec.id);
    expect((await run(["ip", "-n", h1, "link", "show", "dev", port], { allowFail: true })).exitCode).not.toBe(0);
    expect(readdirSync(join(stateDir, "sandbox"))).toEqual([]);
    expect((await labLeftovers(prefix)).filter((l) => l.includes("-vm-"))).toEqual([]);
  });

  it("destroying the lab removes the cgroups of VMs nobody destroyed (an agent killed with its host)", async () => {
    const d = driver();
    const left = { ...spec, id: `vm-left-${randomBytes(4).toString("hex")}`, net: { mac: "02:00:00:ab:cd:14", ip: "" } };
    await d.create(left);
    await d.start(left.id);
    await d.exec(left.id, ["sh", "-c", "sleep 60 > /dev/null 2>&1 &"]);
    const cgroups = (await labLeftovers(prefix)).filter((l) => l.startsWith("cgroup "));
    expect(cgroups.length).toBeGreaterThan(0);
    await destroyLab(prefix);
    expect(await labLeftovers(prefix)).toEqual([]);
    for (const c of cgroups) expect(existsSync(c.slice("cgroup ".length))).toBe(false);
  });

  it("refuses unsupported operations by capability name", async () => {
    const { unsupported } = await import("../../agent/drivers/driver.js");
    expect(unsupported("sandbox", "checkpoint").code).toBe("FAILED_PRECONDITION");
    expect(unsupported("sandbox", "checkpoint").message).toContain("checkpoint");
  });
});
