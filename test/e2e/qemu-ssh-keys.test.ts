// Privileged, with a real QEMU guest: the owner's SSH keys are in the guest's
// /root/.ssh/authorized_keys (installed by the agent through the guest agent
// at boot), read back through exec; a restart keeps them right even if the
// guest changed the file.
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../../deploy/cluster.js";
import { startQemuCluster, type QemuCluster } from "../helpers/qemu-cluster.js";
import type { ProcessRef } from "../../common/run.js";
import { VmPhase, type NoidClient, type Vm } from "../../sdk/index.js";

const prefix = `qk${randomBytes(3).toString("hex").slice(0, 4)}`;
/** Generous: TCG boots in seconds when idle, much slower on a loaded machine. */
const BOOT_MS = 180_000;

function ed25519Line(comment: string): string {
  const der = generateKeyPairSync("ed25519").publicKey.export({ format: "der", type: "spki" });
  const str = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b]);
  return `ssh-ed25519 ${Buffer.concat([str(Buffer.from("ssh-ed25519")), str(der.subarray(der.length - 32))]).toString("base64")} ${comment}`;
}

describe("SSH keys in a QEMU guest", () => {
  let qc: QemuCluster;
  let alice: NoidClient;
  const qemuPids: ProcessRef[] = [];
  const key = ed25519Line("alice@qemu");
  const phase = async (name: string, p: VmPhase, timeoutMs: number): Promise<Vm> =>
    waitFor(`${name} ${VmPhase[p]}`, async () => {
      const v = await alice.getVm(name);
      if (v.status?.phase === VmPhase.VM_PHASE_FAILED) throw new Error(`${name} FAILED: ${v.status.reason}`);
      return v.status?.phase === p ? v : undefined;
    }, timeoutMs);
  const keysInGuest = async () => {
    const r = await alice.exec("kguest", ["sh", "-c", "cat /root/.ssh/authorized_keys; stat -c %a /root/.ssh /root/.ssh/authorized_keys"]);
    expect(r.exitCode, r.stderr.toString()).toBe(0);
    return r.stdout.toString();
  };

  beforeAll(async () => {
    qc = await startQemuCluster(prefix, 1024, qemuPids);
    alice = qc.alice;
  }, 400_000);
  afterAll(async () => {
    await qc?.stop();
  }, 60_000);

  it("installs the owner's keys at boot and again after a restart", async () => {
    await alice.addSshKey(key);
    await alice.createVm("kguest", { vcpus: 1, memoryMb: 192, driver: "qemu" });
    await phase("kguest", VmPhase.VM_PHASE_RUNNING, BOOT_MS);
    expect(await keysInGuest()).toBe(`${key}\n700\n600\n`);
    // The guest overwrites the file; the next boot puts the owner's keys back.
    await alice.exec("kguest", ["sh", "-c", "echo tampered > /root/.ssh/authorized_keys; sync"]);
    await alice.stopVm("kguest");
    await phase("kguest", VmPhase.VM_PHASE_STOPPED, 60_000);
    await alice.startVm("kguest");
    await phase("kguest", VmPhase.VM_PHASE_RUNNING, BOOT_MS);
    expect(await keysInGuest()).toBe(`${key}\n700\n600\n`);
    await alice.destroyVm("kguest");
    await waitFor("kguest gone", async () => ((await alice.listVms()).some((v) => v.name === "kguest") ? undefined : true), 60_000);
  }, 600_000);
});
