import { describe, expect, it } from "vitest";
import { recordingRunner } from "../../common/run.js";
import { applyHostMesh } from "../../mesh/apply.js";
import { generateKeyPair } from "../../mesh/keys.js";
import { type MeshMember, hostMesh } from "../../mesh/topology.js";

const k1 = generateKeyPair();
const k2 = generateKeyPair();
const members: MeshMember[] = [
  { hostId: "h1", name: "h1", underlay: "10.99.0.1", wgPublicKey: k1.publicKey, wgPort: 51820, meshIp: "100.64.0.1",
    networks: [{ networkId: "a", vni: 1001, mode: "wireguard", cidr: "10.20.0.0/24", gateway: "10.20.0.1", vms: [] }] },
  { hostId: "h2", name: "h2", underlay: "10.99.0.2", wgPublicKey: k2.publicKey, wgPort: 51820, meshIp: "100.64.0.2",
    networks: [{ networkId: "a", vni: 1001, mode: "wireguard", cidr: "10.20.0.0/24", gateway: "10.20.0.1", vms: [{ mac: "02:00:00:00:00:12", ip: "10.20.0.12" }] }] },
];
const desired = hostMesh(members, "h1", { meshCidr: "100.64.0.0/16", uplinkMtu: 1500 });

// A host that already matches `desired`, as ip/wg/bridge print it.
const state = {
  dump: `(hidden)\t${k1.publicKey}\t51820\toff\n${k2.publicKey}\t(none)\t10.99.0.2:51820\t100.64.0.2/32\t0\t0\t0\toff`,
  links: JSON.stringify([
    { ifname: "wg-noid", flags: ["POINTOPOINT", "UP"], mtu: 1440, linkinfo: { info_kind: "tun" }, addr_info: [{ family: "inet", local: "100.64.0.1", prefixlen: 16 }] },
    { ifname: "vmnet1001", flags: ["UP"], mtu: 1390, address: "02:6e:67:00:03:e9", linkinfo: { info_kind: "bridge" }, addr_info: [{ family: "inet", local: "10.20.0.1", prefixlen: 24 }] },
    { ifname: "vx1001", flags: ["UP"], mtu: 1390, master: "vmnet1001", linkinfo: { info_kind: "vxlan", info_data: { id: 1001, local: "100.64.0.1", port: 4789, learning: false } }, addr_info: [] },
  ]),
  fdb: JSON.stringify([{ mac: "00:00:00:00:00:00", dst: "100.64.0.2" }, { mac: "02:00:00:00:00:12", dst: "100.64.0.2" }]),
};

function fakeHost(s: typeof state) {
  return recordingRunner((argv) => {
    const cmd = argv.join(" ");
    if (cmd === "wg show wg-noid dump") return { stdout: s.dump };
    if (cmd === "ip -j -d addr show") return { stdout: s.links };
    if (cmd.startsWith("bridge -j fdb show")) return { stdout: s.fdb };
    return undefined;
  });
}

describe("applyHostMesh", () => {
  it("only reads when the host already matches", async () => {
    const runner = fakeHost(state);
    const r = await applyHostMesh(desired, { runner, netns: "lab-h1", mountNs: "/x/h1.mnt", privateKey: k1.privateKey });
    expect(r).toEqual({ actions: [], wireguard: { how: "existing" } });
    expect(runner.calls.every((c) => /^(wg show|ip -j|bridge -j)/.test(c.argv.join(" ")))).toBe(true);
    // wg runs in the host's mount namespace (wireguard-go's socket), everything else in its netns only.
    for (const c of runner.calls) {
      expect(c.opts.netns).toBe("lab-h1");
      expect(c.opts.mountNs).toBe(c.argv[0] === "wg" ? "/x/h1.mnt" : undefined);
    }
  });

  it("fails when the host does not converge, naming what is left", async () => {
    const runner = fakeHost({ ...state, fdb: "[]" }); // the fake never changes: fdb-add "does not stick"
    await expect(applyHostMesh(desired, { runner, privateKey: k1.privateKey })).rejects.toThrow(/did not converge; still: fdb-add vx1001/);
    expect(runner.calls.some((c) => c.argv.join(" ") === "bridge fdb append 00:00:00:00:00:00 dev vx1001 dst 100.64.0.2")).toBe(true);
  });

  it("refuses a private key that is not this host's", async () => {
    await expect(applyHostMesh(desired, { runner: fakeHost(state), privateKey: k2.privateKey })).rejects.toThrow(/privateKey/);
  });
});
