// The Firecracker driver against a fake Firecracker that checks every request against the
// documented API (test/helpers/fake-firecracker.ts). The jailer is replaced by a spawner that
// starts the fake; everything else is real: files, reflink copies, network namespaces, TAP and
// veth devices (needs root), unix sockets, processes.
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isNoidError } from "../../common/errors.js";
import { isAlive, run } from "../../common/run.js";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";
import { FirecrackerApi, FirecrackerApiError } from "../../agent/drivers/firecracker/api.js";
import { FirecrackerDriver, type FirecrackerOptions } from "../../agent/drivers/firecracker/driver.js";
import { jailIdFor } from "../../agent/drivers/firecracker/jailer.js";
import { hostPortName, vmNetnsName } from "../../agent/drivers/firecracker/netns.js";
import { FakeFirecracker, type FakeJailerSpawner, fakeJailerSpawner } from "../helpers/fake-firecracker.js";
import { FirecrackerRecords } from "../../agent/drivers/firecracker/records.js";
import { vsockExec } from "../../agent/drivers/firecracker/vsock.js";

const tag = randomBytes(3).toString("hex");
const nsPrefix = `fc${tag}`;
const hostNs = `${nsPrefix}-host`;
let dir: string;
let spawner: FakeJailerSpawner;
let opts: FirecrackerOptions;

const spec: VmCreateSpec = {
  id: `vm-${randomBytes(6).toString("hex")}`,
  vcpus: 2,
  memoryMb: 256,
  diskGb: 1,
  image: "base",
  net: { mac: "02:00:00:00:fc:01", ip: "10.77.0.5", prefixLen: 24, mtu: 1400, bridge: "vmbr0" },
};

const driver = (extra: Partial<FirecrackerOptions> = {}): FirecrackerDriver => new FirecrackerDriver({ ...opts, ...extra });
const links = async (netns: string): Promise<{ ifname: string; master?: string; mtu: number; operstate: string }[]> =>
  JSON.parse((await run(["ip", "-n", netns, "-j", "link", "show"])).stdout) as never;
const jail = (i: number) => spawner.jails[i]!;

beforeAll(async () => {
  dir = mkdtempSync(`/tmp/nfc${tag}-`);
  writeFileSync(join(dir, "vmlinux"), "not really a kernel");
  writeFileSync(join(dir, "base.ext4"), Buffer.alloc(1024 * 1024));
  for (const bin of ["firecracker", "jailer"]) {
    writeFileSync(join(dir, bin), "#!/bin/sh\nexit 1\n");
    chmodSync(join(dir, bin), 0o755);
  }
  writeFileSync(join(dir, "kvm"), "");
  await run(["ip", "netns", "add", hostNs]);
  await run(["ip", "-n", hostNs, "link", "add", "vmbr0", "type", "bridge"]);
  spawner = fakeJailerSpawner();
  opts = {
    stateDir: join(dir, "state"),
    nsPrefix,
    netns: hostNs,
    firecrackerBin: join(dir, "firecracker"),
    jailerBin: join(dir, "jailer"),
    kernel: join(dir, "vmlinux"),
    imageDir: dir,
    chrootBase: join(dir, "jail"),
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    cgroupParent: `noid-test-${nsPrefix}`,
    features: { netMtu: true, networkOverrides: true },
    stopTimeoutMs: 5000,
    spawner,
  };
});

afterAll(async () => {
  await spawner?.closeAll();
  await driver().destroy(spec.id).catch(() => undefined);
  await run(["ip", "netns", "del", hostNs], { allowFail: true });
  rmSync(dir, { recursive: true, force: true });
});

