// NetworkService: tenant networks arrive with the network capability (issue 4).
// Until then every call answers UNIMPLEMENTED after authenticating, so clients
// see the real API surface and a clear answer.
import type { NetworkServiceServer } from "../../gen/noid/v1/network.js";
import { NoidError } from "../../common/errors.js";
import { unary, type HandlerDeps } from "../grpc/handler.js";

const notYet = (what: string) => async (): Promise<never> => {
  throw new NoidError("UNIMPLEMENTED", `${what}: tenant networks are not implemented yet; every VM uses its owner's default network`);
};

export function networkService(d: HandlerDeps): NetworkServiceServer {
  return {
    createNetwork: unary(d, "CreateNetwork", notYet("creating a network")),
    getNetwork: unary(d, "GetNetwork", notYet("getting a network")),
    listNetworks: unary(d, "ListNetworks", notYet("listing networks")),
    deleteNetwork: unary(d, "DeleteNetwork", notYet("deleting a network")),
  };
}
