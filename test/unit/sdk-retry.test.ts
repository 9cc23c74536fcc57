// The SDK against a real grpc-js server on a random port (and a unix socket):
// retries only for the classified codes, per-attempt deadlines, the token on
// the wire, and watch/wait helpers.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  Vm,
  VmEventType,
  VmPhase,
  VmServiceService,
  type CreateVmRequest,
  type CreateVmResponse,
  type GetVmRequest,
  type GetVmResponse,
  type VmServiceServer,
} from "../../gen/noid/v1/vm.js";
import { connect, isNoidApiError, NoidApiError, type NoidClient } from "../../sdk/index.js";

const TOKEN = "ab".repeat(32);

/** What the next calls do: fail `failures` times with `code`, then answer (or hang forever). */
interface Behaviour {
  failures: number;
  code: status;
  hang: boolean;
}

const state = {
  behaviour: { failures: 0, code: status.UNAVAILABLE, hang: false } as Behaviour,
  attempts: 0,
  auth: [] as string[],
  watchEvents: [] as Array<{ type: VmEventType; phase: VmPhase; delayMs: number }>,
};

function vm(name: string, phase: VmPhase): Vm {
  return Vm.fromPartial({ id: `id-${name}`, name, owner: "alice", status: { phase } });
}

function unary<Req extends { name: string }, Res>(wrap: (v: Vm) => Res) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
    state.attempts++;
    state.auth.push(String(call.metadata.get("authorization")[0] ?? ""));
    const b = state.behaviour;
    if (state.attempts <= b.failures) {
      cb({ code: b.code, details: `injected ${status[b.code]} #${state.attempts}` });
      return;
    }
    if (b.hang) return; // never answers: the client's deadline must end the call
    cb(null, wrap(vm(call.request.name, VmPhase.VM_PHASE_PENDING)));
  };
}

const impl: VmServiceServer = {
  createVm: unary<CreateVmRequest, CreateVmResponse>((v) => ({ vm: v })),
  getVm: unary<GetVmRequest, GetVmResponse>((v) => ({ vm: v })),
  listVms: (_call, cb) => cb(null, { vms: [vm("a", VmPhase.VM_PHASE_RUNNING)] }),
  destroyVm: (_call, cb) => cb({ code: status.UNIMPLEMENTED }),
  startVm: (_call, cb) => cb({ code: status.UNIMPLEMENTED }),
  stopVm: (_call, cb) => cb({ code: status.UNIMPLEMENTED }),
  pauseVm: (_call, cb) => cb({ code: status.UNIMPLEMENTED }),
  resumeVm: (_call, cb) => cb({ code: status.UNIMPLEMENTED }),
  restartVm: (_call, cb) => cb({ code: status.UNIMPLEMENTED }),
  watchVms: (call) => {
    let t = 0;
    for (const ev of state.watchEvents) {
      t += ev.delayMs;
      setTimeout(() => {
        if (!call.cancelled) call.write({ type: ev.type, vm: vm(call.request.name || "w", ev.phase) });
      }, t);
    }
    // The stream stays open until the client cancels, like a real watch.
  },
};

let server: Server;
let port = 0;
let sockDir = "";
const clients: NoidClient[] = [];

beforeAll(async () => {
  sockDir = mkdtempSync(join(tmpdir(), "noid-sdk-test-"));
  server = new Server();
  server.addService(VmServiceService, impl);
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${join(sockDir, "c.sock")}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
});

afterAll(() => {
  server?.forceShutdown();
  rmSync(sockDir, { recursive: true, force: true });
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  state.behaviour = { failures: 0, code: status.UNAVAILABLE, hang: false };
  state.attempts = 0;
  state.auth = [];
  state.watchEvents = [];
});

function client(opts: { retries?: number; deadlineMs?: number; address?: string; retried?: number[] } = {}): NoidClient {
  const c = connect({
    address: opts.address ?? `127.0.0.1:${port}`,
    token: TOKEN,
    insecure: true,
    retries: opts.retries ?? 3,
    deadlineMs: opts.deadlineMs ?? 5_000,
    backoff: { baseDelayMs: 1, maxDelayMs: 5, onRetry: (i) => opts.retried?.push(i.attempt) },
  });
  clients.push(c);
  return c;
}

async function failure(p: Promise<unknown>): Promise<NoidApiError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NoidApiError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}

