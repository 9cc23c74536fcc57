// Network commands: network create|list|delete.
import type { Command } from "commander";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { UsageError } from "../parse.js";
import { networkView } from "../views.js";

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function registerNetworkCommands(program: Command, app: App): void {
  const net = program
    .command("network")
    .alias("net")
    .description("manage your private networks")
    .addHelpText(
      "after",
      "\nExamples:\n  noidctl network create backend --cidr 10.20.0.0/24\n  noidctl network list\n  noidctl network delete backend",
    );

  net
    .command("create")
    .description("create a network")
    .argument("<name>", "network name")
    .requiredOption("--cidr <cidr>", "address range, e.g. 10.20.0.0/24")
    .option("--mode <mode>", "wireguard (encrypted between hosts, the default) or vxlan (trusted underlay, unencrypted)")
    .option("--egress <policy>", 'egress policy: "nat" (the default: anywhere) or "none" (no egress at all)')
    .option("--egress-allow <cidr>", "only these destinations outside the network (repeatable)", collect, [])
    .option("--egress-deny <cidr>", "never these destinations (repeatable; wins over --egress-allow)", collect, [])
    .option("--owner <user>", "create it for another user (admins)")
    .addHelpText(
      "after",
      examples(
        "noidctl network create backend --cidr 10.20.0.0/24",
        "noidctl network create vault --cidr 10.30.0.0/24 --egress none",
        "noidctl network create web --cidr 10.40.0.0/24 --egress-allow 192.0.2.0/24 --egress-deny 192.0.2.9/32",
      ),
    )
    .action(async (name: string, o: { cidr: string; mode?: string; egress?: string; egressAllow: string[]; egressDeny: string[]; owner?: string }) => {
      if (o.mode !== undefined && o.mode !== "wireguard" && o.mode !== "vxlan") throw new UsageError(`--mode must be wireguard or vxlan (got "${o.mode}")`);
      if (o.egress !== undefined && o.egress !== "nat" && o.egress !== "none") throw new UsageError(`--egress must be nat or none (got "${o.egress}")`);
      const denyAll = o.egress === "none";
      if (denyAll && (o.egressAllow.length || o.egressDeny.length)) throw new UsageError("--egress none takes no --egress-allow/--egress-deny");
      const egress = denyAll || o.egressAllow.length || o.egressDeny.length ? { denyAll, allow: o.egressAllow, deny: o.egressDeny } : undefined;
      const n = await app.client().createNetwork(name, {
        cidr: o.cidr,
        ...(o.mode ? { mode: o.mode } : {}),
        ...(egress ? { egress } : {}),
        ...(o.owner ? { owner: o.owner } : {}),
      });
      app.printResult(`network/${n.name} created (${n.cidr}, vni ${n.vni})`, networkView, n);
    });

  net
    .command("list")
    .alias("ls")
    .description("list networks")
    .option("--owner <user>", "another user's networks (admins)")
    .addHelpText("after", examples("noidctl network list", "noidctl network list --owner alice -o json"))
    .action(async (o: { owner?: string }) => {
      const nets = await app.client().listNetworks(o.owner ? { owner: o.owner } : {});
      app.printList(networkView, [...nets].sort((a, b) => a.name.localeCompare(b.name)));
    });

  net
    .command("delete")
    .description("delete a network (it must have no VMs)")
    .argument("<name>", "network name")
    .option("--owner <user>", "another user's network (admins)")
    .addHelpText("after", examples("noidctl network delete backend"))
    .action(async (name: string, o: { owner?: string }) => {
      await app.client().deleteNetwork(name, o.owner ? { owner: o.owner } : {});
      if (app.structured) app.printOne({ columns: [], toJSON: (x: { deleted: string }) => x }, { deleted: name });
      else app.io.stdout(`network/${name} deleted\n`);
    });
}
