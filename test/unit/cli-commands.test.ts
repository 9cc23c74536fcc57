// noidctl end to end in-process: real commander parsing, real SDK, a real
// grpc-js server on a random port standing in for the coordinator, and a real
// config file in a temp dir.
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials, status, type ServerUnaryCall } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { run } from "../../cli/program.js";
import { AuthServiceService, Role, type AuthServiceServer, type CreateTokenRequest } from "../../gen/noid/v1/auth.js";
import {
  Vm,
  VmEventType,
  VmPhase,
  VmServiceService,
  type CreateVmRequest,
  type ListVmsRequest,
  type VmServiceServer,
} from "../../gen/noid/v1/vm.js";

const GOOD = "0123456789abcdef".repeat(4);
const OTHER = "f".repeat(64);
const SECRET = "5e".repeat(32);

const seen = {
  creates: [] as CreateVmRequest[],
  lists: [] as ListVmsRequest[],
  tokens: [] as CreateTokenRequest[],
  auth: [] as string[],
};

/** Admin "alice" with GOOD, user "bob" with OTHER, everything else UNAUTHENTICATED. */
function caller(call: { metadata: ServerUnaryCall<unknown, unknown>["metadata"] }): { user: string; role: Role } | undefined {
  const h = String(call.metadata.get("authorization")[0] ?? "");
  seen.auth.push(h);
  if (h === `Bearer ${GOOD}`) return { user: "alice", role: Role.ROLE_ADMIN };
  if (h === `Bearer ${OTHER}`) return { user: "bob", role: Role.ROLE_USER };
  return undefined;
}

const unauth = { code: status.UNAUTHENTICATED, details: "missing or invalid token" };

const sample = (name: string, phase: VmPhase): Vm =>
  Vm.fromPartial({ id: `id-${name}`, name, owner: "alice", spec: { vcpus: 1, memoryMb: 512 }, status: { phase } });

const vmImpl: VmServiceServer = {
  createVm: (call, cb) => {
    if (!caller(call)) return cb(unauth);
    seen.creates.push(call.request);
    // A pinned VM comes back placed on its host, as the leader places at create.
    const vm = sample(call.request.name, VmPhase.VM_PHASE_PENDING);
    const host = call.request.spec?.host ?? "";
    cb(null, { vm: { ...vm, spec: call.request.spec, status: { ...vm.status!, hostName: host, hostId: host ? `id-${host}` : "" } } });
  },
  getVm: (call, cb) => {
    if (!caller(call)) return cb(unauth);
    if (call.request.name !== "web") return cb({ code: status.NOT_FOUND, details: `vm ${call.request.name} not found` });
    cb(null, { vm: sample("web", VmPhase.VM_PHASE_RUNNING) });
  },
  listVms: (call, cb) => {
    if (!caller(call)) return cb(unauth);
    seen.lists.push(call.request);
    cb(null, { vms: [sample("web", VmPhase.VM_PHASE_RUNNING), sample("api", VmPhase.VM_PHASE_PENDING)] });
  },
  destroyVm: (call, cb) => cb(null, { vm: sample(call.request.name, VmPhase.VM_PHASE_DESTROYING) }),
  startVm: (_c, cb) => cb({ code: status.UNIMPLEMENTED }),
  stopVm: (_c, cb) => cb({ code: status.UNIMPLEMENTED }),
  pauseVm: (_c, cb) => cb({ code: status.UNIMPLEMENTED }),
  resumeVm: (_c, cb) => cb({ code: status.UNIMPLEMENTED }),
  restartVm: (_c, cb) => cb({ code: status.UNIMPLEMENTED }),
  watchVms: (call) => {
    const name = call.request.name || "web";
    call.write({ type: VmEventType.VM_EVENT_TYPE_SNAPSHOT, vm: sample(name, VmPhase.VM_PHASE_PENDING) });
    setTimeout(() => {
      if (!call.cancelled) call.write({ type: VmEventType.VM_EVENT_TYPE_PUT, vm: { ...sample(name, VmPhase.VM_PHASE_RUNNING), status: { phase: VmPhase.VM_PHASE_RUNNING, hostName: "hv-1", ip: "10.0.0.5", hostId: "", reason: "", mac: "", updatedAt: undefined, networkId: "", networkCidr: "", gateway: "", restartPending: false, migrationId: "", migrationSha256: "" } } });
    }, 30);
  },
};

const authImpl: AuthServiceServer = {
  whoAmI: (call, cb) => {
    const who = caller(call);
    if (!who) return cb(unauth);
    cb(null, { user: who.user, role: who.role, tokenName: "t1" });
  },
  createToken: (call, cb) => {
    if (!caller(call)) return cb(unauth);
    seen.tokens.push(call.request);
    cb(null, {
      token: { id: "tk1", name: call.request.name, user: call.request.user || call.request.name, role: call.request.role, createdAt: new Date(), expiresAt: undefined, session: false },
      secret: SECRET,
    });
  },
  listTokens: (_c, cb) => cb(null, { tokens: [] }),
  revokeToken: (_c, cb) => cb(null, {}),
  rotateToken: (_c, cb) => cb({ code: status.UNIMPLEMENTED }),
};

let server: Server;
let addr = "";
let dir = "";
let cfgPath = "";

beforeAll(async () => {
  server = new Server();
  server.addService(VmServiceService, vmImpl);
  server.addService(AuthServiceService, authImpl);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  addr = `127.0.0.1:${port}`;
});
afterAll(() => server?.forceShutdown());

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "noid-cli-cmd-"));
  cfgPath = join(dir, "home", ".noid", "config.toml");
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
  seen.creates = [];
  seen.lists = [];
  seen.tokens = [];
  seen.auth = [];
});

