// The authorization matrix: every RPC of every service in the generated code
// (so a new RPC without a row fails here) × role × acting on one's own
// resource or another user's, against a table written out by hand.
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { Role } from "../../gen/noid/v1/auth.js";
import { ANONYMOUS, METHOD_ACTIONS, authorize, type Principal } from "../../coordinator/auth/authorize.js";

/** Per role: own resource, another user's resource. "y" allowed, "n" denied. */
type Cell = "yy" | "yn" | "nn";
type Row = [admin: Cell, user: Cell, readOnly: Cell] | "anonymous";

const EXPECTED: Record<string, Row> = {
  "/noid.v1.VmService/CreateVm": ["yy", "yn", "nn"],
  "/noid.v1.VmService/GetVm": ["yy", "yn", "yn"],
  "/noid.v1.VmService/ListVms": ["yy", "yn", "yn"],
  "/noid.v1.VmService/DestroyVm": ["yy", "yn", "nn"],
  "/noid.v1.VmService/StartVm": ["yy", "yn", "nn"],
  "/noid.v1.VmService/StopVm": ["yy", "yn", "nn"],
  "/noid.v1.VmService/WatchVms": ["yy", "yn", "yn"],
  "/noid.v1.VmService/PauseVm": ["yy", "yn", "nn"],
  "/noid.v1.VmService/ResumeVm": ["yy", "yn", "nn"],
  "/noid.v1.VmService/RestartVm": ["yy", "yn", "nn"],
  "/noid.v1.ConsoleService/Console": ["yy", "yn", "nn"],
  "/noid.v1.ConsoleService/VmLogs": ["yy", "yn", "yn"],
  "/noid.v1.ConsoleService/HostLogs": ["yy", "nn", "nn"],
  "/noid.v1.ExecService/Exec": ["yy", "yn", "nn"],
  "/noid.v1.CheckpointService/CreateCheckpoint": ["yy", "yn", "nn"],
  "/noid.v1.CheckpointService/ListCheckpoints": ["yy", "yn", "yn"],
  "/noid.v1.CheckpointService/RestoreCheckpoint": ["yy", "yn", "nn"],
  "/noid.v1.PortService/ExposePort": ["yy", "yn", "nn"],
  "/noid.v1.PortService/UnexposePort": ["yy", "yn", "nn"],
  "/noid.v1.PortService/ListPorts": ["yy", "yn", "yn"],
  "/noid.v1.MigrationService/MigrateVm": ["yy", "yn", "nn"],
  "/noid.v1.HostService/ListHosts": ["yy", "yn", "yn"],
  "/noid.v1.HostService/GetHost": ["yy", "yn", "yn"],
  "/noid.v1.MeshService/GetHostMesh": ["yy", "nn", "nn"],
  "/noid.v1.HostService/CordonHost": ["yy", "nn", "nn"],
  "/noid.v1.HostService/UncordonHost": ["yy", "nn", "nn"],
  "/noid.v1.HostService/DrainHost": ["yy", "nn", "nn"],
  "/noid.v1.HostService/CreateJoinToken": ["yy", "nn", "nn"],
  "/noid.v1.HostService/RemoveHost": ["yy", "nn", "nn"],
  "/noid.v1.NetworkService/CreateNetwork": ["yy", "yn", "nn"],
  "/noid.v1.NetworkService/GetNetwork": ["yy", "yn", "yn"],
  "/noid.v1.NetworkService/ListNetworks": ["yy", "yn", "yn"],
  "/noid.v1.NetworkService/DeleteNetwork": ["yy", "yn", "nn"],
  "/noid.v1.AuthService/CreateToken": ["yy", "nn", "nn"],
  "/noid.v1.AuthService/ListTokens": ["yy", "yn", "yn"],
  "/noid.v1.AuthService/RevokeToken": ["yy", "yn", "nn"],
  "/noid.v1.AuthService/RotateToken": ["yy", "yn", "nn"],
  "/noid.v1.AuthService/WhoAmI": ["yy", "yn", "yn"],
  "/noid.v1.AuditService/ListAuditEvents": ["yy", "yn", "yn"],
  "/noid.v1.AuditService/VerifyAuditChain": ["yy", "nn", "nn"],
  "/noid.v1.EventService/ListEvents": ["yy", "yn", "yn"],
  "/noid.v1.EventService/WatchEvents": ["yy", "yn", "yn"],
  "/noid.v1.AgentService/RegisterHost": ["yy", "nn", "nn"],
  "/noid.v1.AgentService/Session": ["yy", "nn", "nn"],
  "/noid.v1.AgentService/JoinHost": "anonymous",
  "/noid.v1.AgentService/RenewCertificate": "anonymous",
  "/noid.v1.UserService/CreateUser": ["yy", "nn", "nn"],
  "/noid.v1.UserService/ListUsers": ["yy", "nn", "nn"],
  "/noid.v1.UserService/DeleteUser": ["yy", "nn", "nn"],
  "/noid.v1.UserService/SetPassword": ["yy", "yn", "yn"],
  "/noid.v1.UserService/RotatePassword": ["yy", "yn", "yn"],
  "/noid.v1.UserService/EnrollTotp": ["yy", "yn", "yn"],
  "/noid.v1.UserService/ConfirmTotp": ["yy", "yn", "yn"],
  "/noid.v1.UserService/Login": "anonymous",
  "/noid.v1.UserService/AddSshKey": ["yy", "yn", "nn"],
  "/noid.v1.UserService/ListSshKeys": ["yy", "yn", "yn"],
  "/noid.v1.UserService/RemoveSshKey": ["yy", "yn", "nn"],
};

