// Handing the owner's SSH keys to VMs, the pure parts: the authorized_keys
// content, the guest-side installer command, the Firecracker MMDS document,
// and the coordinator's Vm -> the agent's create spec.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { authorizedKeysFile, guestInstallCommand, GUEST_AUTHORIZED_KEYS } from "../../agent/drivers/ssh-keys.js";
import { mmdsContents } from "../../agent/drivers/firecracker/config.js";
import { desiredFromVm } from "../../agent/reconcile/desired.js";
import { Vm } from "../../gen/noid/v1/vm.js";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";

const K1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";
const K2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJ0cT1d9Y1k4N5A8d0k9kIu2hYbXkqv5l3wH3m7Zl0f alice@ci";

describe("authorized_keys content", () => {
  it("is one key per line, ending with a newline; empty without keys", () => {
    expect(authorizedKeysFile([K1, K2])).toBe(`${K1}\n${K2}\n`);
    expect(authorizedKeysFile([])).toBe("");
  });
  it.each([`${K1}\ncommand="rm -rf /" ${K2}`, `${K1}\r`, "a\0b", "  "])("refuses a key that is not one line: %j", (k) => {
    expect(() => authorizedKeysFile([k])).toThrow(/one non-empty line/);
  });
});

describe("guest installer", () => {
  it("writes the file with sshd's modes, the keys in the environment and not in argv", () => {
    const { argv, env } = guestInstallCommand([K1]);
    expect(argv.join(" ")).not.toContain("AAAA");
    expect(Object.values(env)).toEqual([`${K1}\n`]);
    // Run it for real with the guest path moved into a temp dir (busybox sh in the guest, sh here).
    const dir = mkdtempSync(join(tmpdir(), "noid-keys-"));
    try {
      const script = argv[2]!.replaceAll(GUEST_AUTHORIZED_KEYS.replace(/\/authorized_keys$/, ""), join(dir, ".ssh"));
      execFileSync(argv[0]!, [argv[1]!, script], { env: { ...env, PATH: "/usr/bin:/bin" } });
      const file = join(dir, ".ssh", "authorized_keys");
      expect(readFileSync(file, "utf8")).toBe(`${K1}\n`);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(statSync(join(dir, ".ssh")).mode & 0o777).toBe(0o700);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("Firecracker MMDS", () => {
  const spec: VmCreateSpec = { id: "vm1", vcpus: 1, memoryMb: 128, diskGb: 1, image: "", net: { mac: "02:00:00:00:00:01", ip: "" } };
  it("carries the keys under noid.ssh_authorized_keys, and nothing when there are none", () => {
    expect((mmdsContents({ ...spec, sshAuthorizedKeys: [K1, K2] }) as { noid: Record<string, unknown> }).noid.ssh_authorized_keys).toEqual([K1, K2]);
    expect((mmdsContents(spec) as { noid: Record<string, unknown> }).noid).not.toHaveProperty("ssh_authorized_keys");
  });
});

describe("desired state", () => {
  it("passes the VM's key snapshot to the driver's create spec", () => {
    const vm = Vm.fromPartial({ id: "abc", name: "web", owner: "alice", spec: { vcpus: 1, memoryMb: 128, sshAuthorizedKeys: [K1] } });
    expect(desiredFromVm(vm).spec.sshAuthorizedKeys).toEqual([K1]);
    expect(desiredFromVm(Vm.fromPartial({ id: "abc", spec: { vcpus: 1 } })).spec).not.toHaveProperty("sshAuthorizedKeys");
  });
});
