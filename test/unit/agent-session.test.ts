// The agent's session client against a real gRPC server (a scripted fake coordinator) on a unix socket.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials, credentials, status, type ServerDuplexStream, type ServerUnaryCall, type sendUnaryData } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import {
  AgentServiceClient,
  AgentServiceService,
  type RegisterHostRequest,
  type RegisterHostResponse,
  type MeshMember,
  type MeshSnapshot,
  type SessionRequest,
  type SessionResponse,
  type VmStatusReport,
} from "../../gen/noid/v1/agent.js";
import { Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import { AgentSession, type AgentSessionOptions, type DesiredSink } from "../../agent/session.js";
import { diffMesh } from "../../common/mesh-delta.js";
import { backoffDelay } from "../../agent/backoff.js";
import type { DesiredVm } from "../../agent/reconcile/types.js";
import { Fence } from "../../agent/reconcile/fence.js";

const until = async (cond: () => boolean, what: string): Promise<void> => {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
};

class FakeCoordinator {
  server = new Server();
  registrations: { req: RegisterHostRequest; auth: string }[] = [];
  received: SessionRequest[] = [];
  streams: ServerDuplexStream<SessionRequest, SessionResponse>[] = [];
  ackHeartbeats = true;
  ackDelayMs = 0;
  heartbeatIntervalMs = 30;
  /** Registrations answered UNAVAILABLE (the agent stays between sessions). */
  refuseRegistrations = false;
  constructor(public snapshot: Vm[]) {
    this.server.addService(AgentServiceService, {
      registerHost: (call: ServerUnaryCall<RegisterHostRequest, unknown>, cb: sendUnaryData<RegisterHostResponse>) => {
        if (this.refuseRegistrations) {
          cb({ code: status.UNAVAILABLE, details: "not now" });
          return;
        }
        this.registrations.push({ req: call.request, auth: String(call.metadata.get("authorization")[0]) });
        cb(null, { hostId: "host-1", heartbeatIntervalMs: this.heartbeatIntervalMs, leaseTtlSeconds: 10, meshIp: "100.64.0.1", meshPrefixLen: 16 });
      },
      session: (call: ServerDuplexStream<SessionRequest, SessionResponse>) => {
        this.streams.push(call);
        call.on("data", (m: SessionRequest) => {
          this.received.push(m);
          if (m.kind?.$case === "hello") call.write({ kind: { $case: "snapshot", value: { vms: this.snapshot } } });
          if (m.kind?.$case === "heartbeat" && this.ackHeartbeats) {
            const sequence = m.kind.value.sequence;
            const ack = () => call.write({ kind: { $case: "heartbeatAck", value: { sequence } } });
            if (this.ackDelayMs > 0) setTimeout(ack, this.ackDelayMs);
            else ack();
          }
        });
        call.on("error", () => undefined);
      },
    });
  }
  listen(addr: string): Promise<void> {
    return new Promise((res, rej) => this.server.bindAsync(addr, ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
  }
  count(c: string): number {
    return this.received.filter((m) => m.kind?.$case === c).length;
  }
}

class Sink implements DesiredSink {
  desired = new Map<string, DesiredVm>();
  snapshots = 0;
  reports: VmStatusReport[] = [];
  setDesired(vms: readonly DesiredVm[]): void {
    this.snapshots++;
    this.desired = new Map(vms.map((v) => [v.id, v]));
  }
  upsert(vm: DesiredVm): void {
    this.desired.set(vm.id, vm);
  }
  remove(id: string): void {
    this.desired.delete(id);
  }
  lastReports(): VmStatusReport[] {
    return this.reports;
  }
}

const vm = (id: string, desiredState = VmDesiredState.VM_DESIRED_STATE_RUNNING): Vm =>
  Vm.fromPartial({ id, spec: { vcpus: 1, memoryMb: 128 }, desiredState });

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function setup(snapshot: Vm[], extra: Partial<AgentSessionOptions> = {}): Promise<{ coord: FakeCoordinator; sink: Sink; session: AgentSession; addr: string }> {
  const dir = mkdtempSync(join(tmpdir(), "noid-session-"));
  const addr = `unix:${join(dir, "coord.sock")}`;
  const coord = new FakeCoordinator(snapshot);
  await coord.listen(addr);
  const client = new AgentServiceClient(addr, credentials.createInsecure());
  const sink = new Sink();
  const session = new AgentSession({
    client,
    token: "s3cret",
    registration: { name: "h1", address: "10.99.0.1", labels: { zone: "a" }, drivers: ["sandbox"], capacity: { vcpus: 4, memoryMb: 4096, diskGb: 20 }, wireguardPublicKey: "", wireguardPort: 0, agentVersion: "0.1.0", posture: undefined },
    sink,
    logger: silentLogger(),
    backoff: { initialMs: 10, maxMs: 50 },
    ...extra,
  });
  cleanup.push(async () => {
    await session.stop();
    client.close();
    coord.server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  return { coord, sink, session, addr };
}

describe("agent session client", () => {
  it("registers with a bearer token, says hello, follows snapshot and deltas, heartbeats", async () => {
    const { coord, sink, session } = await setup([vm("a"), vm("b", VmDesiredState.VM_DESIRED_STATE_STOPPED)]);
    session.start();
    await until(() => sink.snapshots === 1, "snapshot");
    expect(coord.registrations[0]?.auth).toBe("Bearer s3cret");
    expect(coord.registrations[0]?.req).toMatchObject({ name: "h1", drivers: ["sandbox"], capacity: { vcpus: 4 } });
    expect(coord.received[0]).toEqual({ kind: { $case: "hello", value: { hostId: "host-1", meshDeltas: false, batches: true } } }); // no mesh sink: no deltas asked; batches always
    expect([...sink.desired.values()].map((d) => `${d.id}:${d.state}`)).toEqual(["a:running", "b:stopped"]);
    expect(session.hostId).toBe("host-1");

    const s = coord.streams[0]!;
    s.write({ kind: { $case: "vm", value: vm("c") } });
    s.write({ kind: { $case: "vm", value: vm("a", VmDesiredState.VM_DESIRED_STATE_DELETED) } });
    s.write({ kind: { $case: "vmRemoved", value: { vmId: "b" } } });
    await until(() => sink.desired.has("c") && !sink.desired.has("b"), "deltas");
    expect(sink.desired.get("a")?.state).toBe("deleted");

    session.report({ vmId: "c", phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "02:00:00:00:00:01", destroyed: false });
    await until(() => coord.count("vmStatus") === 1, "status report");
    await until(() => coord.count("heartbeat") >= 3, "heartbeats");
    expect(session.currentState).toBe("streaming");
  });

  it("reconnects after the stream breaks, re-registers, resends statuses of VMs still assigned, and takes the new snapshot", async () => {
    const { coord, sink, session } = await setup([vm("a"), vm("b")]);
    const running = (vmId: string) => ({ vmId, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "", destroyed: false });
    sink.reports = [running("a"), running("b")];
    session.start();
    await until(() => sink.snapshots === 1, "first snapshot");
    await until(() => coord.count("vmStatus") === 2, "statuses after the first snapshot");
    coord.snapshot = [vm("a"), vm("z")]; // b moved away while we were gone
    coord.streams[0]!.end(); // the coordinator goes away
    await until(() => sink.snapshots === 2, "second snapshot");
    expect(coord.registrations).toHaveLength(2);
    expect([...sink.desired.keys()]).toEqual(["a", "z"]);
    await until(() => coord.count("vmStatus") === 3, "a's status resent");
    await new Promise((r) => setTimeout(r, 100));
    expect(coord.count("vmStatus")).toBe(3); // not b's: it is no longer ours
  });

  it("with a mesh sink: asks for deltas, applies them, asks for a full snapshot on a gap, starts over on a new stream", async () => {
    const views: MeshSnapshot[] = [];
    const { coord, session } = await setup([], { mesh: { setSnapshot: (s) => void views.push(s) } });
    session.start();
    await until(() => coord.streams.length === 1 && coord.count("hello") === 1, "hello");
    expect(coord.received.find((m) => m.kind?.$case === "hello")?.kind?.value).toEqual({ hostId: "host-1", meshDeltas: true, batches: true });
    const member = (id: string, key: string): MeshMember => ({ hostId: id, name: `n${id}`, address: "10.99.0.1", wireguardPublicKey: key, wireguardPort: 51820, meshIp: `100.64.0.${id}`, networks: [] });
    const s1: MeshSnapshot = { members: [member("1", "a"), member("2", "b")], meshPrefixLen: 16 };
    const s2: MeshSnapshot = { members: [member("1", "a"), member("2", "c"), member("3", "d")], meshPrefixLen: 16 };
    const s3: MeshSnapshot = { members: [member("1", "a"), member("3", "d")], meshPrefixLen: 16 };
    const s = coord.streams[0]!;
    s.write({ kind: { $case: "meshUpdate", value: { version: 1, kind: { $case: "full", value: s1 } } } });
    s.write({ kind: { $case: "meshUpdate", value: { version: 2, kind: { $case: "delta", value: { ...diffMesh(s1, s2), baseVersion: 1 } } } } });
    await until(() => views.length === 2, "two views");
    expect(views).toEqual([s1, s2]);
    // A gap (no version 3 here): the delta is not applied, a full snapshot is asked for once, later deltas wait for it.
    s.write({ kind: { $case: "meshUpdate", value: { version: 4, kind: { $case: "delta", value: { ...diffMesh(s2, s3), baseVersion: 3 } } } } });
    s.write({ kind: { $case: "meshUpdate", value: { version: 5, kind: { $case: "delta", value: { ...diffMesh(s3, s1), baseVersion: 4 } } } } });
    await until(() => coord.count("meshResync") === 1, "resync asked");
    expect(coord.received.find((m) => m.kind?.$case === "meshResync")?.kind?.value).toMatchObject({ haveVersion: 2 });
    s.write({ kind: { $case: "meshUpdate", value: { version: 6, kind: { $case: "full", value: s3 } } } });
    s.write({ kind: { $case: "meshUpdate", value: { version: 7, kind: { $case: "delta", value: { ...diffMesh(s3, s1), baseVersion: 6 } } } } });
    await until(() => views.length === 4, "views after the resync");
    expect(views.slice(2)).toEqual([s3, s1]);
    expect(coord.count("meshResync")).toBe(1);
    // A new stream starts from nothing: a delta before its full snapshot is a gap.
    s.end();
    await until(() => coord.streams.length === 2 && coord.count("hello") === 2, "second hello");
    coord.streams[1]!.write({ kind: { $case: "meshUpdate", value: { version: 8, kind: { $case: "delta", value: { ...diffMesh(s1, s2), baseVersion: 7 } } } } });
    await until(() => coord.count("meshResync") === 2, "resync on the new stream");
    expect(views).toHaveLength(4);
  });

  it("counts the lease renewed from when the acknowledged heartbeat was sent, not from when its late ack came", async () => {
    const { coord, sink, session } = await setup([vm("a")], { missedAcksLimit: 100 });
    coord.ackDelayMs = 200; // heartbeats every 30 ms, each acknowledged 200 ms late
    const before = Date.now();
    session.start();
    await until(() => sink.snapshots === 1, "snapshot");
    // The snapshot answers the hello: the lease was granted after the hello went out.
    const afterSnapshot = session.lastRenewedAt!;
    expect(afterSnapshot).toBeGreaterThanOrEqual(before);
    expect(afterSnapshot).toBeLessThanOrEqual(Date.now());
    for (let i = 0; i < 3; i++) {
      const prev = session.lastRenewedAt!;
      await until(() => session.lastRenewedAt! > prev, "an ack");
      // The ack just came, 200 ms after its heartbeat went out: the renewal counts from the send.
      expect(Date.now() - session.lastRenewedAt!).toBeGreaterThanOrEqual(150);
    }
    expect(session.currentState).toBe("streaming");
  });

  it("fences no VM of a healthy host whose grace is shorter than a heartbeat interval; fences it two intervals after the acks stop", async () => {
    const { coord, sink, session } = await setup([vm("a")], { missedAcksLimit: 100 });
    coord.heartbeatIntervalMs = 300;
    const fenced: string[][] = [];
    const desired: DesiredVm[] = [{ id: "a", state: "running", driver: "", spec: { id: "a", vcpus: 1, memoryMb: 64, diskGb: 1, image: "", net: { mac: "", ip: "" } }, hostLoss: { reschedule: true, graceMs: 100 } }];
    const fence = new Fence({
      loop: { desiredVms: () => desired, fence: (ids) => fenced.push([...ids]) },
      lastRenewedAt: () => session.lastRenewedAt,
      heartbeatIntervalMs: () => session.heartbeatIntervalMs,
      logger: silentLogger(),
      everyMs: 20,
    });
    cleanup.push(() => fence.stop());
    session.start();
    await until(() => sink.snapshots === 1, "snapshot");
    expect(session.heartbeatIntervalMs).toBe(300);
    fence.start();
    // Acks every 300 ms: the lease is never 100 ms (the grace) from its renewal for long, but it never
    // goes two intervals without one. Before the floor, this fenced within the first interval.
    await new Promise((r) => setTimeout(r, 1500));
    expect(fenced).toEqual([]);
    coord.ackHeartbeats = false;
    const stopped = Date.now();
    await until(() => fenced.length > 0, "fenced after the acks stopped");
    expect(fenced[0]).toEqual(["a"]);
    // Two intervals after the last renewal, which came at most an interval before the acks stopped.
    expect(Date.now() - session.lastRenewedAt!).toBeGreaterThanOrEqual(600);
    expect(Date.now() - stopped).toBeLessThan(1500);
  });

  it("declares the stream dead when heartbeats go unanswered", async () => {
    const { coord, session } = await setup([]);
    coord.ackHeartbeats = false;
    session.start();
    await until(() => coord.registrations.length >= 2, "reconnect after missed acks");
  });

  it("holds security events while no session streams and sends them after the next hello", async () => {
    const { coord, sink, session } = await setup([vm("a")]);
    const ev = (detail: string) => ({ vmId: "", kind: "port-drift", count: 1, detail });
    expect(session.security(ev("before the session"))).toBe(false);
    session.start();
    await until(() => sink.snapshots === 1, "snapshot");
    await until(() => coord.count("securityEvent") === 1, "the held event");
    expect(session.security(ev("while streaming"))).toBe(true);
    await until(() => coord.count("securityEvent") === 2, "the live event");
    // The agent stays between sessions until registrations are answered again.
    coord.refuseRegistrations = true;
    coord.streams[0]!.end();
    await until(() => session.currentState !== "streaming", "the stream to break");
    expect(session.security(ev("while reconnecting"))).toBe(false);
    coord.refuseRegistrations = false;
    await until(() => coord.count("securityEvent") === 3, "the event held across the reconnect");
    const sent = coord.received.filter((m) => m.kind?.$case === "securityEvent").map((m) => (m.kind as { value: { detail: string; hostId: string } }).value);
    expect(sent.map((v) => v.detail)).toEqual(["before the session", "while streaming", "while reconnecting"]);
    expect(sent.every((v) => v.hostId === "host-1")).toBe(true);
    // Sent after the hello on its stream.
    const lastHello = coord.received.map((m) => m.kind?.$case).lastIndexOf("hello");
    const afterReconnect = coord.received.slice(lastHello);
    expect(afterReconnect.some((m) => m.kind?.$case === "securityEvent")).toBe(true);
  });

  it("keeps retrying while the coordinator is down and connects once it is back", async () => {
    const { coord, sink, session, addr } = await setup([vm("a")]);
    await new Promise<void>((r) => coord.server.tryShutdown(() => r()));
    session.start();
    await new Promise((r) => setTimeout(r, 150));
    expect(session.currentState).not.toBe("streaming");
    expect(sink.snapshots).toBe(0);
    rmSync(addr.slice("unix:".length), { force: true });
    const back = new FakeCoordinator([vm("b")]);
    await back.listen(addr);
    cleanup.push(() => back.server.forceShutdown());
    await until(() => sink.snapshots === 1, "snapshot from the restarted coordinator");
    expect([...sink.desired.keys()]).toEqual(["b"]);
  });
});

describe("backoff", () => {
  it("grows exponentially with jitter and is capped at 10 s", () => {
    expect(backoffDelay(0, undefined, 0)).toBe(125);
    expect(backoffDelay(0, undefined, 0.999)).toBeLessThanOrEqual(250);
    expect(backoffDelay(3, undefined, 1)).toBe(2000);
    expect(backoffDelay(50, undefined, 1)).toBe(10_000);
    expect(backoffDelay(50, undefined, 0)).toBe(5_000);
  });
});
