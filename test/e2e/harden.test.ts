// The hardening script against a root laid out in a temporary directory, with its firewall
// loaded into a lab host's namespace and probed for real from the lab's "outside" namespace.
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { observePosture } from "../../agent/posture/observe.js";
import { assessPosture } from "../../agent/posture/posture.js";
import { run } from "../../common/run.js";
import { type Lab, createLab } from "../../deploy/lab/lab.js";
import { type HardenOptions, SSHD_DROPIN, harden, main as hardenMain, policyOf } from "../../deploy/harden.js";
import { killProcess, type ProcessRef } from "../../common/run.js";

const prefix = `hd${randomBytes(3).toString("hex")}`;
let lab: Lab;
let root: string;
let listener: ProcessRef;
let opts: HardenOptions;

const SSHD_MAIN = "Port 22\nPasswordAuthentication yes\nUsePAM yes\n";

/** A TCP connect from the outside namespace: true when it is accepted within 1.5 s. */
async function connects(port: number): Promise<boolean> {
  const js = `const s=require("net").connect(${port},"${lab.hosts[0]!.address}");s.on("connect",()=>process.exit(0));s.on("error",()=>process.exit(1));setTimeout(()=>process.exit(2),1500)`;
  return (await run([process.execPath, "-e", js], { netns: lab.outside!.netns, allowFail: true })).exitCode === 0;
}

async function connectsEventually(port: number): Promise<boolean> {
  for (let i = 0; i < 10; i++) if (await connects(port)) return true;
  return false;
}

beforeAll(async () => {
  lab = await createLab({ prefix, hosts: 1, outside: true });
  root = mkdtempSync(join(tmpdir(), "noid-harden-"));
  mkdirSync(join(root, "etc/ssh"), { recursive: true });
  writeFileSync(join(root, "etc/ssh/sshd_config"), SSHD_MAIN);
  // The package as dpkg would leave it; the script installs packages only on a real root.
  mkdirSync(join(root, "usr/bin"), { recursive: true });
  writeFileSync(join(root, "usr/bin/unattended-upgrade"), "#!/bin/sh\n", { mode: 0o755 });
  const js = `const n=require("net");for(const p of [22,7654,8080]) n.createServer(s=>s.end()).listen(p,"0.0.0.0")`;
  listener = await lab.spawn(lab.hosts[0]!, [process.execPath, "-e", js]);
  opts = {
    root,
    sshFrom: [`${lab.outside!.address}/32`],
    sshPort: 22,
    coordinator: true,
    coordinatorPort: 7654,
    wgPort: 51820,
    wgInterface: "wg-noid",
    tcp: [],
    udp: [],
    fail2ban: false,
    netns: lab.hosts[0]!.netns,
  };
}, 60_000);

afterAll(async () => {
  if (listener) await killProcess(listener);
  await lab?.destroy();
  rmSync(root, { recursive: true, force: true });
});

describe("deploy/harden", () => {
  it("an unhardened host fails its posture and every port is open", async () => {
    const p = assessPosture(await observePosture({ root, runner: run, netns: opts.netns! }), policyOf(opts));
    expect(p.ok).toBe(false);
    expect(p.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual(["ssh-password-off", "ssh-restricted", "auto-updates", "firewall", "fail2ban"]);
    expect(await connectsEventually(8080)).toBe(true);
  });

  it("--dry-run lists the changes and changes nothing", async () => {
    const { actions } = await harden(opts, { dryRun: true });
    expect(actions.filter((a) => a.kind === "write").map((a) => (a as { path: string }).path).sort()).toEqual(
      ["/etc/apt/apt.conf.d/20auto-upgrades", "/etc/nftables.conf", "/etc/noid/host-firewall.nft", "/etc/ssh/sshd_config", SSHD_DROPIN].sort(),
    );
    expect(actions.some((a) => a.kind === "run" && a.argv[0] === "nft")).toBe(true);
    expect(readFileSync(join(root, "etc/ssh/sshd_config"), "utf8")).toBe(SSHD_MAIN);
    expect((await run(["nft", "list", "tables"], { netns: opts.netns! })).stdout).not.toContain("noid_host");
  });

  it("hardens: key-only SSH from the allowed source, updates on, inbound default drop; posture passes", async () => {
    const { posture } = await harden(opts, { dryRun: false });
    expect(posture.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual(["fail2ban"]);
    expect(posture.ok).toBe(true);
    expect(readFileSync(join(root, "etc/ssh/sshd_config"), "utf8")).toMatch(/^Include \/etc\/ssh\/sshd_config\.d\/\*\.conf\n/);
    expect(await connectsEventually(22)).toBe(true); // SSH from the listed source
    expect(await connectsEventually(7654)).toBe(true); // the coordinator
    expect(await connects(8080)).toBe(false); // anything else is dropped
  });

  it("is idempotent: a second run changes nothing", async () => {
    const { actions } = await harden(opts, { dryRun: false });
    expect(actions.filter((a) => a.kind !== "warn")).toEqual([]);
  });

  it("repairs a rule deleted by hand, and the posture sees a port opened by hand", async () => {
    const ns = { netns: opts.netns! };
    const listing = (await run(["nft", "-a", "list", "chain", "inet", "noid_host", "input"], ns)).stdout;
    const handle = /tcp dport (?:\{ )?7654(?: \})? accept # handle (\d+)/.exec(listing)?.[1];
    expect(handle).toBeDefined();
    await run(["nft", "delete", "rule", "inet", "noid_host", "input", "handle", handle!], ns);
    expect(await connects(7654)).toBe(false);
    const { actions } = await harden(opts, { dryRun: false });
    expect(actions.map((a) => (a.kind === "run" ? a.argv[0] : a.kind))).toEqual(["nft"]);
    expect(await connectsEventually(7654)).toBe(true);

    await run(["nft", "add", "rule", "inet", "noid_host", "input", "tcp", "dport", "8080", "accept"], ns);
    const p = assessPosture(await observePosture({ root, runner: run, netns: opts.netns! }), policyOf(opts));
    expect(p.checks.find((c) => c.name === "firewall")).toMatchObject({ ok: false, detail: expect.stringContaining("tcp 8080") });
  });

  it("SSH from a source that is not listed is dropped", async () => {
    const { posture } = await harden({ ...opts, sshFrom: ["198.51.100.0/24"] }, { dryRun: false });
    expect(posture.ok).toBe(true);
    expect(await connects(22)).toBe(false);
  });

  it("the command refuses to run without --ssh-from, and rejects a bad CIDR", async () => {
    await expect(hardenMain(["--root", root])).rejects.toThrow(/--ssh-from/);
    await expect(hardenMain(["--root", root, "--ssh-from", "10.0.0.0/33"])).rejects.toThrow(/not a CIDR/);
  });
});
