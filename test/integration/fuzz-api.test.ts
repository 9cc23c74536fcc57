// Bad input, fuzzed (issue 8): thousands of requests derived from the proto
// descriptors go to every RPC of a real coordinator on real etcd, as admin,
// user, read-only, anonymous and with a wrong token; then raw malformed gRPC
// frames over HTTP/2 and garbage before the HTTP/2 preface. Every request must
// get a gRPC status within its deadline (server streams may stay open: they
// are watches), none may be UNKNOWN or INTERNAL or carry a stack, the
// coordinator must keep serving, and the etcd keyspace afterwards may hold only
// well-formed keys and records that accepted requests created.
//
// Reproduce a run with FUZZ_SEED=<seed printed by the test>.
import * as http2 from "node:http2";
import { connect as netConnect } from "node:net";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role } from "../../gen/noid/v1/auth.js";
import { isDnsLabel } from "../../common/names.js";
import { keys, netKeys } from "../../coordinator/state/keys.js";
import { checkKeyspace, type KeyspaceFinding } from "../helpers/keyspace.js";
import { loadRpcs, malformedBodies, messageArb, mutationArb, randomBodyArb, type FuzzRpc } from "../helpers/proto-fuzz.js";
import { startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { SimAgent } from "../helpers/sim-agent.js";

const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31);
/** Generated requests per RPC and caller; server streams get fewer (each may run to its deadline). */
const PER_CALLER = 24;
const PER_CALLER_STREAM = 4;
// Generous: creates queue in one lane per coordinator (vm-repo.ts), and a burst of them on a
// loaded 2-core machine takes seconds; a call that hangs never answers at all.
const UNARY_DEADLINE_MS = 20_000;
const STREAM_DEADLINE_MS = 1500;
const CONCURRENCY = 24;
const MUTANTS_PER_ACCEPTED = 3;

type Caller = "admin" | "user" | "readonly" | "anonymous" | "bad-token";

interface Outcome {
  rpc: FuzzRpc;
  caller: Caller;
  request: unknown;
  code: number;
  details: string;
  /** Decoded OK responses (unary: one; streams: up to a few). */
  responses: unknown[];
  ms: number;
}

/** grpc.health.v1 Check for the whole server: SERVING is field 1 = 1 (bytes 08 01). */
function healthCheck(address: string): Promise<string> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const id = (b: Buffer) => b;
  return new Promise((resolve) =>
    client.makeUnaryRequest("/grpc.health.v1.Health/Check", id, id, Buffer.alloc(0), new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err, res) => {
      client.close();
      resolve(err ? `error ${err.code}` : Buffer.from(res ?? []).equals(Buffer.from([8, 1])) ? "SERVING" : `status bytes ${Buffer.from(res ?? []).toString("hex")}`);
    }),
  );
}

/** Stack frames, source paths or internals in a status message. */
const LEAK = /\n\s+at |\bat .*\(.*:\d+:\d+\)|\.[jt]s:\d+|node:internal|\/work\/|node_modules|TypeError|ReferenceError|Cannot read prop/;

function call(client: grpc.Client, rpc: FuzzRpc, body: Buffer, token: string | undefined): Promise<{ code: number; details: string; responses: Buffer[] }> {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set("authorization", `Bearer ${token}`);
  const streaming = rpc.requestStream || rpc.responseStream;
  const deadline = Date.now() + (streaming ? STREAM_DEADLINE_MS : UNARY_DEADLINE_MS);
  const id = (b: Buffer) => b;
  return new Promise((resolve) => {
    if (!streaming) {
      client.makeUnaryRequest(rpc.path, id, id, body, md, { deadline }, (err, res) =>
        resolve(err ? { code: err.code, details: err.details, responses: [] } : { code: 0, details: "", responses: res ? [res] : [] }),
      );
      return;
    }
    const responses: Buffer[] = [];
    const s = rpc.requestStream ? client.makeBidiStreamRequest(rpc.path, id, id, md, { deadline }) : client.makeServerStreamRequest(rpc.path, id, id, body, md, { deadline });
    s.on("data", (b: Buffer) => void (responses.length < 5 && responses.push(b)));
    s.on("error", () => {});
    s.on("status", (st: grpc.StatusObject) => resolve({ code: st.code, details: st.details, responses }));
    if (rpc.requestStream) {
      const w = s as grpc.ClientDuplexStream<Buffer, Buffer>;
      w.write(body);
      w.end();
    }
  });
}

