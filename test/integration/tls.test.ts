// TLS and host identities against a real coordinator (real etcd, real gRPC
// over TLS): TLS on by default with a generated cluster CA, CA pinning by
// noidctl, plaintext refused, one-time join tokens, agents on mTLS with
// certificate renewal during an open session, revocation, and node
// authorization between two real host identities.
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { connect as tlsConnect } from "node:tls";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentServiceClient, type SessionRequest, type SessionResponse, type JoinHostResponse } from "../../gen/noid/v1/agent.js";
import { Role } from "../../gen/noid/v1/auth.js";
import { HostState, VmPhase, connect, type NoidClient } from "../../sdk/index.js";
import { certFingerprint, certValidity, createHostCsr, generateKeyPair, privateKeyToPem } from "../../common/x509.js";
import { silentLogger } from "../../common/logger.js";
import { HostIdentity } from "../../agent/identity.js";
import { AgentSession, type DesiredSink, type SessionState } from "../../agent/session.js";
import { run } from "../../cli/program.js";
import { loadConfig as loadCliConfig } from "../../cli/config.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { SimAgent } from "../helpers/sim-agent.js";

let c: TestCluster;
let admin: NoidClient;
const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), "noid-tls-"));
  dirs.push(d);
  return d;
};

function tlsClient(cluster: TestCluster, token: string): NoidClient {
  return connect({ address: cluster.address, token, tls: { caPem: cluster.handle.ca!.pem }, deadlineMs: 5000, retries: 0 });
}

/** A host's key and certificate, obtained through JoinHost like an agent does. */
interface Joined {
  keyPem: string;
  certPem: string;
  caPem: string;
  creds: grpc.ChannelCredentials;
}

function unaryCall<Req, Res>(client: AgentServiceClient, method: "joinHost" | "registerHost" | "renewCertificate", req: Req): Promise<Res> {
  return new Promise((resolve, reject) =>
    (client[method] as unknown as (r: Req, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r?: Res) => void) => void).call(
      client,
      req,
      new grpc.Metadata(),
      (e, r) => (e ? reject(e) : resolve(r!)),
    ),
  );
}

async function joinHost(name: string, token: string): Promise<Joined> {
  const keys = await generateKeyPair();
  const csrPem = await createHostCsr(name, keys);
  const anon = new AgentServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.handle.ca!.pem)));
  try {
    const res = await unaryCall<unknown, JoinHostResponse>(anon, "joinHost", { joinToken: token, name, csrPem });
    const keyPem = await privateKeyToPem(keys.privateKey);
    return {
      keyPem,
      certPem: res.certificatePem,
      caPem: res.caPem,
      creds: grpc.credentials.createSsl(Buffer.from(c.handle.ca!.pem), Buffer.from(keyPem), Buffer.from(res.certificatePem)),
    };
  } finally {
    anon.close();
  }
}

const codeOf = (e: unknown): number | undefined => (e as { code?: number }).code;

beforeAll(async () => {
  c = await startTestCoordinator({ server: { insecure: false }, agents: { cert_ttl_seconds: 6, heartbeat_interval_ms: 300 } });
  admin = tlsClient(c, c.adminToken);
}, 60_000);