/** Every RPC path in the generated *Service definitions (ts-proto, outputServices=grpc-js). */
async function generatedMethods(): Promise<string[]> {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "gen", "noid", "v1");
  const paths: string[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith(".ts"))) {
    const mod = (await import(pathToFileURL(join(dir, f)).href)) as Record<string, unknown>;
    for (const [name, def] of Object.entries(mod)) {
      if (!name.endsWith("Service") || typeof def !== "object" || def === null) continue;
      for (const m of Object.values(def as Record<string, { path?: unknown }>)) if (typeof m.path === "string") paths.push(m.path);
    }
  }
  return paths.sort();
}

const ROLES = [Role.ROLE_ADMIN, Role.ROLE_USER, Role.ROLE_READ_ONLY] as const;
const who = (role: Role): Principal => ({ user: "alice", role, tokenId: "t", tokenName: "t" });

describe("authorization matrix", async () => {
  const methods = await generatedMethods();

  it("covers every RPC of every generated service, and nothing else", () => {
    expect(methods.length).toBeGreaterThan(30);
    expect(Object.keys(EXPECTED).sort()).toEqual(methods);
    expect(Object.keys(METHOD_ACTIONS).sort()).toEqual(methods);
  });

  for (const method of methods) {
    it(`${method}`, () => {
      const row = EXPECTED[method];
      const action = METHOD_ACTIONS[method];
      if (row === "anonymous" || action === ANONYMOUS) {
        expect([row, action]).toEqual(["anonymous", ANONYMOUS]);
        return;
      }
      expect(row, `no expected row for ${method}`).toBeDefined();
      expect(action, `no action for ${method}`).toBeDefined();
      const got = ROLES.map((role) => {
        const own = authorize(who(role), action!, "alice").allowed ? "y" : "n";
        const other = authorize(who(role), action!, "bob").allowed ? "y" : "n";
        return own + other;
      });
      expect(got).toEqual(row);
      // An unknown role may do nothing; self-service needs the owner named.
      expect(authorize(who(Role.ROLE_UNSPECIFIED), action!, "alice").allowed).toBe(false);
    });
  }

  it("does not allow self-service actions when no owner is named", () => {
    expect(authorize(who(Role.ROLE_USER), "user.set_password").allowed).toBe(false);
    expect(authorize(who(Role.ROLE_ADMIN), "user.set_password").allowed).toBe(true);
  });
});
