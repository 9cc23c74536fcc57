// events: the cluster's events (VM lifecycle, hosts, failed logins, security),
// newest first; --watch follows new ones until Ctrl-C.
import type { Command } from "commander";
import type { App } from "../app.js";
import { parseDuration, parsePositiveInt } from "../parse.js";
import { Event, type EventFilterOpts } from "../../sdk/index.js";
import type { View } from "../render.js";

const dash = (s: string | undefined): string => (s ? s : "-");

export const eventView: View<Event> = {
  toJSON: (e) => Event.toJSON(e),
  columns: [
    { header: "TIME", value: (e) => (e.time ? e.time.toISOString() : "-") },
    { header: "KIND", value: (e) => e.kind },
    { header: "VM", value: (e) => dash(e.vmName || e.vmId) },
    { header: "HOST", value: (e) => dash(e.hostName || e.hostId) },
    { header: "MESSAGE", value: (e) => dash(e.message) },
    { header: "SEVERITY", value: (e) => e.severity, wide: true },
    { header: "OWNER", value: (e) => dash(e.owner), wide: true },
    { header: "ATTRIBUTES", value: (e) => dash(Object.entries(e.attributes).map(([k, v]) => `${k}=${v}`).join(",")), wide: true },
    { header: "ID", value: (e) => e.id, wide: true },
  ],
};

interface EventsOpts {
  watch?: boolean;
  vm?: string;
  host?: string;
  kind?: string;
  since?: string;
  limit: string;
}

export function registerEventsCommand(program: Command, app: App): void {
  program
    .command("events")
    .description("show cluster events, newest first (non-admins: their own VMs' events)")
    .option("-w, --watch", "follow new events until Ctrl-C (with --since, replay those first, oldest first)")
    .option("--vm <vm>", "only events about this VM (name or id)")
    .option("--host <host>", "only events about this host (name or id)")
    .option("--kind <kind>", "only this kind or kind prefix: vm.phase, host, auth.failure, security")
    .option("--since <duration>", "only events of the last <duration>, e.g. 90m, 12h, 7d")
    .option("--limit <n>", "at most this many events (without --watch)", "100")
    .addHelpText(
      "after",
      "\nExamples:\n  noidctl events\n  noidctl events --vm web --since 1h\n  noidctl events --kind security -o json\n  noidctl events --watch --host hv-1",
    )
    .action(async (o: EventsOpts) => {
      const filter: EventFilterOpts = {
        ...(o.vm ? { vm: o.vm } : {}),
        ...(o.host ? { host: o.host } : {}),
        ...(o.kind ? { kind: o.kind } : {}),
        ...(o.since ? { since: new Date(app.now().getTime() - parseDuration(o.since) * 1000) } : {}),
      };
      const limit = parsePositiveInt("--limit", o.limit);
      const client = app.client();
      if (!o.watch) {
        app.printList(eventView, await client.listEvents({ ...filter, limit }));
        return;
      }
      let first = true;
      for await (const ev of client.watchEvents({ ...filter, ...(app.signal ? { signal: app.signal } : {}) })) {
        app.printStreamItem(eventView, ev, first);
        first = false;
      }
    });
}
