// MeshService: what one host's share of the mesh is, from the same snapshot the coordinator
// sends that host's agent (noidctl mesh show HOST computes the links, peers and FDB entries
// from it with the agent's own pure functions).
import type { MeshServiceServer } from "../../gen/noid/v1/mesh.js";
import { denied, notFound } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { authorize } from "../auth/authorize.js";
import { unary, type HandlerDeps } from "../grpc/handler.js";
import type { ClusterState } from "../state/cluster.js";

export interface MeshServiceDeps extends HandlerDeps {
  cluster: ClusterState;
  meshPrefixLen: number;
}

export function meshService(d: MeshServiceDeps): MeshServiceServer {
  return {
    getHostMesh: unary(d, "GetHostMesh", async (req, ctx) => {
      const v = authorize(ctx.principal, "host.mesh");
      if (!v.allowed) throw denied(v.reason);
      checkName("host", req.host);
      const h = d.cluster.hostByName(req.host);
      if (!h) throw notFound(`host "${req.host}"`);
      return { hostId: h.id, snapshot: d.cluster.meshFor(h.id, d.meshPrefixLen) };
    }),
  };
}
