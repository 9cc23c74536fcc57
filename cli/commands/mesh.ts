// noidctl mesh show HOST: what that host must have of the encrypted mesh (WireGuard peers,
// VXLAN devices, bridges, FDB entries), computed from the snapshot its agent is sent with
// the agent's own pure functions, so what is printed is what the agent applies.
import type { Command } from "commander";
import { meshView } from "../../agent/network/view.js";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { parsePositiveInt } from "../parse.js";

export function registerMeshCommands(program: Command, app: App): void {
  const mesh = program.command("mesh").description("inspect the encrypted mesh between hosts (admins)");
  mesh
    .command("show")
    .description("show what a host must have of the mesh: WireGuard peers, VXLAN devices, bridges, FDB entries")
    .argument("<host>", "host name")
    .option("--uplink-mtu <n>", "the host's uplink MTU the MTUs derive from", "1500")
    .addHelpText("after", examples("noidctl mesh show host1", "noidctl mesh show host1 -o json"))
    .action(async (host: string, o: { uplinkMtu: string }) => {
      const res = await app.client().getHostMesh(host);
      const snap = res.snapshot ?? { members: [], meshPrefixLen: 0 };
      const v = meshView(snap, res.hostId, { uplinkMtu: parsePositiveInt("--uplink-mtu", o.uplinkMtu), wgIfname: "wg-noid" });
      const names = new Map(snap.members.map((m) => [m.hostId, m.name]));
      const meshIps = new Map(snap.members.map((m) => [m.meshIp, m.name]));
      if (app.structured) {
        app.printOne({ columns: [], toJSON: (x: typeof v.desired) => x }, v.desired);
        return;
      }
      const w = v.desired.wg;
      const lines = [`host/${host}: mesh address ${w.address}, WireGuard ${w.ifname} port ${w.listenPort} mtu ${w.mtu}`];
      lines.push(`peers (${w.peers.length}):`);
      for (const p of w.peers) lines.push(`  ${(names.get(p.hostId) ?? p.hostId).padEnd(14)} ${p.endpoint.padEnd(22)} ${p.allowedIps.join(",")}  ${p.publicKey}`);
      lines.push(`networks (${v.desired.networks.length}):`);
      for (const n of v.desired.networks) {
        lines.push(`  vni ${n.vni} (${n.mode}): ${n.vxlan.name} local ${n.vxlan.local} mtu ${n.vxlan.mtu}, bridge ${n.bridge.name} ${n.bridge.address} mtu ${n.bridge.mtu}`);
        for (const f of n.fdb) lines.push(`    fdb ${f.mac} -> ${f.dst}${meshIps.get(f.dst) ? ` (${meshIps.get(f.dst)})` : ""}`);
      }
      app.io.stdout(lines.join("\n") + "\n");
    });
}
