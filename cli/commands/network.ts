// Network commands: network create|list|delete.
import type { Command } from "commander";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { networkView } from "../views.js";

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
    .addHelpText("after", examples("noidctl network create backend --cidr 10.20.0.0/24"))
    .action(async (name: string, o: { cidr: string }) => {
      const n = await app.client().createNetwork(name, { cidr: o.cidr });
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
