// NetworkService: tenant networks, per owner. Users see and change only their
// own; admins may name any owner. A user's "default" network appears on first
// use (listing their networks, or creating a VM).
import type { Network, NetworkServiceServer } from "../../gen/noid/v1/network.js";
import { Role } from "../../gen/noid/v1/auth.js";
import { denied, notFound } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { authorize, type Action, type Principal } from "../auth/authorize.js";
import { unary, type CallContext, type HandlerDeps } from "../grpc/handler.js";
import type { NetworkRepo } from "../networks/network-repo.js";
import { DEFAULT_NETWORK, checkNetworkName, validateCreate } from "../networks/validate.js";

export interface NetworkServiceDeps extends HandlerDeps {
  networks: NetworkRepo;
}

function allow(p: Principal, action: Action, owner?: string): void {
  const v = authorize(p, action, owner);
  if (!v.allowed) throw denied(v.reason);
}

/** Only admins may name another owner; everyone else acts as themself. */
function ownerFor(p: Principal, requested: string): string {
  if (!requested) return p.user;
  checkName("owner", requested);
  if (requested !== p.user && p.role !== Role.ROLE_ADMIN) throw denied("only admins may act on networks of another user");
  return requested;
}

const byName = (a: Network, b: Network) => (a.owner === b.owner ? a.name.localeCompare(b.name) : a.owner.localeCompare(b.owner));

export function networkService(d: NetworkServiceDeps): NetworkServiceServer {
  const actor = (ctx: CallContext) => ({ user: ctx.principal.user, peer: ctx.peer });

  /** A user's own default network is created when they first look for it (if they may create VMs at all). */
  const lazyDefault = (owner: string, ctx: CallContext) => owner === ctx.principal.user && authorize(ctx.principal, "vm.create").allowed;

  async function find(owner: string, name: string, ctx: CallContext): Promise<Network> {
    if (name === DEFAULT_NETWORK && lazyDefault(owner, ctx)) {
      return d.networks.withUsage((await d.networks.ensureDefault(owner, actor(ctx))).network);
    }
    const n = await d.networks.byName(owner, name);
    if (!n) throw notFound(`network "${name}" of user ${owner}`);
    return d.networks.withUsage(n.network);
  }

  return {
    createNetwork: unary(d, "CreateNetwork", async (req, ctx) => {
      const owner = ownerFor(ctx.principal, req.owner);
      allow(ctx.principal, "network.create", owner);
      const input = validateCreate(req);
      return { network: await d.networks.create(owner, input, actor(ctx)) };
    }),

    getNetwork: unary(d, "GetNetwork", async (req, ctx) => {
      const owner = ownerFor(ctx.principal, req.owner);
      allow(ctx.principal, "network.get", owner);
      return { network: await find(owner, checkNetworkName("name", req.name), ctx) };
    }),

    listNetworks: unary(d, "ListNetworks", async (req, ctx) => {
      allow(ctx.principal, "network.list");
      // An admin without an owner sees everyone's networks.
      if (!req.owner && ctx.principal.role === Role.ROLE_ADMIN) return { networks: (await d.networks.listAll()).sort(byName) };
      const owner = ownerFor(ctx.principal, req.owner);
      if (lazyDefault(owner, ctx)) await d.networks.ensureDefault(owner, actor(ctx));
      return { networks: (await d.networks.listOwner(owner)).sort(byName) };
    }),

    deleteNetwork: unary(d, "DeleteNetwork", async (req, ctx) => {
      const owner = ownerFor(ctx.principal, req.owner);
      allow(ctx.principal, "network.delete", owner);
      await d.networks.delete(owner, checkNetworkName("name", req.name), actor(ctx));
      return {};
    }),
  };
}