describe("firecracker driver against the fake API", () => {
  it("says whether Firecracker can run here, and why not", async () => {
    expect(await driver({ kvmPath: join(dir, "kvm") }).available()).toEqual({ ok: true });
    const bad = await driver({ firecrackerBin: join(dir, "nope-firecracker"), kvmPath: join(dir, "no-kvm") }).available();
    expect(bad.ok).toBe(false);
    expect(bad.reason).toContain(`${join(dir, "nope-firecracker")} is not an executable file`);
    expect(bad.reason).toContain(`${join(dir, "no-kvm")} is missing`);
    const caps = driver().capabilities();
    expect(caps).toMatchObject({ exec: true, checkpoint: true, restore: true });
  });

  it("fails clearly on a missing kernel or image, leaving nothing behind", async () => {
    const e1 = await driver({ kernel: join(dir, "no-vmlinux") }).create(spec).catch((e: unknown) => e);
    expect(isNoidError(e1, "FAILED_PRECONDITION")).toBe(true);
    expect(String(e1)).toContain(`kernel ${join(dir, "no-vmlinux")} not found`);
    const e2 = await driver().create({ ...spec, image: "missing" }).catch((e: unknown) => e);
    expect(String(e2)).toMatch(/image "missing" not found/);
    expect(await driver().list()).toEqual([]);
    expect(existsSync(`/run/netns/${vmNetnsName(nsPrefix, spec.id)}`)).toBe(false);
  });

  it("create prepares the jail and the network without starting anything", async () => {
    const d = driver();
    const vm = await d.create(spec);
    expect(vm).toMatchObject({ id: spec.id, driver: "firecracker", state: "stopped", hostPort: hostPortName(spec.id) });
    const root = join(dir, "jail", "firecracker", jailIdFor(nsPrefix, spec.id), "root");
    expect(statSync(join(root, "rootfs.ext4")).size).toBe(1024 ** 3); // the copy, grown to diskGb
    expect(statSync(join(root, "vmlinux")).ino).toBe(statSync(join(dir, "vmlinux")).ino); // hard link
    const vmLinks = await links(vmNetnsName(nsPrefix, spec.id));
    expect(vmLinks.find((l) => l.ifname === "tap0")).toMatchObject({ master: "br0", mtu: 1400 });
    expect(vmLinks.find((l) => l.ifname === "veth0")).toMatchObject({ master: "br0" });
    expect((await links(hostNs)).find((l) => l.ifname === hostPortName(spec.id))).toMatchObject({ master: "vmbr0", mtu: 1400 });
    expect(spawner.jails).toHaveLength(0);
    // Idempotent: a second create changes nothing and fails nothing.
    expect((await d.create(spec)).state).toBe("stopped");
  });

  it("start runs the jailer and configures Firecracker in order, then boots", async () => {
    const d = driver();
    const vm = await d.start(spec.id);
    expect(vm.state).toBe("running");
    const j = jail(0);
    expect(j.argv.slice(0, 13)).toEqual([
      join(dir, "jailer"),
      "--id", jailIdFor(nsPrefix, spec.id),
      "--exec-file", join(dir, "firecracker"),
      "--uid", String(opts.uid),
      "--gid", String(opts.gid),
      "--chroot-base-dir", join(dir, "jail"),
      "--netns", `/var/run/netns/${vmNetnsName(nsPrefix, spec.id)}`,
    ]);
    expect(j.argv.slice(-3)).toEqual(["--", "--api-sock", "/run/firecracker.socket"]);
    if (d.capabilities().resourceLimits) expect(j.argv).toContain("cpu.max=200000 100000");
    expect(j.fake.sequence()).toEqual([
      "GET /",
      "PUT /logger",
      "PUT /metrics",
      "PUT /machine-config",
      "PUT /boot-source",
      "PUT /drives/rootfs",
      "PUT /network-interfaces/eth0",
      "PUT /vsock",
      "PUT /mmds/config",
      "PUT /mmds",
      "PUT /actions",
    ]);
    const body = (p: string): unknown => j.fake.calls.find((c) => c.path === p)?.body;
    expect(body("/boot-source")).toEqual({
      kernel_image_path: "/vmlinux",
      boot_args: `console=ttyS0 reboot=k panic=1 ip=10.77.0.5:::255.255.255.0:${spec.id}:eth0:off`,
    });
    expect(body("/network-interfaces/eth0")).toEqual({ iface_id: "eth0", host_dev_name: "tap0", guest_mac: "02:00:00:00:fc:01", mtu: 1400 });
    expect(body("/mmds")).toMatchObject({ noid: { vm_id: spec.id, network: { ipv4: { address: "10.77.0.5", prefix_len: 24 } } } });
    expect(j.fake.state).toBe("Running");
    // Starting a running VM is a no-op.
    await d.start(spec.id);
    expect(spawner.jails).toHaveLength(1);
  });

  it("execs over the vsock socket", async () => {
    const d = driver();
    expect(await d.exec(spec.id, ["echo", "hi"])).toEqual({ stdout: "echo hi", stderr: "", exitCode: 0 });
    expect(await d.exec(spec.id, ["false"])).toMatchObject({ exitCode: 1 });
    expect((await d.exec(spec.id, ["env"], { env: { TOKEN: "s3cret" } })).stdout).toBe("TOKEN=s3cret");
    expect(await d.exec(spec.id, ["sleep", "9"], { timeoutMs: 200 })).toEqual({ stdout: "", stderr: "", exitCode: -1, timedOut: true });
  });

  it("pauses and resumes (PATCH /vm), and a restarted agent finds it paused", async () => {
    const d = driver();
    expect(d.capabilities().pause).toBe(true);
    const before = jail(0).fake.calls.length;
    expect(await d.pause(spec.id)).toMatchObject({ state: "paused", reason: "" });
    expect(jail(0).fake.state).toBe("Paused");
    // Pausing a paused microVM is allowed by Firecracker (it stays paused).
    expect(await d.pause(spec.id)).toMatchObject({ state: "paused" });
    await expect(d.exec(spec.id, ["true"])).rejects.toThrow(/paused/);
    // The fake's guest is frozen too: its agent answers only after the resume.
    const rec = new FirecrackerRecords(join(dir, "state", "firecracker", "records")).get(spec.id)!;
    const held = vsockExec(rec.layout.vsock.host, ["echo", "late"], { timeoutMs: 10_000 });
    let answered = false;
    void held.then(() => (answered = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(answered).toBe(false);
    // An agent restart: the state is read back from Firecracker, not resumed.
    expect(await driver().recover()).toEqual([expect.objectContaining({ id: spec.id, state: "paused" })]);
    expect(jail(0).fake.state).toBe("Paused");
    expect(await d.resume(spec.id)).toMatchObject({ state: "running", reason: "" });
    expect(jail(0).fake.state).toBe("Running");
    expect(await held).toMatchObject({ stdout: "echo late", exitCode: 0 });
    expect(jail(0).fake.calls.slice(before).filter((c) => c.method === "PATCH").map((c) => [c.path, c.body])).toEqual([
      ["/vm", { state: "Paused" }],
      ["/vm", { state: "Paused" }],
      ["/vm", { state: "Resumed" }],
    ]);
  });

  it("checkpoints: pauses, snapshots, copies the disk, resumes", async () => {
    const d = driver();
    const before = jail(0).fake.calls.length;
    await d.checkpoint(spec.id, "c1");
    expect(jail(0).fake.sequence().slice(before)).toEqual(["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]);
    expect(jail(0).fake.calls.slice(before).map((c) => c.body)).toEqual([
      { state: "Paused" },
      { snapshot_type: "Full", snapshot_path: "/snapshot/vmstate", mem_file_path: "/snapshot/mem" },
      { state: "Resumed" },
    ]);
    expect(jail(0).fake.state).toBe("Running");
    const ckpt = join(dir, "state", "firecracker", "vms");
    const [vmDir] = readdirSync(ckpt);
    expect(readdirSync(join(ckpt, vmDir!, "checkpoints", "c1")).sort()).toEqual(["mem", "rootfs.ext4", "vmstate"]);
    // A paused VM stays paused.
    await d.pause(spec.id);
    await d.checkpoint(spec.id, "c2");
    expect(jail(0).fake.state).toBe("Paused");
    await d.resume(spec.id);
    await expect(d.checkpoint(spec.id, "Bad Name")).rejects.toThrow(/checkpoint/);
  });

  it("a restarted agent adopts the running VM", async () => {
    const adopted = await driver().recover();
    expect(adopted).toEqual([expect.objectContaining({ id: spec.id, state: "running", reason: "" })]);
  });

  it("restores a checkpoint into a fresh Firecracker, overriding the TAP", async () => {
    const d = driver();
    const old = jail(0).ref;
    const vm = await d.restore(spec.id, "c1");
    expect(vm.state).toBe("running");
    expect(isAlive(old)).toBe(false);
    const j = jail(1);
    expect(j.fake.sequence()).toEqual(["GET /", "PUT /logger", "PUT /metrics", "PUT /snapshot/load"]);
    expect(j.fake.calls.at(-1)?.body).toEqual({
      snapshot_path: "/snapshot/vmstate",
      mem_backend: { backend_type: "File", backend_path: "/snapshot/mem" },
      resume_vm: true,
      network_overrides: [{ iface_id: "eth0", host_dev_name: "tap0" }],
    });
    expect(j.fake.state).toBe("Running");
    expect(j.fake.config.machine).toMatchObject({ vcpu_count: 2, mem_size_mib: 256 });
    await expect(d.restore(spec.id, "nope")).rejects.toThrow(/checkpoint nope of firecracker VM .* not found/);
  });

  it("stops gracefully with SendCtrlAltDel, and starts again", async () => {
    const d = driver();
    const j = jail(1);
    const vm = await d.stop(spec.id);
    expect(vm).toMatchObject({ state: "stopped", reason: "" });
    expect(j.fake.calls.at(-1)).toMatchObject({ method: "PUT", path: "/actions", body: { action_type: "SendCtrlAltDel" }, status: 204 });
    expect(isAlive(j.ref)).toBe(false);
    expect((await d.start(spec.id)).state).toBe("running");
    expect(jail(2).fake.state).toBe("Running");
  });

  it("reports Firecracker's fault message when a call is refused, and leaves no process behind", async () => {
    const d = driver();
    await d.stop(spec.id);
    const kernelInJail = join(jail(2).root, "vmlinux");
    rmSync(kernelInJail);
    const err = await d.start(spec.id).catch((e: unknown) => e);
    expect(String(err)).toMatch(/starting firecracker VM .*PUT \/boot-source: 400: kernel_image_path: no such file \/vmlinux in the jail/);
    expect(isAlive(jail(3).ref)).toBe(false);
    expect((await d.inspect(spec.id))?.state).toBe("stopped");
  });

  it("destroy removes the jail, the disk, the checkpoints, the network and the record; twice is fine", async () => {
    const d = driver();
    await d.destroy(spec.id);
    expect(existsSync(join(dir, "jail", "firecracker", jailIdFor(nsPrefix, spec.id)))).toBe(false);
    expect(readdirSync(join(dir, "state", "firecracker", "vms"))).toEqual([]);
    expect(existsSync(`/run/netns/${vmNetnsName(nsPrefix, spec.id)}`)).toBe(false);
    expect((await links(hostNs)).map((l) => l.ifname)).not.toContain(hostPortName(spec.id));
    expect(await d.inspect(spec.id)).toBeUndefined();
    await d.destroy(spec.id);
  });
});

describe("the fake enforces the documented API", () => {
  let fake: FakeFirecracker;
  let api: FirecrackerApi;
  let root: string;

  beforeAll(async () => {
    root = mkdtempSync(join(dir, "fake-"));
    writeFileSync(join(root, "vmlinux"), "k");
    writeFileSync(join(root, "disk"), "d");
    fake = new FakeFirecracker({ socketPath: join(root, "api.sock"), root });
    await fake.listen();
    api = new FirecrackerApi(join(root, "api.sock"));
  });
  afterAll(async () => fake.close());

  const refused = async (p: Promise<unknown>): Promise<FirecrackerApiError> => {
    const e = await p.catch((x: unknown) => x);
    expect(e).toBeInstanceOf(FirecrackerApiError);
    return e as FirecrackerApiError;
  };

  it("rejects malformed bodies with a fault message naming the field", async () => {
    const e = await refused(api.putMachineConfig({ vcpu_count: "2", mem_size_mib: 128, ram: 1 } as never));
    expect(e.status).toBe(400);
    expect(e.faultMessage).toBe("MachineConfiguration.ram: unknown field; MachineConfiguration.vcpu_count: expected an integer, got string");
    expect(e.code).toBe("FAILED_PRECONDITION");
    expect((await refused(api.putNetworkInterface({ iface_id: "eth0" } as never))).faultMessage).toMatch(/host_dev_name: missing required field/);
    expect((await refused(api.send({ method: "PUT", path: "/drives/a", body: { drive_id: "b", is_root_device: true, path_on_host: "/disk", is_read_only: false } }))).faultMessage).toMatch(/does not match/);
    expect((await refused(api.send({ method: "PUT", path: "/nonsense", body: {} }))).faultMessage).toMatch(/invalid request method/);
  });

  it("enforces the state rules", async () => {
    expect((await refused(api.setVmState("Paused"))).faultMessage).toMatch(/not booted/);
    expect((await refused(api.send({ method: "PATCH", path: "/vm", body: { state: "Frozen" } }))).faultMessage).toMatch(/Vm.state/);
    expect((await refused(api.createSnapshot({ snapshot_path: "/s", mem_file_path: "/m" }))).faultMessage).toMatch(/paused/);
    expect((await refused(api.action("InstanceStart"))).faultMessage).toMatch(/without a boot source/);
    expect((await refused(api.putMmdsConfig({ version: "V2", network_interfaces: ["eth0"] }))).faultMessage).toMatch(/"eth0" is not configured/);
    await api.putBootSource({ kernel_image_path: "/vmlinux" });
    // Configured beyond logger/metrics: a snapshot can no longer be loaded into this process.
    expect((await refused(api.loadSnapshot({ snapshot_path: "/s", mem_backend: { backend_type: "File", backend_path: "/m" } }))).faultMessage).toMatch(/fresh microVM/);
    await api.action("InstanceStart");
    expect((await api.describe()).state).toBe("Running");
    expect((await refused(api.putDrive({ drive_id: "d", path_on_host: "/disk", is_root_device: false, is_read_only: true }))).faultMessage).toMatch(/only allowed before the microVM starts/);
    expect((await refused(api.createSnapshot({ snapshot_path: "/s", mem_file_path: "/m" }))).faultMessage).toMatch(/paused/);
    await api.setVmState("Paused");
    await api.createSnapshot({ snapshot_path: "/s", mem_file_path: "/m" });
    expect(existsSync(join(root, "s"))).toBe(true);
    expect(fake.calls.filter((c) => c.status === 204).map((c) => `${c.method} ${c.path}`)).toEqual([
      "PUT /boot-source",
      "PUT /actions",
      "PATCH /vm",
      "PUT /snapshot/create",
    ]);
  });
});