describe("retries", () => {
  it("retries a read on UNAVAILABLE until it succeeds", async () => {
    state.behaviour = { failures: 2, code: status.UNAVAILABLE, hang: false };
    const got = await client().getVm("web");
    expect(got.name).toBe("web");
    expect(state.attempts).toBe(3);
  });

  it("retries a mutation on UNAVAILABLE", async () => {
    state.behaviour = { failures: 3, code: status.UNAVAILABLE, hang: false };
    const got = await client({ retries: 3 }).createVm("web", { vcpus: 2 });
    expect(got.id).toBe("id-web");
    expect(state.attempts).toBe(4);
  });

  it("gives up after `retries` extra attempts with a retryable UNAVAILABLE", async () => {
    state.behaviour = { failures: 100, code: status.UNAVAILABLE, hang: false };
    const err = await failure(client({ retries: 2 }).getVm("web"));
    expect(err.code).toBe("UNAVAILABLE");
    expect(err.grpcCode).toBe(status.UNAVAILABLE);
    expect(err.retryable).toBe(true);
    expect(err.message).toBe("injected UNAVAILABLE #3");
    expect(state.attempts).toBe(3);
  });

  it.each([
    ["INVALID_ARGUMENT", status.INVALID_ARGUMENT],
    ["ALREADY_EXISTS", status.ALREADY_EXISTS],
    ["PERMISSION_DENIED", status.PERMISSION_DENIED],
  ] as const)("does not retry %s and keeps the server's message", async (name, code) => {
    state.behaviour = { failures: 1, code, hang: false };
    const err = await failure(client().createVm("web"));
    expect(err.code).toBe(name);
    expect(err.retryable).toBe(false);
    expect(err.details).toBe(`injected ${name} #1`);
    expect(err.message).toBe(`injected ${name} #1`);
    expect(state.attempts).toBe(1);
  });

  it("does not retry a read on INVALID_ARGUMENT", async () => {
    state.behaviour = { failures: 1, code: status.INVALID_ARGUMENT, hang: false };
    expect((await failure(client().getVm("web"))).code).toBe("INVALID_ARGUMENT");
    expect(state.attempts).toBe(1);
  });

  it("retries when nothing listens (connection refused is UNAVAILABLE)", async () => {
    const dead = new Server();
    const deadPort = await new Promise<number>((resolve, reject) =>
      dead.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    dead.forceShutdown();
    const retried: number[] = [];
    const err = await failure(client({ address: `127.0.0.1:${deadPort}`, retries: 2, retried }).listVms());
    expect(err.code).toBe("UNAVAILABLE");
    expect(retried).toEqual([1, 2]);
  });
});

describe("deadlines", () => {
  it("ends a hanging read with DEADLINE_EXCEEDED and retries it (reads are idempotent)", async () => {
    state.behaviour = { failures: 0, code: status.OK, hang: true };
    const err = await failure(client({ deadlineMs: 150, retries: 1 }).getVm("web"));
    expect(err.code).toBe("DEADLINE_EXCEEDED");
    expect(err.retryable).toBe(true);
    expect(state.attempts).toBe(2);
  });

  it("does not retry a mutation that hit its deadline (it may have happened)", async () => {
    state.behaviour = { failures: 0, code: status.OK, hang: true };
    const err = await failure(client({ deadlineMs: 150, retries: 3 }).createVm("web"));
    expect(err.code).toBe("DEADLINE_EXCEEDED");
    expect(err.retryable).toBe(false);
    expect(state.attempts).toBe(1);
  });
});

describe("connection", () => {
  it("sends the token as a bearer authorization header on every attempt", async () => {
    state.behaviour = { failures: 1, code: status.UNAVAILABLE, hang: false };
    await client().getVm("web");
    expect(state.auth).toEqual([`Bearer ${TOKEN}`, `Bearer ${TOKEN}`]);
  });

  it("talks over a unix socket", async () => {
    const vms = await client({ address: `unix:${join(sockDir, "c.sock")}` }).listVms();
    expect(vms.map((v) => v.name)).toEqual(["a"]);
  });

  it("rejects a malformed token and address before dialing", () => {
    expect(() => connect({ address: "localhost:7654", token: "nothex" })).toThrow(/64 lower-case hex/);
    expect(() => connect({ address: "localhost" })).toThrow(/host:port/);
    expect(() => connect({ address: "unix:relative.sock" })).toThrow(/absolute/);
  });
});

describe("watch", () => {
  it("waitForVm resolves when the predicate holds", async () => {
    state.watchEvents = [
      { type: VmEventType.VM_EVENT_TYPE_SNAPSHOT, phase: VmPhase.VM_PHASE_PENDING, delayMs: 0 },
      { type: VmEventType.VM_EVENT_TYPE_PUT, phase: VmPhase.VM_PHASE_CREATING, delayMs: 20 },
      { type: VmEventType.VM_EVENT_TYPE_PUT, phase: VmPhase.VM_PHASE_RUNNING, delayMs: 20 },
    ];
    const seen: VmPhase[] = [];
    const got = await client().waitForVm("web", (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING, {
      timeoutMs: 10_000,
      onEvent: (ev) => seen.push(ev.vm?.status?.phase ?? VmPhase.UNRECOGNIZED),
    });
    expect(got.status?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    expect(seen).toEqual([VmPhase.VM_PHASE_PENDING, VmPhase.VM_PHASE_CREATING, VmPhase.VM_PHASE_RUNNING]);
  });

  it("waitForVm fails with DEADLINE_EXCEEDED when the state never comes", async () => {
    state.watchEvents = [{ type: VmEventType.VM_EVENT_TYPE_SNAPSHOT, phase: VmPhase.VM_PHASE_PENDING, delayMs: 0 }];
    const err = await failure(client().waitForVm("web", () => false, { timeoutMs: 200 }));
    expect(err.code).toBe("DEADLINE_EXCEEDED");
  });

  it("waitForVm fails with NOT_FOUND when the VM is deleted first", async () => {
    state.watchEvents = [{ type: VmEventType.VM_EVENT_TYPE_DELETED, phase: VmPhase.VM_PHASE_DESTROYING, delayMs: 0 }];
    const err = await failure(client().waitForVm("web", () => false, { timeoutMs: 10_000 }));
    expect(isNoidApiError(err, "NOT_FOUND")).toBe(true);
  });

  it("watchVms ends quietly when its signal aborts", async () => {
    state.watchEvents = [{ type: VmEventType.VM_EVENT_TYPE_SNAPSHOT, phase: VmPhase.VM_PHASE_RUNNING, delayMs: 0 }];
    const ac = new AbortController();
    const types: VmEventType[] = [];
    for await (const ev of client().watchVms({ name: "web", signal: ac.signal })) {
      types.push(ev.type);
      ac.abort();
    }
    expect(types).toEqual([VmEventType.VM_EVENT_TYPE_SNAPSHOT]);
  });
});
