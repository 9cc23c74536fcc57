// Who may do what: the Noid security model's role table, as one pure function.
//
// | Role      | Create | Destroy/Start/Stop | Exec/Checkpoint | List/Get          |
// (exec: "vm.exec")
// | admin     | yes    | any VM             | any VM          | all               |
// | user      | yes    | own only           | own only        | own only          |
// | read-only | no     | no                 | no              | yes (own only)    |
// Hosts: everyone may list (a user sees names and state, not others' VMs);
// cordon/drain and tokens of others are admin only.
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
  | "host.list"
  | "host.get"
  | "host.cordon"
  | "host.uncordon"
  | "host.drain"
  | "network.create"
  | "network.get"
  | "network.list"
  | "network.delete"
  | "token.create"
  | "token.list"
  | "token.revoke"
  | "token.rotate"
  | "audit.list"
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
  "host.list",
  "host.get",
  "network.get",
  "network.list",
  "token.list",
  "whoami",
]);

const USER_WRITES: ReadonlySet<Action> = new Set([
  "vm.create",
  "vm.exec",
  "vm.destroy",
  "vm.start",
  "vm.stop",
  "network.create",
  "network.delete",
  "token.revoke",
  "token.rotate",
]);

export type Verdict = { allowed: true } | { allowed: false; reason: string };

/**
 * `owner` is the owner of the resource acted on, when there is one. A
 * non-admin acting on someone else's resource is denied; callers turn that
 * into NOT_FOUND where existence itself must not leak.
 */
export function authorize(p: Principal, action: Action, owner?: string): Verdict {
  if (p.role === Role.ROLE_ADMIN) return { allowed: true };
  if (owner !== undefined && owner !== p.user) {
    return { allowed: false, reason: `${roleName(p.role)} ${p.user} may not act on resources of another user` };
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