afterAll(async () => {
  admin?.close();
  await c?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe("TLS by default", () => {
  it("creates a cluster CA and server certificate in the state dir, keys 0600, and serves TLS with them", async () => {
    const pki = join(c.stateDir, "pki");
    for (const f of ["ca.key", "server.key"]) expect(statSync(join(pki, f)).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(pki, "ca.crt"), "utf8")).toBe(c.handle.ca!.pem);
    expect(c.handle.ca!.fingerprint).toBe(certFingerprint(c.handle.ca!.pem));
    expect((await admin.whoAmI()).role).toBe(Role.ROLE_ADMIN);
  });

  it("the built noidctl talks TLS to a coordinator addressed by IP without Node warnings on stderr", async () => {
    // grpc-js hands Node's TLS the IP as the server name (DEP0123 warning); noidctl drops that warning only.
    const caFile = join(tmp(), "ca.crt");
    writeFileSync(caFile, c.handle.ca!.pem);
    // Not spawnSync: the coordinator runs in this process and must answer meanwhile.
    const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [join(dirname(fileURLToPath(import.meta.url)), "../../bin/noidctl.js"), "--server", c.address, "--ca-file", caFile, "whoami"], {
        env: { ...process.env, NOID_TOKEN: c.adminToken, NOID_CONFIG: "/nonexistent/config.toml" },
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
      child.on("close", (status) => resolve({ status, stdout, stderr }));
    });
    expect(c.address).toMatch(/^127\.0\.0\.1:/);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/admin/);
    expect(r.stderr).toBe("");
  });

  it("refuses plaintext clients and clients that do not trust the cluster CA", async () => {
    const plain = connect({ address: c.address, token: c.adminToken, insecure: true, deadlineMs: 3000, retries: 0 });
    const systemRoots = connect({ address: c.address, token: c.adminToken, deadlineMs: 3000, retries: 0 });
    try {
      await expect(plain.whoAmI()).rejects.toMatchObject({ code: "UNAVAILABLE" });
      await expect(systemRoots.whoAmI()).rejects.toMatchObject({ code: "UNAVAILABLE" });
    } finally {
      plain.close();
      systemRoots.close();
    }
  });

  it("refuses TLS 1.1 and accepts TLS 1.2", async () => {
    const port = c.handle.port;
    const handshake = (v: "TLSv1.1" | "TLSv1.2") =>
      new Promise<string>((resolve) => {
        const s = tlsConnect({ host: "127.0.0.1", port, minVersion: v, maxVersion: v, rejectUnauthorized: false, ALPNProtocols: ["h2"] });
        s.once("secureConnect", () => {
          resolve(s.getProtocol() ?? "?");
          s.end();
        });
        s.once("error", (e) => resolve(`error: ${e.message}`));
      });
    expect(await handshake("TLSv1.2")).toBe("TLSv1.2");
    expect(await handshake("TLSv1.1")).toMatch(/^error/);
  });

  it("keeps the CA and server certificate across a restart", async () => {
    const other = await startTestCoordinator({ server: { insecure: false } });
    const before = other.handle.ca!.fingerprint;
    const serverCert = readFileSync(join(other.stateDir, "pki", "server.crt"), "utf8");
    await other.handle.stop();
    const { resolveConfig } = await import("../../coordinator/config.js");
    const { startCoordinator } = await import("../../coordinator/server.js");
    const again = await startCoordinator({
      config: resolveConfig({ server: { listen: "127.0.0.1:0" }, state_dir: other.stateDir, etcd: { endpoints: other.endpoints }, logging: { level: "silent" } }),
      logger: silentLogger(),
    });
    try {
      expect(again.ca!.fingerprint).toBe(before);
      expect(readFileSync(join(other.stateDir, "pki", "server.crt"), "utf8")).toBe(serverCert);
    } finally {
      await again.stop();
      await other.stop().catch(() => undefined);
    }
  });
});

