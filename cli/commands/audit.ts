// audit: read the audit log, newest first.
import type { Command } from "commander";
import type { App } from "../app.js";
import { parsePositiveInt } from "../parse.js";
import { auditView } from "../views.js";

export function registerAuditCommand(program: Command, app: App): void {
  program
    .command("audit")
    .description("show audit events, newest first")
    .option("--limit <n>", "at most this many events", "50")
    .option("--user <user>", "only this user's events")
    .option("--vm <vm>", "only events about this VM")
    .option("--event <event>", "only this event, e.g. vm.create or auth.failure")
    .addHelpText("after", "\nExamples:\n  noidctl audit --limit 20\n  noidctl audit --user alice --vm web -o json")
    .action(async (o: { limit: string; user?: string; vm?: string; event?: string }) => {
      const events = await app.client().listAuditEvents({
        limit: parsePositiveInt("--limit", o.limit),
        ...(o.user ? { user: o.user } : {}),
        ...(o.vm ? { vm: o.vm } : {}),
        ...(o.event ? { event: o.event } : {}),
      });
      app.printList(auditView, events);
    });
}
