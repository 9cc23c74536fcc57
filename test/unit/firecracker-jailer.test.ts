// agent/drivers/firecracker/jailer.ts: the jailer argv and chroot layout (docs/jailer.md).
import { describe, expect, it } from "vitest";
import { isNoidError } from "../../common/errors.js";
import { checkJailId, chrootLayout, jailIdFor, jailerArgv } from "../../agent/drivers/firecracker/jailer.js";
import { parseJailerArgv } from "../helpers/fake-firecracker.js";

const params = {
  jailerBin: "/usr/local/bin/jailer",
  firecrackerBin: "/usr/local/bin/firecracker",
  jailId: "h1-fc-0123456789",
  uid: 1234,
  gid: 5678,
  chrootBase: "/srv/jailer",
  netns: "h1-fc-0123456789",
  parentCgroup: "noid-h1",
  cgroups: { "memory.max": "201326592", "cpu.max": "200000 100000" },
  apiSock: "/run/firecracker.socket",
};

describe("jailer argv", () => {
  it("builds the documented flags, cgroup v2 values sorted, and Firecracker's own args after --", () => {
    expect(jailerArgv(params)).toEqual([
      "/usr/local/bin/jailer",
      "--id", "h1-fc-0123456789",
      "--exec-file", "/usr/local/bin/firecracker",
      "--uid", "1234",
      "--gid", "5678",
      "--chroot-base-dir", "/srv/jailer",
      "--netns", "/var/run/netns/h1-fc-0123456789",
      "--cgroup-version", "2",
      "--parent-cgroup", "noid-h1",
      "--cgroup", "cpu.max=200000 100000",
      "--cgroup", "memory.max=201326592",
      "--", "--api-sock", "/run/firecracker.socket",
    ]);
  });

  it("leaves out netns and parent cgroup when not given, and passes the fake jailer's checks", () => {
    const { netns: _n, parentCgroup: _p, ...rest } = params;
    const argv = jailerArgv({ ...rest, cgroups: {} });
    expect(argv).not.toContain("--netns");
    expect(argv).not.toContain("--parent-cgroup");
    expect(argv).not.toContain("--cgroup");
    expect(parseJailerArgv(argv)).toEqual({
      id: "h1-fc-0123456789",
      execFile: "/usr/local/bin/firecracker",
      chrootBase: "/srv/jailer",
      apiSock: "/run/firecracker.socket",
      cgroups: [],
    });
  });

  it("refuses ids the jailer refuses and exec files not named firecracker", () => {
    expect(() => checkJailId("a".repeat(65))).toThrow(/1-64/);
    expect(() => checkJailId("a_b")).toThrow(/letters, digits or '-'/);
    expect(checkJailId("a".repeat(64))).toHaveLength(64);
    const err = (() => {
      try {
        jailerArgv({ ...params, firecrackerBin: "/usr/bin/qemu" });
      } catch (e) {
        return e;
      }
    })();
    expect(isNoidError(err, "INVALID_ARGUMENT")).toBe(true);
    expect(String(err)).toMatch(/must contain "firecracker"/);
  });

  it("derives a jail id from the VM id alone, short and stable", () => {
    const a = jailIdFor("h1", "vm-01J9ZQ0000000000000000000A");
    expect(a).toMatch(/^h1-fc-[0-9a-f]{10}$/);
    expect(jailIdFor("h1", "vm-01J9ZQ0000000000000000000A")).toBe(a);
    expect(jailIdFor("h1", "vm-01J9ZQ0000000000000000000B")).not.toBe(a);
  });
});

describe("chroot layout", () => {
  it("puts the jail at <base>/<exec name>/<id>/root and maps each API path to a host path", () => {
    const l = chrootLayout("/srv/jailer", "/opt/fc/firecracker-v1.9", "h1-fc-0123456789");
    expect(l.jailDir).toBe("/srv/jailer/firecracker-v1.9/h1-fc-0123456789");
    expect(l.root).toBe("/srv/jailer/firecracker-v1.9/h1-fc-0123456789/root");
    expect(l.apiSock).toEqual({ jail: "/run/firecracker.socket", host: `${l.root}/run/firecracker.socket` });
    expect(l.kernel).toEqual({ jail: "/vmlinux", host: `${l.root}/vmlinux` });
    expect(l.rootfs).toEqual({ jail: "/rootfs.ext4", host: `${l.root}/rootfs.ext4` });
    expect(l.vsock.host).toBe(`${l.root}/run/vsock.sock`);
    expect(l.snapshotState.host).toBe(`${l.root}/snapshot/vmstate`);
    expect(l.snapshotMem.host).toBe(`${l.root}/snapshot/mem`);
    // Every host path is inside the jail.
    for (const p of [l.apiSock, l.kernel, l.initrd, l.rootfs, l.vsock, l.log, l.metrics, l.snapshotState, l.snapshotMem]) {
      expect(p.host.startsWith(`${l.root}/`)).toBe(true);
      expect(p.host).toBe(`${l.root}${p.jail}`);
    }
  });
});
