// Public surface of the Noid SDK.
export { connect, DEFAULT_DEADLINE_MS, DEFAULT_PORT, type ConnectOptions } from "./connect.js";
export { NoidClient, type OwnerOpt, type VmRef, type ExecOpts, type ExecResult, type SpawnOpts, type ExecSession, type ExecSignalName, type EventFilterOpts, type ConsoleSession } from "./client.js";
export {
  NoidApiError,
  isNoidApiError,
  isRetryable,
  statusName,
  toApiError,
  RETRYABLE,
  type CallKind,
  type StatusName,
} from "./errors.js";
export { backoffDelay, withRetry, DEFAULT_RETRY_POLICY, type RetryPolicy, type RetryDeps } from "./retry.js";
export { parseAddress, readCaFile, type TlsOptions } from "./channel.js";
export { fetchServerCa, fingerprintOf, normalizeFingerprint, type FetchedCa } from "./pin.js";
export { isSettled, phaseName, phaseOf } from "./phase.js";
// The generated message types the client returns, so integrators need one import.
export { Vm, VmSpec, VmStatus, VmPhase, VmEventType, VmDesiredState, WatchVmsResponse, HostLoss, HostLossPolicy } from "../gen/noid/v1/vm.js";
export { Host, HostState, HostPosture, HostUsage, UsageSample, PostureCheck, Resources, DrainHostResponse, CreateJoinTokenResponse, RemoveHostResponse } from "../gen/noid/v1/host.js";
export { Network } from "../gen/noid/v1/network.js";
export { Token, Role, CreateTokenResponse, RotateTokenResponse, WhoAmIResponse } from "../gen/noid/v1/auth.js";
export { AuditEvent, VerifyAuditChainResponse } from "../gen/noid/v1/audit.js";
export { Event } from "../gen/noid/v1/event.js";
export { Checkpoint } from "../gen/noid/v1/checkpoint.js";
export { PortMapping, HttpRoute, ListPortsResponse } from "../gen/noid/v1/port.js";
export { MigrateVmResponse } from "../gen/noid/v1/migration.js";
export { User, SshKey, LoginResponse, EnrollTotpResponse } from "../gen/noid/v1/user.js";