describe("noidctl auth setup pins the CA", () => {
  async function cli(args: string[], cfgPath: string, stdin = "") {
    let stdout = "";
    let stderr = "";
    const code = await run(args, {
      env: { NOID_CONFIG: cfgPath },
      io: { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s), readStdin: async () => stdin, isTTY: false, cwd: tmpdir() },
    });
    return { code, stdout, stderr };
  }

  it("pins the CA when the fingerprint matches, and later commands verify the server against it", async () => {
    const cfgPath = join(tmp(), "config.toml");
    const r = await cli(["auth", "setup", "--server", c.address, "--ca-fingerprint", c.handle.ca!.fingerprint, "--token-stdin"], cfgPath, c.adminToken);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`CA ${c.handle.ca!.fingerprint} pinned`);
    const ctx = loadCliConfig(cfgPath).contexts["default"]!;
    expect(certFingerprint(ctx.ca_pem!)).toBe(c.handle.ca!.fingerprint);
    expect(ctx.ca_fingerprint).toBe(c.handle.ca!.fingerprint);
    expect(ctx.insecure).toBeUndefined();
    expect((await cli(["context", "list"], cfgPath)).stdout).toContain(`pinned=${c.handle.ca!.fingerprint.slice(0, 23)}`);
    const who = await cli(["whoami", "-o", "json"], cfgPath);
    expect(who.code).toBe(0);
    expect(JSON.parse(who.stdout).user).toBe("admin");

    // Another coordinator (another CA) at the address of the pinned context is not trusted.
    const other = await startTestCoordinator({ server: { insecure: false } });
    try {
      const r2 = await cli(["whoami", "--server", other.address], cfgPath);
      expect(r2.code).not.toBe(0);
      expect(r2.stderr).toMatch(/UNAVAILABLE|certificate|unavailable/i);
    } finally {
      await other.stop();
    }
  }, 60_000);

  it("refuses a wrong fingerprint, and an unknown CA without a fingerprint when nobody can be asked; nothing is saved", async () => {
    const cfgPath = join(tmp(), "config.toml");
    const wrong = `sha256:${"0".repeat(64)}`;
    const r = await cli(["auth", "setup", "--server", c.address, "--ca-fingerprint", wrong, "--token-stdin"], cfgPath, c.adminToken);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(c.handle.ca!.fingerprint);
    expect(r.stderr).toContain("refusing");
    expect(existsSync(cfgPath)).toBe(false);
    const r2 = await cli(["auth", "setup", "--server", c.address, "--token-stdin"], cfgPath, c.adminToken);
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toContain("--ca-fingerprint");
    expect(existsSync(cfgPath)).toBe(false);
  });

  it("accepts --ca-file", async () => {
    const cfgPath = join(tmp(), "config.toml");
    const r = await cli(["auth", "setup", "--server", c.address, "--ca-file", c.handle.ca!.file, "--token-stdin"], cfgPath, c.adminToken);
    expect(r.code).toBe(0);
    expect(loadCliConfig(cfgPath).contexts["default"]!.ca_file).toBe(c.handle.ca!.file);
  });
});

describe("join tokens", () => {
  it("are created by admins only, work once, and not after their TTL", async () => {
    const userToken = (await admin.createToken({ name: "u", role: Role.ROLE_USER, user: "ursula" })).secret;
    const user = tlsClient(c, userToken);
    try {
      await expect(user.createJoinToken({ ttlSeconds: 60 })).rejects.toMatchObject({ code: "PERMISSION_DENIED" });
    } finally {
      user.close();
    }
    const jt = await admin.createJoinToken({ ttlSeconds: 3600 });
    expect(jt.token).toMatch(/^[0-9a-f]{64}$/);
    expect(jt.caFingerprint).toBe(c.handle.ca!.fingerprint);
    const joined = await joinHost("once", jt.token);
    const v = certValidity(joined.certPem);
    expect(v.subject).toContain("CN=once");
    expect(v.notAfter.getTime() - Date.now()).toBeLessThanOrEqual(6000);
    expect(joined.caPem).toBe(c.handle.ca!.pem);
    // An open token cannot take over a host that has a valid certificate; it is not used up by trying.
    const open = await admin.createJoinToken({ ttlSeconds: 60 });
    await expect(joinHost("once", open.token)).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });
    await joinHost("once-more", open.token);
    // A second use, even for another name, is refused.
    await expect(joinHost("twice", jt.token)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    // Expired.
    const short = await admin.createJoinToken({ ttlSeconds: 1 });
    await new Promise((r) => setTimeout(r, 1500));
    await expect(joinHost("late", short.token)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    // Unknown.
    await expect(joinHost("nobody", "ab".repeat(32))).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    // Bound to a host name.
    const bound = await admin.createJoinToken({ ttlSeconds: 60, hostName: "hv-9" });
    await expect(joinHost("hv-8", bound.token)).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    await joinHost("hv-9", bound.token);
    // The secret is stored only hashed.
    const raw = await c.handle.store.list("join-tokens/");
    for (const kv of raw.kvs) expect(Buffer.from(kv.value).toString("latin1")).not.toContain(bound.token);
  }, 30_000);

  it("refuses a CSR the token holder did not sign, without using up the token", async () => {
    const jt = await admin.createJoinToken({ ttlSeconds: 60 });
    const anon = new AgentServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.handle.ca!.pem)));
    try {
      await expect(unaryCall(anon, "joinHost", { joinToken: jt.token, name: "bad-csr", csrPem: "garbage" })).rejects.toMatchObject({
        code: grpc.status.INVALID_ARGUMENT,
      });
    } finally {
      anon.close();
    }
    expect(certValidity((await joinHost("bad-csr", jt.token)).certPem).subject).toContain("CN=bad-csr");
  });
});

