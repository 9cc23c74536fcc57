// migrate: move a running VM to another host with its MAC, address and state.
import type { Command } from "commander";
import type { App } from "../app.js";
import { UsageError } from "../parse.js";
import { vmView } from "../views.js";

const size = (n: number): string => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)}Mi` : n >= 1024 ? `${(n / 1024).toFixed(1)}Ki` : `${n}B`);

export function registerMigrateCommand(program: Command, app: App): void {
  program
    .command("migrate")
    .description("move a running VM to another host, keeping its MAC, address, memory and disk")
    .argument("<vm>", "VM name")
    .requiredOption("--to <host>", "target host name")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText(
      "after",
      `
The VM is paused on its host, its state (memory and disk) crosses the encrypted mesh to the
target host, checked by SHA-256, and it runs on there from where it was: same MAC, same
address, the mesh moves its forwarding entries and the VM announces itself. If anything
fails before the switch, the VM runs on where it was and the command fails with the reason.
Needs a driver with checkpoint and restore (qemu), a target that runs it, is not cordoned
and has room.

Examples:
  noidctl migrate web --to host2
  noidctl migrate web --to host2 -o json`,
    )
    .action(async (vm: string, o: { to: string; owner?: string }) => {
      if (!o.to) throw new UsageError("--to <host> is required");
      const r = await app.client().migrateVm(vm, o.to, o.owner ? { owner: o.owner } : {});
      const v = r.vm!;
      app.printResult(
        `VM ${v.name} moved from ${r.fromHost} to ${v.status?.hostName} (${size(Number(r.transferredBytes))} in ${(r.pausedMs / 1000).toFixed(1)} s, ${v.status?.ip} ${v.status?.mac})`,
        vmView,
        v,
      );
    });
}
