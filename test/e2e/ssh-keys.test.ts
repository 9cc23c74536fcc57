// Privileged, the whole path: a user's SSH public keys reach the VMs it creates.
// The built coordinator (embedded etcd) and a real agent daemon in a lab host
// with the sandbox driver; the key is read back from inside the VM through exec.
// A sandbox VM has no root filesystem of its own: its keys are a file in the
// VM's state dir, named by $AUTHORIZED_KEYS_FILE in its commands.
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { Role, VmPhase, type NoidClient } from "../../sdk/index.js";

const prefix = `k${randomBytes(3).toString("hex").slice(0, 5)}`;

/** A fresh ed25519 public key as an authorized_keys line. */
function ed25519Line(comment: string): string {
  const der = generateKeyPairSync("ed25519").publicKey.export({ format: "der", type: "spki" });
  const raw = der.subarray(der.length - 32);
  const str = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b]);
  return `ssh-ed25519 ${Buffer.concat([str(Buffer.from("ssh-ed25519")), str(raw)]).toString("base64")} ${comment}`;
}

describe("SSH keys handed to VMs (sandbox driver)", () => {
  let cluster: LocalCluster;
  let alice: NoidClient;
  const k1 = ed25519Line("alice@laptop");
  const k2 = ed25519Line("alice@ci");

  const running = (name: string) =>
    waitFor(
      `${name} RUNNING`,
      async () => {
        const v = await alice.getVm(name);
        return v.status?.phase === VmPhase.VM_PHASE_RUNNING ? v : undefined;
      },
      60_000,
    );
  const keysInVm = async (name: string) => {
    const r = await alice.exec(name, ["sh", "-c", 'cat "$AUTHORIZED_KEYS_FILE"; stat -c %a "$AUTHORIZED_KEYS_FILE"']);
    expect(r.exitCode, r.stderr.toString()).toBe(0);
    return r.stdout.toString();
  };

  beforeAll(async () => {
    cluster = await startLocalCluster({ prefix, dir: `/run/noid-e2e-${prefix}`, hosts: 1 });
    const token = (await cluster.client().createToken({ name: "alice", role: Role.ROLE_USER })).secret;
    alice = cluster.client(token);
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
    expect(await labLeftovers(prefix)).toEqual([]);
  }, 60_000);

  it("a VM gets its owner's keys as they were at create, readable inside the VM", async () => {
    await alice.addSshKey(k1);
    await alice.addSshKey(k2);
    const vm = await alice.createVm("keyed", { vcpus: 1, memoryMb: 128 });
    expect(vm.spec?.sshAuthorizedKeys).toEqual([k1, k2]);
    await running("keyed");
    expect(await keysInVm("keyed")).toBe(`${k1}\n${k2}\n600\n`);

    // Keys are a snapshot: removing one later changes new VMs, not this one.
    await alice.removeSshKey((await alice.listSshKeys()).find((k) => k.comment === "alice@ci")!.fingerprint);
    await alice.createVm("later", { vcpus: 1, memoryMb: 128 });
    await running("later");
    expect(await keysInVm("later")).toBe(`${k1}\n600\n`);
    expect(await keysInVm("keyed")).toBe(`${k1}\n${k2}\n600\n`);
  });

  it("refuses keys in the request: they come from the owner's key list only", async () => {
    await expect(alice.createVm("sneaky", { vcpus: 1, memoryMb: 128, sshAuthorizedKeys: [k2] })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect((await alice.listVms()).map((v) => v.name)).not.toContain("sneaky");
  });
});