describe("noidctl host join-token / host remove", () => {
  it("prints a one-time token and the CA fingerprint, and removes a host", async () => {
    const out: string[] = [];
    const cli = (args: string[]) =>
      run(args, {
        env: { NOID_SERVER: c.address, NOID_TOKEN: c.adminToken, NOID_CA_FILE: c.handle.ca!.file, NOID_CONFIG: "/nonexistent/config.toml" },
        io: { stdout: (s) => void out.push(s), stderr: (s) => void out.push(s), readStdin: async () => "", isTTY: false, cwd: "/" },
      });
    expect(await cli(["host", "join-token", "--ttl", "10m", "--host", "cli-host", "-o", "json"])).toBe(0);
    const res = JSON.parse(out.join("")) as { token: string; expires_at: string; ca_fingerprint: string };
    expect(res.ca_fingerprint).toBe(c.handle.ca!.fingerprint);
    expect(new Date(res.expires_at).getTime() - Date.now()).toBeLessThanOrEqual(600_000);
    const joined = await joinHost("cli-host", res.token);
    const sim = new SimAgent({ address: c.address, name: "cli-host", credentials: joined.creds });
    try {
      await sim.connect();
      out.length = 0;
      expect(await cli(["host", "remove", "cli-host"]), out.join("")).toBe(0);
      expect(out.join("")).toMatch(/host\/cli-host removed; \d+ certificate\(s\) revoked/);
      await expect(sim.register()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    } finally {
      sim.close();
    }
  });
});

describe("agents on mTLS", () => {
  it("refuses an agent without a host certificate, even with the admin token", async () => {
    const sim = new SimAgent({ address: c.address, token: c.adminToken, name: "tokenhost", credentials: grpc.credentials.createSsl(Buffer.from(c.handle.ca!.pem)) });
    try {
      await expect(sim.register()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    } finally {
      sim.close();
    }
  });

  it("joins with the real agent identity, holds a session, renews its certificate without dropping it, and is cut off when removed", async () => {
    const stateDir = tmp();
    const tokenFile = join(stateDir, "join-token");
    const { writeFileSync } = await import("node:fs");
    writeFileSync(tokenFile, (await admin.createJoinToken({ ttlSeconds: 60, hostName: "renewer" })).token + "\n", { mode: 0o600 });
    let session: AgentSession | undefined;
    const renewed: string[] = [];
    /** Key and certificate as stored right after each renewal (the files change again at the next one). */
    const pairs: { key: Buffer; cert: Buffer }[] = [];
    const identity = new HostIdentity({
      coordinator: c.address,
      name: "renewer",
      stateDir,
      caFingerprint: c.handle.ca!.fingerprint,
      joinTokenFile: tokenFile,
      logger: silentLogger(),
      onRenewed: (client) => {
        renewed.push(certValidity(identity.certificate).serial);
        pairs.push({ key: readFileSync(join(stateDir, "pki", "host.key")), cert: readFileSync(join(stateDir, "pki", "host.crt")) });
        session?.setClient(client);
      },
    });
    const client = await identity.start();
    expect(statSync(join(stateDir, "pki", "host.key")).mode & 0o777).toBe(0o600);
    const firstSerial = certValidity(identity.certificate).serial;
    const states: SessionState[] = [];
    const sink: DesiredSink = { setDesired: () => undefined, upsert: () => undefined, remove: () => undefined, lastReports: () => [] };
    session = new AgentSession({
      client,
      registration: { name: "renewer", address: "10.9.9.9", labels: {}, drivers: ["sandbox"], capacity: { vcpus: 2, memoryMb: 1024, diskGb: 10 }, wireguardPublicKey: "", wireguardPort: 0, agentVersion: "t", posture: undefined },
      sink,
      logger: silentLogger(),
      onState: (s) => states.push(s),
    });
    try {
      session.start();
      await eventually(() => session!.currentState === "streaming" && c.handle.cluster.hostByName("renewer")?.state === HostState.HOST_STATE_READY, 10_000, "session up");
      // The certificate lives 6 s; renewal comes at 4 s. Wait past the first certificate's end.
      await eventually(() => renewed.length >= 1, 15_000, "renewal");
      expect(renewed[0]).not.toBe(firstSerial);
      // Past the end of the first certificate, the session opened with it still stands.
      await new Promise((r) => setTimeout(r, 3000));
      // The session never broke: registering -> streaming, nothing else.
      expect(states).toEqual(["registering", "streaming"]);
      expect(c.handle.cluster.hostByName("renewer")?.state).toBe(HostState.HOST_STATE_READY);
      // The stored certificate is the renewed one, and a new connection works with it.
      const pair = pairs[pairs.length - 1]!;
      expect(certValidity(pair.cert.toString()).serial).not.toBe(firstSerial);
      const fresh = new AgentServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.handle.ca!.pem), pair.key, pair.cert));
      try {
        await unaryCall(fresh, "registerHost", { name: "renewer", address: "10.9.9.9", labels: {}, drivers: ["sandbox"], capacity: { vcpus: 2, memoryMb: 1024, diskGb: 10 }, wireguardPublicKey: "", wireguardPort: 0, agentVersion: "t" });
      } finally {
        fresh.close();
      }

      // Removing the host revokes its certificates and ends the session; it cannot come back.
      const removed = await admin.removeHost("renewer");
      expect(removed.revokedSerials.length).toBeGreaterThanOrEqual(2);
      await eventually(() => states.includes("backoff"), 10_000, "session cut off");
      const revoked = new AgentServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.handle.ca!.pem), pair.key, pair.cert));
      try {
        await expect(
          unaryCall(revoked, "registerHost", { name: "renewer", address: "10.9.9.9", labels: {}, drivers: ["sandbox"], capacity: { vcpus: 2, memoryMb: 1024, diskGb: 10 }, wireguardPublicKey: "", wireguardPort: 0, agentVersion: "t" }),
        ).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      } finally {
        revoked.close();
      }
      await new Promise((r) => setTimeout(r, 500));
      expect(c.handle.cluster.hostByName("renewer")).toBeUndefined();
    } finally {
      identity.stop();
      await session.stop();
    }
  }, 60_000);
});

