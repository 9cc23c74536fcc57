// Turns connect() options into a grpc-js target, channel credentials and
// channel options. The token is not part of the channel: it travels as
// per-call metadata, because grpc-js refuses call credentials on a plaintext
// channel and `--insecure` is a supported (local) mode.
import { readFileSync } from "node:fs";
import { credentials, type ChannelCredentials, type ChannelOptions } from "@grpc/grpc-js";
import { NoidApiError } from "./errors.js";
import { coordinatorTarget, splitAddresses } from "./targets.js";

export interface TlsOptions {
  /** PEM of the CA that signed the coordinator's certificate; the system roots when absent. */
  caPem?: string | Buffer;
  /** Name to check the certificate against when it differs from the address's host. */
  serverName?: string;
}

export interface ChannelSpec {
  target: string;
  credentials: ChannelCredentials;
  options: ChannelOptions;
}

/**
 * Checks an address: "host:port", "[v6]:port" or "unix:/abs/path". The unix
 * form is passed to grpc-js as is (it understands it); host:port needs a port
 * so that a typo does not silently go to 443.
 */
export function parseAddress(address: string): string {
  const a = address.trim();
  if (a.startsWith("unix:")) {
    const path = a.slice("unix:".length);
    if (!path.startsWith("/")) throw new NoidApiError("INVALID_ARGUMENT", `address "${address}": unix socket path must be absolute`);
    return a;
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(a);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) {
    throw new NoidApiError("INVALID_ARGUMENT", `address "${address}" must be host:port or unix:/absolute/path`);
  }
  return a;
}

export function channelSpec(opts: { address: string; insecure?: boolean; tls?: TlsOptions }): ChannelSpec {
  // "a:7654,b:7654": several coordinator replicas on one channel (see targets.ts).
  const several = splitAddresses(opts.address).length > 1;
  const multi = several ? coordinatorTarget(opts.address) : undefined;
  const target = multi ? multi.target : parseAddress(opts.address);
  const options: ChannelOptions = { ...multi?.options };
  if (opts.insecure === true) return { target, credentials: credentials.createInsecure(), options };
  const ca = opts.tls?.caPem;
  const creds = credentials.createSsl(ca === undefined ? null : Buffer.from(ca));
  if (opts.tls?.serverName) {
    options["grpc.ssl_target_name_override"] = opts.tls.serverName;
    options["grpc.default_authority"] = opts.tls.serverName;
  }
  return { target, credentials: creds, options };
}

/** Reads a CA file for TlsOptions.caPem, with an error that names the file. */
export function readCaFile(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new NoidApiError("INVALID_ARGUMENT", `reading CA file ${path}: ${(e as Error).message}`, { cause: e });
  }
}