async function pool<T>(items: T[], n: number, f: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) await f(items[next++]!);
    }),
  );
}

/** Every string in a decoded response (ids, names) — what accepted requests may have created. */
function strings(v: unknown, out: Set<string>): void {
  if (typeof v === "string") out.add(v);
  else if (Array.isArray(v)) v.forEach((x) => strings(x, out));
  else if (v && typeof v === "object" && !(v instanceof Date) && !(v instanceof Uint8Array)) Object.values(v).forEach((x) => strings(x, out));
}

describe("bad input: fuzzing every RPC of a real coordinator", () => {
  let c: TestCluster;
  let agent: SimAgent;
  const tokens: Record<Caller, string | undefined> = { admin: "", user: "", readonly: "", anonymous: undefined, "bad-token": randomBytes(32).toString("hex") };
  let before: Map<string, Uint8Array>;

  beforeAll(async () => {
    // Login failures from the fuzz would otherwise lock 127.0.0.1 out and every later request would be the same refusal.
    c = await startTestCoordinator({ auth: { max_failures_per_minute: 10_000, failure_audit_per_minute: 10_000 } });
    tokens.admin = c.adminToken;
    const admin = c.client();
    // Token names the fuzz never generates (user names it does: they are in the keyspace), so an
    // admin's RevokeToken cannot end the run's own sessions.
    tokens.user = (await admin.createToken({ name: "tok-u-7f3a", user: "fuzz-user", role: Role.ROLE_USER })).secret;
    tokens.readonly = (await admin.createToken({ name: "tok-r-7f3a", user: "fuzz-reader", role: Role.ROLE_READ_ONLY })).secret;
    agent = new SimAgent({ address: c.address, token: c.adminToken, name: "host-a", autoRun: true, drivers: ["sandbox", "qemu", "firecracker"] });
    await agent.register();
    await agent.connect();
    // Something real to aim at: a VM and a network of the user, a user with a key.
    const user = c.client(tokens.user);
    await user.createNetwork("net-1", { cidr: "10.9.0.0/24" });
    await user.createVm("vm-1", { network: "net-1" });
    await admin.createUser({ name: "bob", role: Role.ROLE_USER, password: "bob password 12" });
    before = new Map((await c.handle.store.list("")).kvs.map((kv) => [kv.key, kv.value]));
  });
  afterAll(async () => {
    agent?.close();
    await c?.stop();
  });

  it("answers every generated request to every RPC with a clean status and keeps the store consistent", async () => {
    const { rpcs } = await loadRpcs();
    // Every service the coordinator serves is fuzzed, new ones included (they come from the descriptors).
    expect(rpcs.length).toBeGreaterThan(40);
    expect(new Set(rpcs.map((r) => r.service)).size).toBeGreaterThan(10);
    // Names and ids that exist right now, so some requests reach past validation.
    let live: string[] = [];
    const refreshLive = async () => {
      const s = new Set<string>();
      // Not the fuzzing callers' own tokens: revoking them would turn the rest of the run into UNAUTHENTICATED.
      for (const kv of (await c.handle.store.list("")).kvs) {
        if (!kv.key.startsWith("tokens/")) for (const seg of kv.key.split("/")) if (seg && seg.length <= 64) s.add(seg);
      }
      live = [...s];
    };
    await refreshLive();
    // Values that pass validation where the fuzz alone rarely gets there: a real key, unused CIDRs.
    const der = generateKeyPairSync("ed25519").publicKey.export({ format: "der", type: "spki" });
    const sshStr = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b]);
    const sshKey = `ssh-ed25519 ${Buffer.concat([sshStr(Buffer.from("ssh-ed25519")), sshStr(der.subarray(der.length - 32))]).toString("base64")} fuzz`;
    const pools = { live: () => live, extra: ["vm-1", "net-1", "host-a", "bob", sshKey, "10.77.0.0/24", "192.168.50.0/24", "172.20.0.0/20"] };

    const work: { rpc: FuzzRpc; caller: Caller; json: unknown }[] = [];
    for (const rpc of rpcs) {
      const n = rpc.requestStream || rpc.responseStream ? PER_CALLER_STREAM : PER_CALLER;
      const arb = messageArb(rpc.input, pools);
      const callers: [Caller, number][] = [
        ["admin", n],
        ["user", n],
        ["readonly", n],
        ["anonymous", Math.ceil(n / 4)],
        ["bad-token", Math.ceil(n / 4)],
      ];
      for (const [caller, k] of callers) {
        for (const json of fc.sample(arb, { numRuns: k, seed: SEED + work.length })) work.push({ rpc, caller, json });
      }
    }
    // Interleave RPCs so creates, deletes and reads race each other.
    const order = fc.sample(fc.shuffledSubarray(work.map((_, i) => i), { minLength: work.length }), { numRuns: 1, seed: SEED })[0]!;

    const client = new grpc.Client(c.address, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": 64 << 20 });
    const outcomes: Outcome[] = [];
    const t0 = Date.now();
    let sent = 0;
    let unencodable = 0;
    const send = async (w: { rpc: FuzzRpc; caller: Caller; json: unknown }): Promise<void> => {
      let body: Buffer;
      try {
        body = w.rpc.encode(w.json);
      } catch {
        unencodable++; // e.g. an out-of-range enum the generated encoder refuses: no client can send it
        return;
      }
      const t1 = Date.now();
      const r = await call(client, w.rpc, body, tokens[w.caller]);
      const ms = Date.now() - t1;
      sent++;
      if (sent % 500 === 0) await refreshLive();
      outcomes.push({
        rpc: w.rpc,
        caller: w.caller,
        request: w.json,
        code: r.code,
        details: r.details,
        ms,
        responses: r.responses.map((b) => {
          try {
            return w.rpc.decodeResponse(b);
          } catch {
            return undefined;
          }
        }),
      });
    };
    await pool(order, CONCURRENCY, (i) => send(work[i]!));
    // Second round, deeper: each accepted request again with one field broken (a nasty value,
    // another type, or dropped), so validation past the first check is exercised too.
    const accepted1 = outcomes.filter((o) => o.code === 0 && !o.rpc.requestStream && !o.rpc.responseStream && JSON.stringify(o.request) !== "{}");
    const mutants = accepted1.flatMap((o, i) =>
      fc.sample(mutationArb(o.request, pools), { numRuns: MUTANTS_PER_ACCEPTED, seed: SEED + i }).map((json) => ({ rpc: o.rpc, caller: o.caller, json })),
    );
    await pool(mutants, CONCURRENCY, send);
    console.log(`fuzz: ${mutants.length} mutants of ${accepted1.length} accepted requests`);
    client.close();
    const secs = (Date.now() - t0) / 1000;

    const byCode = new Map<string, number>();
    for (const o of outcomes) byCode.set(grpc.status[o.code] ?? String(o.code), (byCode.get(grpc.status[o.code] ?? String(o.code)) ?? 0) + 1);
    const okPaths = new Set(outcomes.filter((o) => o.code === 0).map((o) => o.rpc.path));
    const slow = outcomes.filter((o) => !o.rpc.responseStream && !o.rpc.requestStream).sort((a, b) => b.ms - a.ms).slice(0, 5);
    console.log(`fuzz: slowest unary calls: ${slow.map((o) => `${o.rpc.method} ${o.ms}ms ${grpc.status[o.code]}`).join(", ")}`);
    if (process.env.FUZZ_VERBOSE) {
      const per = new Map<string, string>();
      for (const o of outcomes) per.set(o.rpc.path, (per.get(o.rpc.path) ?? "") + " " + String(grpc.status[o.code] ?? o.code).slice(0, 6));
      for (const [p, cs] of [...per].sort()) console.log(p, JSON.stringify(Object.fromEntries(cs.trim().split(" ").reduce((m, x) => m.set(x, (m.get(x) ?? 0) + 1), new Map<string, number>()))));
    }
    console.log(
      `fuzz: ${outcomes.length} requests to ${rpcs.length} RPCs in ${secs.toFixed(1)}s (seed ${SEED}, ${unencodable} samples not encodable); ` +
        `${okPaths.size} RPCs accepted at least one; statuses ${JSON.stringify(Object.fromEntries([...byCode].sort()))}`,
    );

    const bad = outcomes.filter((o) => {
      if (o.code === grpc.status.UNKNOWN || o.code === grpc.status.INTERNAL) return true;
      if (LEAK.test(o.details)) return true;
      // A unary call that runs into its deadline is a hang; a stream may be a watch that is still open.
      if (o.code === grpc.status.DEADLINE_EXCEEDED && !o.rpc.responseStream) return true;
      return o.code < 0 || o.code > 16;
    });
    const show = bad.slice(0, 10).map((o) => `${o.rpc.path} as ${o.caller}: ${grpc.status[o.code]} "${o.details}" for ${JSON.stringify(o.request).slice(0, 400)}`);
    expect(show, `${bad.length} bad answers (seed ${SEED})`).toEqual([]);

    // Every caller got real answers: the user and admin reached past authentication on every RPC.
    for (const caller of ["admin", "user", "readonly"] as const) {
      const unauth = outcomes.filter((o) => o.caller === caller && o.code === grpc.status.UNAUTHENTICATED && o.rpc.path !== "/noid.v1.AgentService/Session");
      expect(unauth.length, `${caller} requests refused as unauthenticated`).toBeLessThan(outcomes.filter((o) => o.caller === caller).length / 10);
    }
    for (const caller of ["anonymous", "bad-token"] as const) {
      const through = outcomes.filter((o) => o.caller === caller && o.code === 0 && !/\/(Login|JoinHost)$/.test(o.rpc.path));
      expect(through.map((o) => o.rpc.path), `${caller} requests accepted`).toEqual([]);
    }

    // Still up: health and a list work.
    expect(await healthCheck(c.address)).toBe("SERVING");
    const admin = c.client(tokens.admin);
    await admin.listVms();
    await admin.listHosts();

    // The store: well-formed keys and records only, and whatever is new was created by an accepted request.
    const after = (await c.handle.store.list("")).kvs;
    const accepted = new Set<string>();
    for (const o of outcomes) if (o.code === 0) strings(o.responses, accepted);
    // CreateVm keeps a VM that no host can take yet and says so with RESOURCE_EXHAUSTED (by design: it is placed later).
    const owners: Record<Caller, string> = { admin: "admin", user: "fuzz-user", readonly: "fuzz-reader", anonymous: "", "bad-token": "" };
    const keptVms = new Set(
      outcomes
        .filter((o) => o.rpc.method === "CreateVm" && o.code === grpc.status.RESOURCE_EXHAUSTED && o.details.includes("kept PENDING"))
        .map((o) => `${owners[o.caller]}/${String((o.request as { name?: unknown }).name)}`),
    );
    if (keptVms.size) okPaths.add("/noid.v1.VmService/CreateVm(kept)");
    const findings: KeyspaceFinding[] = checkKeyspace(after, { before, accepted, acceptedPaths: okPaths, keptVms });
    expect(findings.slice(0, 20), `${findings.length} problems in the keyspace`).toEqual([]);
    const created = after.filter((kv) => !before.has(kv.key));
    console.log(
      `fuzz: keyspace ${before.size} -> ${after.length} keys (${created.length} new: ${JSON.stringify(
        Object.fromEntries(
          [...created.reduce((m, kv) => m.set(kv.key.split("/")[0]!, (m.get(kv.key.split("/")[0]!) ?? 0) + 1), new Map<string, number>())].sort(),
        ),
      )})`,
    );
    // The name indexes agree with the records.
    for (const kv of after.filter((k) => k.key.startsWith(keys.vmsPrefix))) expect(isDnsLabel(kv.key.split("/")[1]!) || /^[0-9a-f]{16}$/.test(kv.key.split("/")[1]!)).toBe(true);
    expect(after.filter((kv) => kv.key.startsWith(netKeys.networksPrefix)).length).toBeGreaterThan(0);
  }, 240_000);

  it("answers malformed gRPC frames and protobuf on every method path with a status, and drops garbage before the HTTP/2 preface", async () => {
    const { rpcs } = await loadRpcs();
    const rawBefore = new Map((await c.handle.store.list("")).kvs.map((kv) => [kv.key, kv.value]));
    const session = http2.connect(`http://${c.address}`);
    session.on("error", () => {});
    const bodies = [...malformedBodies(), ...fc.sample(randomBodyArb, { numRuns: 6, seed: SEED }).map((body, i) => ({ what: `random body ${i}`, body }))];
    type Raw = { path: string; what: string; status?: string; message?: string; http?: number; error?: string; open?: boolean };
    const watches = new Set(rpcs.filter((r) => r.responseStream).map((r) => r.path));
    const send = (path: string, what: string, body: Buffer, headers: http2.OutgoingHttpHeaders = {}): Promise<Raw> =>
      new Promise((resolve) => {
        const res: Raw = { path, what };
        const req = session.request({
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc",
          te: "trailers",
          authorization: `Bearer ${tokens.admin}`,
          ...headers,
        });
        // A body that happens to decode opens a watch on a server-streaming method: still open is right there (grpc-js sends
        // the headers with the first event).
        const timer = setTimeout(
          () => {
            if (watches.has(path)) res.open = true;
            else res.error = "no status in time";
            req.close(http2.constants.NGHTTP2_CANCEL);
            resolve(res);
          },
          watches.has(path) ? 3000 : 10_000,
        );
        const take = (h: http2.IncomingHttpHeaders) => {
          if (h[":status"]) res.http = Number(h[":status"]);
          if (h["grpc-status"] !== undefined) res.status = String(h["grpc-status"]);
          if (h["grpc-message"] !== undefined) res.message = decodeURIComponent(String(h["grpc-message"]));
        };
        req.on("response", take);
        req.on("trailers", take);
        req.on("data", () => {});
        req.on("error", (e) => (res.error = String(e)));
        req.on("close", () => {
          clearTimeout(timer);
          resolve(res);
        });
        req.end(body);
      });

    const results: Raw[] = [];
    const jobs: (() => Promise<Raw>)[] = [];
    for (const rpc of rpcs) for (const b of bodies) jobs.push(() => send(rpc.path, b.what, b.body));
    // Not gRPC at all: unknown path, wrong content type, gzip without a body that is gzip.
    jobs.push(() => send("/noid.v1.NoSuchService/Nope", "unknown method", malformedBodies()[6]!.body));
    jobs.push(() => send(rpcs[0]!.path, "text/plain", Buffer.from("hello"), { "content-type": "text/plain" }));
    jobs.push(() => send(rpcs[0]!.path, "gzip flag with garbage", Buffer.concat([Buffer.from([1, 0, 0, 0, 4]), Buffer.from("zzzz")]), { "grpc-encoding": "gzip" }));
    await pool(jobs, 16, async (j) => void results.push(await j()));
    session.close();
    console.log(`fuzz: ${results.length} malformed HTTP/2 requests to ${rpcs.length + 1} paths (${results.filter((r) => r.open).length} opened a watch)`);

    // Every stream ended with a gRPC status (or an HTTP error status for non-gRPC content).
    const noStatus = results.filter((r) => r.error || (r.status === undefined && !r.open && !(r.http && r.http >= 400)));
    expect(noStatus.slice(0, 10), `${noStatus.length} requests without a status`).toEqual([]);
    // Broken protobuf and broken gzip are grpc-js's own INTERNAL statuses with fixed texts (no detail, no stack), as
    // grpc-go answers them; nothing else is INTERNAL or UNKNOWN.
    const GRPC_JS_INTERNAL = ["Error deserializing request", "Failed to decompress message"];
    const leaks = results.filter(
      (r) => r.status === "2" || (r.status === "13" && !GRPC_JS_INTERNAL.includes(r.message ?? "")) || LEAK.test(r.message ?? ""),
    );
    expect(leaks.slice(0, 10)).toEqual([]);

    // Garbage where the HTTP/2 preface belongs: the server closes the connection, and keeps serving others.
    const garbage = [Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), randomBytes(4096), Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00".repeat(9) + "junk"), Buffer.alloc(70_000, 0xff)];
    for (const g of garbage) {
      const closed = await new Promise<string>((resolve) => {
        const s = netConnect({ host: "127.0.0.1", port: c.handle.port });
        const timer = setTimeout(() => {
          s.destroy();
          resolve("still open after 10s");
        }, 10_000);
        s.on("error", () => {});
        s.on("data", () => {});
        s.on("close", () => {
          clearTimeout(timer);
          resolve("closed");
        });
        s.on("connect", () => s.write(g));
      });
      expect(closed).toBe("closed");
    }
    expect(await healthCheck(c.address)).toBe("SERVING");
    const admin = c.client(tokens.admin);
    await admin.listVms();
    // Nothing malformed reached the store: every key and record is well formed, and new keys
    // are only in collections whose RPC answered OK to some body (one that decoded by chance).
    const after = (await c.handle.store.list("")).kvs;
    const okPaths = new Set(results.filter((r) => r.status === "0").map((r) => r.path));
    const findings = checkKeyspace(after, { before: rawBefore, accepted: new Set(after.map((kv) => kv.key.split("/")[1] ?? "")), acceptedPaths: okPaths });
    expect(findings.slice(0, 20)).toEqual([]);
  }, 120_000);
});