describe("node authorization", () => {
  it("host B cannot register as A, open A's session, see A's VMs or report A's VM", async () => {
    const a = await joinHost("node-a", (await admin.createJoinToken({ ttlSeconds: 60 })).token);
    const b = await joinHost("node-b", (await admin.createJoinToken({ ttlSeconds: 60 })).token);
    const simA = new SimAgent({ address: c.address, name: "node-a", credentials: a.creds, autoRun: true, capacity: { vcpus: 4, memoryMb: 4096, diskGb: 40 } });
    const simB = new SimAgent({ address: c.address, name: "node-b", credentials: b.creds, capacity: { vcpus: 4, memoryMb: 4096, diskGb: 40 } });
    try {
      await simA.connect();
      // Only A can take the VM: B is cordoned once it registered.
      await simB.connect();
      await admin.cordonHost("node-b");
      for (const h of ["renewer", "once", "hv-9"]) await admin.cordonHost(h).catch(() => undefined);
      const vm = await admin.createVm("a-vm", { vcpus: 1, memoryMb: 128, diskGb: 1 });
      await eventually(async () => (await admin.getVm({ id: vm.id })).status?.phase === VmPhase.VM_PHASE_RUNNING, 15_000, "VM running on A");
      const before = await admin.getVm({ id: vm.id });
      expect(before.status?.hostName).toBe("node-a");
      expect(simA.vms.has(vm.id)).toBe(true);

      // B's own session never carried A's VM.
      expect(simB.vms.has(vm.id)).toBe(false);

      const raw = new AgentServiceClient(c.address, b.creds);
      try {
        // B registering under A's name.
        await expect(
          unaryCall(raw, "registerHost", { name: "node-a", address: "10.0.0.66", labels: {}, drivers: ["sandbox"], capacity: { vcpus: 64, memoryMb: 65536, diskGb: 999 }, wireguardPublicKey: "", wireguardPort: 0, agentVersion: "evil" }),
        ).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });

        // B opening a session as A (A's host id).
        const asA = await sessionOutcome(raw, [{ kind: { $case: "hello", value: { hostId: simA.hostId, meshDeltas: false, batches: false } } }]);
        expect(asA.code).toBe(grpc.status.PERMISSION_DENIED);
        expect(asA.vmIds).not.toContain(vm.id);

        // B, in its own session, reporting A's VM.
        const report = await sessionOutcome(raw, [
          { kind: { $case: "hello", value: { hostId: simB.hostId, meshDeltas: false, batches: false } } },
          { kind: { $case: "vmStatus", value: { vmId: vm.id, phase: VmPhase.VM_PHASE_FAILED, reason: "pwned", ip: "6.6.6.6", mac: "", destroyed: false } } },
        ]);
        expect(report.code).toBe(grpc.status.PERMISSION_DENIED);
        expect(report.vmIds).not.toContain(vm.id);
        // Or claiming it is destroyed: ignored (a host back from a loss reports the removal of
        // VMs rescheduled away, which it cannot tell from this), and nothing changes.
        const destroy = await sessionOutcome(raw, [
          { kind: { $case: "hello", value: { hostId: simB.hostId, meshDeltas: false, batches: false } } },
          { kind: { $case: "vmStatus", value: { vmId: vm.id, phase: VmPhase.VM_PHASE_STOPPED, reason: "", ip: "", mac: "", destroyed: true } } },
        ]);
        expect(destroy.vmIds).not.toContain(vm.id);
        const after = await admin.getVm({ id: vm.id });
        expect(after.status).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, hostName: "node-a" });
        expect(simA.vms.has(vm.id)).toBe(true);
      } finally {
        raw.close();
      }
      // A host with VMs cannot be removed.
      await expect(admin.removeHost("node-a")).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
      const after = await admin.getVm({ id: vm.id });
      expect(after.status?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
      expect(after.status?.reason).toBe(before.status?.reason);
      expect(after.status?.hostName).toBe("node-a");
      expect(await admin.getHost("node-a")).toMatchObject({ address: "10.77.0.1" });
    } finally {
      simA.close();
      simB.close();
    }
  }, 60_000);
});

/** Opens a session, sends `msgs`, and collects the VMs it is sent until the stream ends (bounded). */
function sessionOutcome(client: AgentServiceClient, msgs: SessionRequest[]): Promise<{ code: number | undefined; vmIds: string[] }> {
  return new Promise((resolve) => {
    const vmIds: string[] = [];
    const stream = client.session(new grpc.Metadata());
    const timer = setTimeout(() => {
      stream.cancel();
    }, 5000);
    stream.on("data", (m: SessionResponse) => {
      const k = m.kind;
      if (k?.$case === "snapshot") vmIds.push(...k.value.vms.map((v) => v.id));
      if (k?.$case === "vm") vmIds.push(k.value.id);
    });
    stream.on("error", (e) => {
      clearTimeout(timer);
      resolve({ code: codeOf(e), vmIds });
    });
    stream.on("end", () => {
      clearTimeout(timer);
      resolve({ code: undefined, vmIds });
    });
    for (const m of msgs) stream.write(m);
  });
}
