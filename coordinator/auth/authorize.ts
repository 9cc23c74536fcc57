// Who may do what: the Noid security model's role table, as one pure function.
//
// | Role      | Create | Destroy/Start/Stop | Exec/Checkpoint | List/Get          |
// (exec: "vm.exec"; checkpoint: "vm.checkpoint", "vm.restore"; listing checkpoints is a read;
// ports: "port.expose"/"port.unexpose" like exec, "port.list" a read; host ports below 1024
// are admin only, checked in the port service)
// pause/resume/restart and the interactive console count as start/stop; a VM's logs are a
// read; a host's agent logs are admin only)
// migrate: "vm.migrate", the owner may move a VM to a host like they may pin it to one)
// | admin     | yes    | any VM             | any VM          | all               |
// | user      | yes    | own only           | own only        | own only          |
// | read-only | no     | no                 | no              | yes (own only)    |
// Hosts: everyone may list (a user sees names and state, not others' VMs);
// cordon/drain and tokens of others are admin only.
// Users: creating, listing and deleting users is admin only; every role may
// change its own password, rotate it and enroll 2FA (self-service). SSH keys
// are managed by users for themselves. Verifying the audit chain is admin
// only; everyone may read their own audit events. Events: admins see all,
// every other role sees those of its own VMs (filtered in the event log).
// Login is anonymous.
import { Role } from "../../gen/noid/v1/auth.js";

export type Action =
  | "vm.create"
  | "vm.get"
  | "vm.list"
  | "vm.destroy"
  | "vm.start"
  | "vm.stop"
  | "vm.watch"
  | "vm.exec"
  | "vm.checkpoint"
  | "vm.checkpoint.list"
  | "vm.restore"
  | "port.expose"
  | "port.unexpose"
  | "port.list"
  | "vm.pause"
  | "vm.resume"
  | "vm.restart"
  | "vm.console"
  | "vm.logs"
  | "host.logs"
  | "vm.migrate"
  | "host.list"
  | "host.get"
  | "host.mesh"
  | "host.cordon"
  | "host.uncordon"
  | "host.drain"
  | "host.join_token"
  | "host.remove"
  | "network.create"
  | "network.get"
  | "network.list"
  | "network.delete"
  | "token.create"
  | "token.list"
  | "token.revoke"
  | "token.rotate"
  | "audit.list"
  | "audit.verify"
  | "event.list"
  | "event.watch"
  | "user.create"
  | "user.list"
  | "user.delete"
  | "user.set_password"
  | "user.rotate_password"
  | "user.enroll_totp"
  | "user.confirm_totp"
  | "sshkey.add"
  | "sshkey.list"
  | "sshkey.remove"
  | "agent.register"
  | "agent.session"
  | "whoami";

export interface Principal {
  user: string;
  role: Role;
  tokenId: string;
  tokenName: string;
}

const READS: ReadonlySet<Action> = new Set([
  "vm.get",
  "vm.list",
  "vm.watch",
  "vm.checkpoint.list",
  "port.list",
  "vm.logs",
  "host.list",
  "host.get",
  "network.get",
  "network.list",
  "token.list",
  "audit.list",
  "event.list",
  "event.watch",
  "sshkey.list",
  "whoami",
]);

/** Any role may do these to itself (owner = the caller), never to others. */
const SELF_SERVICE: ReadonlySet<Action> = new Set([
  "user.set_password",
  "user.rotate_password",
  "user.enroll_totp",
  "user.confirm_totp",
]);

const USER_WRITES: ReadonlySet<Action> = new Set([
  "vm.create",
  "vm.exec",
  "vm.checkpoint",
  "vm.restore",
  "port.expose",
  "port.unexpose",
  "vm.migrate",
  "vm.destroy",
  "vm.start",
  "vm.stop",
  "vm.pause",
  "vm.resume",
  "vm.restart",
  "vm.console",
  "network.create",
  "network.delete",
  "token.revoke",
  "token.rotate",
  "sshkey.add",
  "sshkey.remove",
]);

export type Verdict = { allowed: true } | { allowed: false; reason: string };

/**
 * `owner` is the owner of the resource acted on, when there is one. A
 * non-admin acting on someone else's resource is denied; callers turn that
 * into NOT_FOUND where existence itself must not leak.
 */
export function authorize(p: Principal, action: Action, owner?: string): Verdict {
  if (p.role === Role.ROLE_ADMIN) return { allowed: true };
  // A role this table does not know (a record from a newer version, a bug) may do nothing.
  if (p.role !== Role.ROLE_USER && p.role !== Role.ROLE_READ_ONLY) return { allowed: false, reason: `unknown role ${p.role}` };
  if (owner !== undefined && owner !== p.user) {
    return { allowed: false, reason: `${roleName(p.role)} ${p.user} may not act on resources of another user` };
  }
  if (SELF_SERVICE.has(action)) {
    return owner === p.user ? { allowed: true } : { allowed: false, reason: `${roleName(p.role)} ${p.user} may only ${action} for itself` };
  }
  if (READS.has(action)) return { allowed: true };
  if (p.role === Role.ROLE_USER && USER_WRITES.has(action)) return { allowed: true };
  return { allowed: false, reason: `role ${roleName(p.role)} may not ${action}` };
}

