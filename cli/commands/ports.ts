// Port exposure commands: expose (an L4 port on the VM's host, or an HTTP hostname through the
// ingress), unexpose, ports (both kinds in one list).
import type { Command } from "commander";
import { HttpRoute, PortMapping } from "../../sdk/index.js";
import type { App } from "../app.js";
import { UsageError } from "../parse.js";
import type { View } from "../render.js";
import { age } from "../views.js";

/** One row of `noidctl ports`: an exposed port or an HTTP route. */
export type Exposure = { port: PortMapping } | { route: HttpRoute };

export const exposureView: View<Exposure> = {
  toJSON: (e) => ("port" in e ? { port: PortMapping.toJSON(e.port) } : { route: HttpRoute.toJSON(e.route) }),
  columns: [
    { header: "VM", value: (e) => ("port" in e ? e.port.vmName : e.route.vmName) },
    { header: "PROTO", value: (e) => ("port" in e ? e.port.protocol : "http") },
    {
      header: "PUBLIC",
      value: (e) => ("port" in e ? `${e.port.address || e.port.hostName}:${e.port.hostPort}` : e.route.hostname),
    },
    { header: "VM PORT", value: (e) => String("port" in e ? e.port.vmPort : e.route.vmPort) },
    { header: "HOST", value: (e) => ("port" in e ? e.port.hostName : e.route.hostName) },
    { header: "STATE", value: (e) => ("port" in e ? e.port.state : e.route.state) || "-" },
    { header: "INGRESS", value: (e) => ("route" in e ? e.route.ingress.join(",") || "-" : "-"), wide: true },
    { header: "OWNER", value: (e) => ("port" in e ? e.port.owner : e.route.owner), wide: true },
    { header: "AGE", value: (e, now) => age("port" in e ? e.port.createdAt : e.route.createdAt, now), wide: true },
  ],
};

export function registerPortCommands(program: Command, app: App): void {
  program
    .command("expose")
    .description("expose a VM's port on its host (HOST:VM/PROTO), or a hostname through the HTTP ingress (--http)")
    .argument("<vm>", "VM name")
    .argument("[spec]", "HOST:VM/PROTO, e.g. 8080:80/tcp (one port, no ranges)")
    .option("--http <hostname>", "route HTTP requests for this name at the ingress hosts to the VM")
    .option("--port <n>", "the VM's port for --http (default 80)")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText(
      "after",
      `
An L4 port is DNATed from the VM's host's underlay address; everything not exposed stays
closed. Host ports below 1024 need an admin; a host port taken on that host is refused.
An HTTP route is served by every host whose agent runs with ingress = true (nginx), which
proxies to the VM over the mesh.

Examples:
  noidctl expose web 8080:80/tcp
  noidctl expose dns 5353:53/udp
  noidctl expose web --http app.example.test --port 80`,
    )
    .action(async (vm: string, spec: string | undefined, o: { http?: string; port?: string; owner?: string }) => {
      const owner = o.owner ? { owner: o.owner } : {};
      if (o.http) {
        if (spec) throw new UsageError("give either a port spec or --http, not both");
        const port = o.port === undefined ? 80 : Number(o.port);
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`--port must be a port number (got "${o.port}")`);
        const r = await app.client().exposeHttp(vm, o.http, { ...owner, port });
        app.printResult(`http://${r.hostname}/ routed to ${r.vmName}:${r.vmPort}`, exposureView, { route: r });
        return;
      }
      if (!spec) throw new UsageError("give a port spec (HOST:VM/PROTO, e.g. 8080:80/tcp) or --http <hostname>");
      if (o.port !== undefined) throw new UsageError("--port goes with --http; for L4 give HOST:VM/PROTO");
      const p = await app.client().exposePort(vm, spec, owner);
      app.printResult(`${p.protocol} port ${p.hostPort} of host ${p.hostName} exposed to ${p.vmName}:${p.vmPort}`, exposureView, { port: p });
    });

  program
    .command("unexpose")
    .description("remove an exposed port (HOST/PROTO) or an HTTP route (--http)")
    .argument("<vm>", "VM name")
    .argument("[spec]", "HOST/PROTO, e.g. 8080/tcp")
    .option("--http <hostname>", "the HTTP route to remove")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText("after", "\nExamples:\n  noidctl unexpose web 8080/tcp\n  noidctl unexpose web --http app.example.test")
    .action(async (vm: string, spec: string | undefined, o: { http?: string; owner?: string }) => {
      const owner = o.owner ? { owner: o.owner } : {};
      if (o.http) {
        if (spec) throw new UsageError("give either a port spec or --http, not both");
        await app.client().unexposeHttp(vm, o.http, owner);
        app.note(`route ${o.http} removed`);
        return;
      }
      if (!spec) throw new UsageError("give HOST/PROTO (e.g. 8080/tcp) or --http <hostname>");
      await app.client().unexposePort(vm, spec, owner);
      app.note(`port ${spec} of ${vm} unexposed`);
    });

  program
    .command("ports")
    .description("list exposed ports and HTTP routes")
    .option("--vm <name>", "only this VM's")
    .option("--owner <user>", "another user's (admins; default for admins: everyone's)")
    .addHelpText("after", "\nExamples:\n  noidctl ports\n  noidctl ports --vm web -o wide")
    .action(async (o: { vm?: string; owner?: string }) => {
      const r = await app.client().listPorts({ ...(o.vm ? { vm: o.vm } : {}), ...(o.owner ? { owner: o.owner } : {}) });
      app.printList(exposureView, [...r.ports.map((port) => ({ port })), ...r.routes.map((route) => ({ route }))]);
    });
}
