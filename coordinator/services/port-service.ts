// PortService: expose a VM's port on its host (L4 DNAT from the host's underlay address), or
// a hostname through the HTTP ingress; unexpose; list. Records live in etcd (PortRepo); the
// VM's host applies them (agent/network/ports*.ts) and reports what it applied, which the
// listing shows as each exposure's state.
//
// Order of checks: the VM must be the caller's (someone else's is NOT_FOUND, like every VM
// RPC), then the request's shape (INVALID_ARGUMENT: a range, a bad port), then privilege
// (host ports below 1024: admins only, PERMISSION_DENIED), then the store (ALREADY_EXISTS,
// RESOURCE_EXHAUSTED). A refused request writes nothing.
import { Role } from "../../gen/noid/v1/auth.js";
import { type HttpRoute, type PortMapping, type PortServiceServer, PortStatusRecord } from "../../gen/noid/v1/port.js";
import { denied, invalid } from "../../common/errors.js";
import { PRIVILEGED_BELOW, type PortSpec, checkHostname, checkPort, checkProtocol, parseHostPortSpec, parsePortSpec } from "../../common/ports.js";
import { checkName } from "../../common/names.js";
import { unary, type HandlerDeps } from "../grpc/handler.js";
import type { ClusterState } from "../state/cluster.js";
import type { VmRepo } from "../state/vm-repo.js";
import type { Store } from "../store/store.js";
import { portKeys } from "../state/keys.js";
import { dec } from "../state/codec.js";
import type { Limits } from "../limits.js";
import type { PortRepo } from "../ports/port-repo.js";
import { allow, ownerFor, resolveVm } from "./resolve-vm.js";

export interface PortServiceDeps extends HandlerDeps {
  repo: VmRepo;
  ports: PortRepo;
  store: Store;
  cluster: ClusterState;
  limits: () => Limits;
}

/** Pure: the L4 spec of an expose request (text or fields, not both). */
export function exposeSpecOf(req: { spec: string; hostPort: number; vmPort: number; protocol: string }): PortSpec {
  if (req.spec) {
    if (req.hostPort || req.vmPort) throw invalid("spec", "give either spec or host_port/vm_port, not both");
    return parsePortSpec(req.spec);
  }
  if (!req.hostPort) throw invalid("host_port", "is required (or spec, e.g. 8080:80/tcp)");
  return { hostPort: checkPort("host_port", req.hostPort), vmPort: checkPort("vm_port", req.vmPort || req.hostPort), protocol: checkProtocol("protocol", req.protocol) };
}

/** Pure: what the host's report says about one exposure. */
export function stateOf(status: PortStatusRecord | undefined, applied: boolean): string {
  if (applied) return "applied";
  if (status?.error) return `error: ${status.error}`;
  return "pending";
}