export function roleName(r: Role): string {
  switch (r) {
    case Role.ROLE_ADMIN:
      return "admin";
    case Role.ROLE_USER:
      return "user";
    case Role.ROLE_READ_ONLY:
      return "read-only";
    default:
      return "unknown";
  }
}

/** Marks an RPC that runs without a principal (its handler uses `anonymous`, not `unary`). */
export const ANONYMOUS = "anonymous" as const;

/**
 * The action each RPC is authorized as, by full gRPC path. The matrix test
 * (test/unit/authorize-matrix.test.ts) enumerates the generated service
 * definitions and fails for an RPC missing here, so none can be forgotten.
 */
export const METHOD_ACTIONS: Readonly<Record<string, Action | typeof ANONYMOUS>> = {
  "/noid.v1.VmService/CreateVm": "vm.create",
  "/noid.v1.VmService/GetVm": "vm.get",
  "/noid.v1.VmService/ListVms": "vm.list",
  "/noid.v1.VmService/DestroyVm": "vm.destroy",
  "/noid.v1.VmService/StartVm": "vm.start",
  "/noid.v1.VmService/StopVm": "vm.stop",
  "/noid.v1.VmService/WatchVms": "vm.watch",
  "/noid.v1.VmService/PauseVm": "vm.pause",
  "/noid.v1.VmService/ResumeVm": "vm.resume",
  "/noid.v1.VmService/RestartVm": "vm.restart",
  "/noid.v1.ConsoleService/Console": "vm.console",
  "/noid.v1.ConsoleService/VmLogs": "vm.logs",
  "/noid.v1.ConsoleService/HostLogs": "host.logs",
  "/noid.v1.ExecService/Exec": "vm.exec",
  "/noid.v1.CheckpointService/CreateCheckpoint": "vm.checkpoint",
  "/noid.v1.CheckpointService/ListCheckpoints": "vm.checkpoint.list",
  "/noid.v1.CheckpointService/RestoreCheckpoint": "vm.restore",
  "/noid.v1.PortService/ExposePort": "port.expose",
  "/noid.v1.PortService/UnexposePort": "port.unexpose",
  "/noid.v1.PortService/ListPorts": "port.list",
  "/noid.v1.MigrationService/MigrateVm": "vm.migrate",
  "/noid.v1.HostService/ListHosts": "host.list",
  "/noid.v1.HostService/GetHost": "host.get",
  "/noid.v1.MeshService/GetHostMesh": "host.mesh",
  "/noid.v1.HostService/CordonHost": "host.cordon",
  "/noid.v1.HostService/UncordonHost": "host.uncordon",
  "/noid.v1.HostService/DrainHost": "host.drain",
  "/noid.v1.HostService/CreateJoinToken": "host.join_token",
  "/noid.v1.HostService/RemoveHost": "host.remove",
  "/noid.v1.NetworkService/CreateNetwork": "network.create",
  "/noid.v1.NetworkService/GetNetwork": "network.get",
  "/noid.v1.NetworkService/ListNetworks": "network.list",
  "/noid.v1.NetworkService/DeleteNetwork": "network.delete",
  "/noid.v1.AuthService/CreateToken": "token.create",
  "/noid.v1.AuthService/ListTokens": "token.list",
  "/noid.v1.AuthService/RevokeToken": "token.revoke",
  "/noid.v1.AuthService/RotateToken": "token.rotate",
  "/noid.v1.AuthService/WhoAmI": "whoami",
  "/noid.v1.AuditService/ListAuditEvents": "audit.list",
  "/noid.v1.AuditService/VerifyAuditChain": "audit.verify",
  "/noid.v1.EventService/ListEvents": "event.list",
  "/noid.v1.EventService/WatchEvents": "event.watch",
  "/noid.v1.AgentService/RegisterHost": "agent.register",
  "/noid.v1.AgentService/Session": "agent.session",
  // Not token-authenticated: JoinHost's credential is the one-time join token,
  // RenewCertificate's the host's client certificate (coordinator/services/agent-service.ts).
  "/noid.v1.AgentService/JoinHost": ANONYMOUS,
  "/noid.v1.AgentService/RenewCertificate": ANONYMOUS,
  "/noid.v1.UserService/CreateUser": "user.create",
  "/noid.v1.UserService/ListUsers": "user.list",
  "/noid.v1.UserService/DeleteUser": "user.delete",
  "/noid.v1.UserService/SetPassword": "user.set_password",
  "/noid.v1.UserService/RotatePassword": "user.rotate_password",
  "/noid.v1.UserService/EnrollTotp": "user.enroll_totp",
  "/noid.v1.UserService/ConfirmTotp": "user.confirm_totp",
  "/noid.v1.UserService/Login": ANONYMOUS,
  "/noid.v1.UserService/AddSshKey": "sshkey.add",
  "/noid.v1.UserService/ListSshKeys": "sshkey.list",
  "/noid.v1.UserService/RemoveSshKey": "sshkey.remove",
};
