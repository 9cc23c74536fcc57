// connect(): the one way to get a NoidClient. All five service clients share a
// single channel (one HTTP/2 connection to the coordinator).
import { ConsoleServiceClient } from "../gen/noid/v1/console.js";
import { MeshServiceClient } from "../gen/noid/v1/mesh.js";
import { AuditServiceClient } from "../gen/noid/v1/audit.js";
import { EventServiceClient } from "../gen/noid/v1/event.js";
import { AuthServiceClient } from "../gen/noid/v1/auth.js";
import { HostServiceClient } from "../gen/noid/v1/host.js";
import { NetworkServiceClient } from "../gen/noid/v1/network.js";
import { VmServiceClient } from "../gen/noid/v1/vm.js";
import { ExecServiceClient } from "../gen/noid/v1/exec.js";
import { CheckpointServiceClient } from "../gen/noid/v1/checkpoint.js";
import { PortServiceClient } from "../gen/noid/v1/port.js";
import { MigrationServiceClient } from "../gen/noid/v1/migration.js";
import { UserServiceClient } from "../gen/noid/v1/user.js";
import { channelSpec, type TlsOptions } from "./channel.js";
import { NoidClient } from "./client.js";
import { NoidApiError } from "./errors.js";
import { DEFAULT_RETRY_POLICY, type RetryDeps } from "./retry.js";

export const DEFAULT_PORT = 7654;
export const DEFAULT_DEADLINE_MS = 10_000;

export interface ConnectOptions {
  /** "host:port", "unix:/abs/path", or several replicas "a:7654,b:7654" (one at a time; the next on failure). */
  address: string;
  /** 64-hex API token, sent as `authorization: Bearer <token>`. */
  token?: string;
  tls?: TlsOptions;
  /** Plaintext, for loopback and unix sockets only. */
  insecure?: boolean;
  /** Deadline of each unary attempt. */
  deadlineMs?: number;
  /** Retries after the first attempt, for failures the classification table allows. */
  retries?: number;
  /** Backoff tuning and hooks; the defaults suit interactive use. */
  backoff?: { baseDelayMs?: number; maxDelayMs?: number } & RetryDeps;
}

const TOKEN = /^[0-9a-f]{64}$/;

export function connect(opts: ConnectOptions): NoidClient {
  // A malformed token would only earn UNAUTHENTICATED later; say so now, without echoing it.
  if (opts.token !== undefined && opts.token !== "" && !TOKEN.test(opts.token)) {
    throw new NoidApiError("INVALID_ARGUMENT", "token must be 64 lower-case hex characters");
  }
  const deadlineMs = opts.deadlineMs ?? DEFAULT_DEADLINE_MS;
  const retries = opts.retries ?? DEFAULT_RETRY_POLICY.retries;
  if (!(deadlineMs > 0)) throw new NoidApiError("INVALID_ARGUMENT", "deadlineMs must be positive");
  if (!Number.isInteger(retries) || retries < 0) throw new NoidApiError("INVALID_ARGUMENT", "retries must be a non-negative integer");

  const spec = channelSpec(opts);
  const vm = new VmServiceClient(spec.target, spec.credentials, spec.options);
  const shared = { ...spec.options, channelOverride: vm.getChannel() };
  const { baseDelayMs, maxDelayMs, ...retryDeps } = opts.backoff ?? {};
  return new NoidClient(
    {
      vm,
      host: new HostServiceClient(spec.target, spec.credentials, shared),
      network: new NetworkServiceClient(spec.target, spec.credentials, shared),
      auth: new AuthServiceClient(spec.target, spec.credentials, shared),
      audit: new AuditServiceClient(spec.target, spec.credentials, shared),
      exec: new ExecServiceClient(spec.target, spec.credentials, shared),
      checkpoint: new CheckpointServiceClient(spec.target, spec.credentials, shared),
      migration: new MigrationServiceClient(spec.target, spec.credentials, shared),
      user: new UserServiceClient(spec.target, spec.credentials, shared),
      event: new EventServiceClient(spec.target, spec.credentials, shared),
      mesh: new MeshServiceClient(spec.target, spec.credentials, shared),
      port: new PortServiceClient(spec.target, spec.credentials, shared),
      console: new ConsoleServiceClient(spec.target, spec.credentials, shared),
    },
    {
      ...(opts.token ? { token: opts.token } : {}),
      deadlineMs,
      policy: {
        retries,
        baseDelayMs: baseDelayMs ?? DEFAULT_RETRY_POLICY.baseDelayMs,
        maxDelayMs: maxDelayMs ?? DEFAULT_RETRY_POLICY.maxDelayMs,
      },
      retryDeps,
    },
  );
}
