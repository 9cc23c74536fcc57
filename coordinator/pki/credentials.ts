// gRPC server credentials for the coordinator. grpc-js's createSsl() passes
// no minimum protocol version and either requires a client certificate from
// every caller or asks none; we need TLS >= 1.2 and an *optional* client
// certificate (agents present one, API clients use bearer tokens). So this
// subclasses grpc-js's ServerCredentials (its public constructor takes the
// node http2/tls server options) with:
//   minVersion "TLSv1.2"  - node refuses older handshakes
//   requestCert true, rejectUnauthorized false - a client certificate is
//     asked for and verified against the cluster CA; grpc-js exposes it in
//     call.getAuthContext().sslPeerCertificate only when it verified
//     (socket.authorized), so an unverified certificate is never seen as an
//     identity.
import type { SecureContextOptions } from "node:tls";
import * as grpc from "@grpc/grpc-js";

export const MIN_TLS_VERSION = "TLSv1.2" as const;

class NoidServerCredentials extends grpc.ServerCredentials {
  constructor(context: SecureContextOptions) {
    super({ requestCert: true, rejectUnauthorized: false, minVersion: MIN_TLS_VERSION }, { ...context, minVersion: MIN_TLS_VERSION });
  }

  _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

/**
 * TLS server credentials: `certChainPem` (server certificate first) and its
 * key; client certificates are verified against `clientCaPem`.
 */
export function tlsServerCredentials(o: { certChainPem: string; keyPem: string; clientCaPem: string }): grpc.ServerCredentials {
  return new NoidServerCredentials({ cert: o.certChainPem, key: o.keyPem, ca: o.clientCaPem });
}