export function portService(d: PortServiceDeps): PortServiceServer {
  /** Reserved host ports: the host's own WireGuard port (UDP). */
  const reserved = (hostId: string, s: PortSpec): string | undefined => {
    const h = d.cluster.hostById(hostId);
    if (h && s.protocol === "udp" && s.hostPort === h.wireguardPort) return "the host's WireGuard port";
    return undefined;
  };

  async function statuses(): Promise<Map<string, PortStatusRecord>> {
    const r = await d.store.list(portKeys.statusPrefix);
    return new Map(r.kvs.map((kv) => [kv.key.slice(portKeys.statusPrefix.length), dec(PortStatusRecord, kv.value)]));
  }

  function decorate(ports: PortMapping[], routes: HttpRoute[], st: Map<string, PortStatusRecord>): { ports: PortMapping[]; routes: HttpRoute[] } {
    const ingressHosts = d.cluster.hosts.values().map((e) => e.value).filter((h) => h.ingress);
    return {
      ports: ports.map((p) => ({
        ...p,
        address: d.cluster.hostById(p.hostId)?.address ?? "",
        state: stateOf(st.get(p.hostId), st.get(p.hostId)?.applied.includes(`${p.protocol}/${p.hostPort}`) ?? false),
      })),
      routes: routes.map((r) => {
        const vmSide = st.get(r.hostId)?.applied.includes(`mesh/${r.meshPort}`) ?? false;
        const serving = ingressHosts.filter((h) => st.get(h.id)?.routes.includes(r.hostname));
        // An ingress names the routes its nginx refused (see agent/ingress/nginx.ts).
        const ingressErr = ingressHosts.map((h) => st.get(h.id)?.ingressError).find((e) => e?.includes(r.hostname));
        let state = vmSide && serving.length > 0 ? "applied" : stateOf(st.get(r.hostId), false);
        if (state === "pending" && ingressHosts.length === 0) state = "pending: no ingress host";
        else if (state === "pending" && ingressErr) state = `error: ${ingressErr}`;
        return { ...r, state, ingress: serving.map((h) => h.address) };
      }),
    };
  }

  return {
    exposePort: unary(d, "ExposePort", async (req, ctx) => {
      const vm = await resolveVm(d.repo, { name: req.vm, id: "", owner: req.owner }, ctx.principal, "port.expose");
      const actor = { user: ctx.principal.user, peer: ctx.peer };
      if (req.httpHost) {
        if (req.spec || req.hostPort) throw invalid("http_host", "an HTTP route takes a hostname and vm_port only");
        const hostname = checkHostname("http_host", req.httpHost);
        const vmPort = checkPort("vm_port", req.vmPort || 80);
        const route = await d.ports.exposeHttp(vm, hostname, vmPort, d.limits(), actor);
        return { port: undefined, route };
      }
      const spec = exposeSpecOf(req);
      if (spec.hostPort < PRIVILEGED_BELOW && ctx.principal.role !== Role.ROLE_ADMIN) {
        throw denied(`host ports below ${PRIVILEGED_BELOW} need an admin (asked ${spec.hostPort})`);
      }
      const port = await d.ports.expose(vm, spec, d.limits(), actor, reserved);
      return { port, route: undefined };
    }),

    unexposePort: unary(d, "UnexposePort", async (req, ctx) => {
      const vm = await resolveVm(d.repo, { name: req.vm, id: "", owner: req.owner }, ctx.principal, "port.unexpose");
      const actor = { user: ctx.principal.user, peer: ctx.peer };
      if (req.httpHost) {
        await d.ports.unexposeHttp(vm, checkHostname("http_host", req.httpHost), actor);
        return {};
      }
      const { hostPort, protocol } = req.spec
        ? parseHostPortSpec(req.spec)
        : { hostPort: checkPort("host_port", req.hostPort), protocol: checkProtocol("protocol", req.protocol) };
      await d.ports.unexpose(vm, hostPort, protocol, actor);
      return {};
    }),

    listPorts: unary(d, "ListPorts", async (req, ctx) => {
      let mine: (x: { vmId: string; owner: string }) => boolean;
      if (req.vm) {
        const vm = await resolveVm(d.repo, { name: req.vm, id: "", owner: req.owner }, ctx.principal, "port.list");
        mine = (x) => x.vmId === vm.id;
      } else if (req.owner || ctx.principal.role !== Role.ROLE_ADMIN) {
        const owner = ownerFor(ctx.principal, req.owner);
        if (req.owner) checkName("owner", req.owner);
        allow(ctx.principal, "port.list", owner);
        mine = (x) => x.owner === owner;
      } else {
        allow(ctx.principal, "port.list");
        mine = () => true;
      }
      const [ports, routes, st] = await Promise.all([d.ports.listPorts(), d.ports.listRoutes(), statuses()]);
      const order = (a: PortMapping, b: PortMapping) => a.vmName.localeCompare(b.vmName) || a.protocol.localeCompare(b.protocol) || a.hostPort - b.hostPort;
      return decorate(ports.filter(mine).sort(order), routes.filter(mine).sort((a, b) => a.hostname.localeCompare(b.hostname)), st);
    }),
  };
}
