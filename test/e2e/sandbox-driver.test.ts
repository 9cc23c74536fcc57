// Privileged: the sandbox driver against real namespaces. The driver's "host" is a lab host
// netns, as when the agent runs inside the cluster lab.
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isAlive, processRef, run } from "../../common/run.js";
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

describe("sandbox driver", () => {
  it("reports whether it can enforce cgroup limits, with a reason when not", () => {
    const caps = driver().capabilities();
    expect(caps.exec).toBe(true);
    expect(caps.checkpoint).toBe(false);
    if (!caps.resourceLimits) expect(caps.limitsReason).toMatch(/cgroup|controllers|\/sys/);
  });

  it("creates, starts, recovers, stops and destroys a VM, leaving nothing behind", async () => {
    const d1 = driver();
    const h1 = lab.hosts[0]!.netns;
    const ns = vmNetns(nsPrefix, spec.id);
    const port = hostPort(spec.id);
    expect(port.length).toBeLessThanOrEqual(15);

    const created = await d1.create(spec);
    expect(created.state).toBe("stopped");
    expect(await d1.create(spec)).toMatchObject({ state: "stopped" }); // idempotent

    const eth0 = await linkJson(ns, "eth0");
    expect(eth0.address).toBe(spec.net.mac);
    const hp = await linkJson(h1, port);
    expect(hp.master).toBe("vmbr0");
    // The host port is in the lab host's netns, not in the root namespace.
    expect((await run(["ip", "link", "show", "dev", port], { allowFail: true })).exitCode).not.toBe(0);

    const started = await d1.start(spec.id);
    expect(started.state).toBe("running");
    const ping = await lab.exec("h1", pingArgv("10.200.0.11"), { allowFail: true });
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);
    const inVm = await d1.exec(spec.id, ["ip", "-j", "addr", "show", "dev", "eth0"]);
    expect(inVm.stdout).toContain("10.200.0.11");

    // A second driver over the same state dir (an agent restart) adopts the running VM.
    const d2 = driver();
    const recovered = await d2.recover();
    expect(recovered.map((v) => [v.id, v.state])).toEqual([[spec.id, "running"]]);
    expect(recovered[0]?.spec).toEqual(spec);
    expect(await d2.list()).toHaveLength(1);

    const pids = (await run(["ip", "netns", "pids", ns])).stdout.split("\n").filter(Boolean).map(Number);
    expect(pids).toHaveLength(1);
    const init = processRef(pids[0]!)!;
    expect(isAlive(init)).toBe(true);
    const stopped = await d2.stop(spec.id);
    expect(stopped.state).toBe("stopped");
    expect((await run(["ip", "netns", "pids", ns])).stdout.trim()).toBe("");
    expect(isAlive(init)).toBe(false);

    await d2.start(spec.id); // destroy must also kill a running init
    await d2.destroy(spec.id);
    await d2.destroy(spec.id); // idempotent
    expect(await d2.inspect(spec.id)).toBeUndefined();
    expect(existsSync(`/run/netns/${ns}`)).toBe(false);
    expect((await run(["ip", "-n", h1, "link", "show", "dev", port], { allowFail: true })).exitCode).not.toBe(0);
    expect(readdirSync(join(stateDir, "sandbox"))).toEqual([]);
    expect((await labLeftovers(prefix)).filter((l) => l.includes("-vm-"))).toEqual([]);
  });

  it("recover() cleans up a VM whose namespace vanished and reports a dead init as failed", async () => {
    const d = driver();
    const a = { ...spec, id: `vm-a-${randomBytes(4).toString("hex")}`, net: { mac: "02:00:00:ab:cd:12", ip: "" } };
    const b = { ...spec, id: `vm-b-${randomBytes(4).toString("hex")}`, net: { mac: "02:00:00:ab:cd:13", ip: "" } };
    await d.create(a);
    await d.create(b);
    await d.start(b.id);
    await run(["ip", "netns", "del", vmNetns(nsPrefix, a.id)]);
    const pid = Number((await run(["ip", "netns", "pids", vmNetns(nsPrefix, b.id)])).stdout.trim());
    process.kill(pid, "SIGKILL");
    for (let i = 0; i < 100 && (await d.inspect(b.id))?.state === "running"; i++) await new Promise((r) => setTimeout(r, 20));

    const recovered = await driver().recover();
    expect(recovered.map((v) => v.id)).toEqual([b.id]);
    expect(recovered[0]?.state).toBe("failed");
    expect(await d.inspect(a.id)).toBeUndefined();
    expect((await run(["ip", "-n", lab.hosts[0]!.netns, "link", "show", "dev", hostPort(a.id)], { allowFail: true })).exitCode).not.toBe(0);
    await d.destroy(b.id);
    expect(await d.list()).toEqual([]);
  });

  it("refuses unsupported operations by capability name", async () => {
    const { unsupported } = await import("../../agent/drivers/driver.js");
    expect(unsupported("sandbox", "checkpoint").code).toBe("FAILED_PRECONDITION");
    expect(unsupported("sandbox", "checkpoint").message).toContain("checkpoint");
  });
});