async function cli(args: string[], opts: { env?: Record<string, string>; stdin?: string } = {}) {
  let stdout = "";
  let stderr = "";
  const code = await run(args, {
    env: { HOME: join(dir, "home"), NOID_CONFIG: cfgPath, ...opts.env },
    io: {
      stdout: (s) => void (stdout += s),
      stderr: (s) => void (stderr += s),
      readStdin: async () => opts.stdin ?? "",
      isTTY: false,
      cwd: dir,
    },
    now: () => new Date("2025-01-15T10:30:00Z"),
  });
  return { code, stdout, stderr };
}

async function setup(token = GOOD) {
  return cli(["auth", "setup", "--server", addr, "--insecure", "--context", "local", "--token-stdin"], { stdin: `${token}\n` });
}

describe("auth setup", () => {
  it("checks the token, writes the context 0600 and makes it current, without printing the token", async () => {
    const r = await setup();
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(r.stdout).toBe(`context "local" saved and made current: alice (admin) at ${addr}; plaintext (insecure)\n`);
    expect(statSync(cfgPath).mode & 0o777).toBe(0o600);
    const text = readFileSync(cfgPath, "utf8");
    expect(text).toContain('current_context = "local"');
    expect(text).toContain(GOOD);
    expect(text).toContain("insecure = true");

    const ctx = await cli(["context", "list"]);
    expect(ctx.stdout).toContain(addr);
    expect(ctx.stdout).not.toContain(GOOD);
  });

  it("rejects a token the coordinator does not know, with a hint, and saves nothing", async () => {
    const r = await setup("9".repeat(64));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: missing or invalid token \(run `noidctl auth setup/);
    expect(r.stderr.split("\n").filter(Boolean)).toHaveLength(1);
    expect(existsSync(cfgPath)).toBe(false);
  });
});

describe("commands against the coordinator", () => {
  it("list: an admin sees their own VMs by default, everyone's with --all-users", async () => {
    await setup();
    const r = await cli(["list", "-o", "json"]);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as Array<{ name: string }>).map((v) => v.name)).toEqual(["api", "web"]);
    expect(seen.lists.at(-1)).toEqual({ owner: "alice", host: "" });
    await cli(["list", "--all-users"]);
    expect(seen.lists.at(-1)).toEqual({ owner: "", host: "" });
  });

  it("create sends the spec built from flags", async () => {
    await setup();
    const r = await cli(["create", "web", "--vcpus", "2", "--memory", "1024", "--label", "tier=web", "--host-label", "zone=a"]);
    expect(r).toMatchObject({ code: 0, stdout: "vm/web created (PENDING)\n" });
    expect(seen.creates[0]?.spec).toMatchObject({ vcpus: 2, memoryMb: 1024, diskGb: 1, labels: { tier: "web" }, hostSelector: { zone: "a" } });
    // Placed in its create: the answer says where.
    expect(await cli(["create", "db", "--host", "hv-1"])).toMatchObject({ code: 0, stdout: "vm/db created on hv-1 (PENDING)\n" });
  });

  it("create --wait follows the VM until it runs", async () => {
    await setup();
    const r = await cli(["create", "web", "--wait"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("vm/web RUNNING on hv-1 ip 10.0.0.5\n");
    expect(r.stderr).toContain("RUNNING");
  });

  it("list --watch streams events until the signal aborts", async () => {
    await setup();
    const ac = new AbortController();
    let out = "";
    const code = await run(["list", "--watch", "--all-users"], {
      env: { HOME: join(dir, "home"), NOID_CONFIG: cfgPath },
      io: {
        stdout: (s) => {
          out += s;
          if (out.includes("RUNNING")) ac.abort(); // the PUT after the snapshot
        },
        stderr: () => {},
        readStdin: async () => "",
        isTTY: false,
        cwd: dir,
      },
      signal: ac.signal,
    });
    expect(code).toBe(0);
    const lines = out.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^EVENT\s+NAME\s+STATE/);
    expect(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 3).join(" "))).toEqual(["SNAPSHOT web PENDING", "PUT web RUNNING"]);
  });

  it("API errors are one line and exit 1", async () => {
    await setup();
    const r = await cli(["info", "nope"]);
    expect(r).toEqual({ code: 1, stdout: "", stderr: "error: vm nope not found\n" });
  });

  it("usage errors exit 2", async () => {
    await setup();
    expect((await cli(["create", "web", "--vcpus", "0"])).code).toBe(2);
    expect((await cli(["create"])).code).toBe(2);
    expect((await cli(["--context", "nope", "list"])).code).toBe(2);
    expect((await cli(["context", "use", "nope"])).code).toBe(2);
    expect(seen.creates).toHaveLength(0);
  });

  it("NOID_TOKEN overrides the context's token", async () => {
    await setup();
    const r = await cli(["whoami", "-o", "json"], { env: { NOID_TOKEN: OTHER } });
    expect(JSON.parse(r.stdout)).toEqual({ user: "bob", role: "ROLE_USER", tokenName: "t1" });
    expect(seen.auth.at(-1)).toBe(`Bearer ${OTHER}`);
  });

  it("token create prints the secret once, with a warning on stderr", async () => {
    await setup();
    const r = await cli(["token", "create", "--name", "ci", "--role", "user", "--expires", "12h"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(SECRET);
    expect(r.stderr).toMatch(/shown only now/);
    expect(seen.tokens[0]).toEqual({ name: "ci", role: Role.ROLE_USER, user: "", ttlSeconds: 43_200 });
  });

  it("without a reachable coordinator says where it tried", async () => {
    const r = await cli(["list", "--server", "127.0.0.1:1", "--insecure", "--timeout", "2"], { env: { NOID_TOKEN: GOOD } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: cannot reach coordinator at 127\.0\.0\.1:1: /);
  });
});
