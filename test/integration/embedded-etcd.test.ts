// The embedded etcd: argv for 3.4, start/health, supervised restart after a
// crash with data intact, and a stop that leaves no process behind.
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { etcdArgs, etcdEnv, restartDelay, startEmbeddedEtcd, type EmbeddedEtcd } from "../../coordinator/etcd/embedded.js";
import { createEtcdStore } from "../../coordinator/store/index.js";

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("etcdArgs / restartDelay / etcdEnv (pure)", () => {
  it("listens on loopback only and maps options to etcd 3.4 flags", () => {
    const args = etcdArgs({ name: "n1", dataDir: "/d", clientPort: 1111, peerPort: 2222, autoCompactionRetention: "5m", quotaBackendBytes: 1024, unsafeNoFsync: true });
    expect(args).toEqual([
      "--name=n1",
      "--data-dir=/d",
      "--listen-client-urls=http://127.0.0.1:1111",
      "--advertise-client-urls=http://127.0.0.1:1111",
      "--listen-peer-urls=http://127.0.0.1:2222",
      "--initial-advertise-peer-urls=http://127.0.0.1:2222",
      "--initial-cluster=n1=http://127.0.0.1:2222",
      "--initial-cluster-state=new",
      "--initial-cluster-token=noid-embedded",
      "--auto-compaction-mode=periodic",
      "--auto-compaction-retention=5m",
      "--logger=zap",
      "--log-outputs=stderr",
      "--quota-backend-bytes=1024",
      "--unsafe-no-fsync",
    ]);
    expect(etcdArgs({ name: "n", dataDir: "/d", clientPort: 1, peerPort: 2, autoCompactionRetention: "1h" })).not.toContain("--unsafe-no-fsync");
  });

  it("backs off restarts exponentially up to a cap, and starts over after a stable run", () => {
    const seq: number[] = [];
    let d = 0;
    for (let i = 0; i < 10; i++) seq.push((d = restartDelay(d, 100)));
    expect(seq.slice(0, 4)).toEqual([200, 400, 800, 1600]);
    expect(seq.at(-1)).toBe(10_000);
    expect(restartDelay(10_000, 60_000)).toBe(200);
  });

  it("drops ETCD_* variables that etcd would read as flags", () => {
    expect(etcdEnv({ PATH: "/bin", ETCD_NAME: "x", ETCDCTL_API: "3" })).toEqual({ PATH: "/bin", ETCDCTL_API: "3" });
  });
});

describe("startEmbeddedEtcd", () => {
  let dir: string;
  let etcd: EmbeddedEtcd;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "noid-embedded-etcd-"));
    etcd = await startEmbeddedEtcd({ dataDir: join(dir, "etcd"), unsafeNoFsync: true });
  });
  afterAll(async () => {
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("serves on loopback with a private data dir and a log file", async () => {
    expect(etcd.endpoints).toHaveLength(1);
    expect(etcd.endpoints[0]).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(alive(etcd.pid)).toBe(true);
    expect((await stat(join(dir, "etcd"))).mode & 0o777).toBe(0o700);
    expect((await stat(join(dir, "etcd", "etcd.log"))).size).toBeGreaterThan(0);
    const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: "/noid/v1/" });
    try {
      await store.put("hello", enc("world"));
      expect(dec((await store.get("hello"))!.value)).toBe("world");
    } finally {
      await store.close();
    }
  });

  it("restarts etcd after SIGKILL, and the data survives", async () => {
    const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: "/noid/v1/", requestTimeoutMs: 1000 });
    try {
      await store.put("durable", enc("yes"));
      const oldPid = etcd.pid;
      etcd.kill("SIGKILL");
      await vi.waitFor(() => expect(alive(oldPid)).toBe(false), { timeout: 10_000 });
      await vi.waitFor(() => expect(etcd.pid).not.toBe(0), { timeout: 20_000, interval: 50 });
      expect(etcd.pid).not.toBe(oldPid);
      await vi.waitFor(async () => expect(dec((await store.get("durable"))!.value)).toBe("yes"), { timeout: 20_000, interval: 200 });
    } finally {
      await store.close();
    }
  });

  it("stop() leaves no process behind and is idempotent", async () => {
    const pid = etcd.pid;
    expect(alive(pid)).toBe(true);
    await etcd.stop();
    expect(alive(pid)).toBe(false);
    expect(etcd.pid).toBe(0);
    await etcd.stop();
    // and nothing restarts it
    await new Promise((r) => setTimeout(r, 500));
    expect(etcd.pid).toBe(0);
  });

  /** Starts etcd expecting failure; stops it if it did start, so a wrong result leaks nothing. */
  async function startFailure(opts: Parameters<typeof startEmbeddedEtcd>[0]): Promise<Error> {
    return startEmbeddedEtcd(opts).then(
      async (e) => {
        await e.stop();
        return new Error("started");
      },
      (err: Error) => err,
    );
  }

  it("refuses a client port something else listens on", async () => {
    const other = await startEmbeddedEtcd({ dataDir: join(dir, "other"), unsafeNoFsync: true });
    try {
      const port = Number(new URL(other.endpoints[0]!).port);
      const err = await startFailure({ dataDir: join(dir, "clash"), clientPort: port, peerPort: 0 });
      expect(err.message).toMatch(`etcd client port 127.0.0.1:${port} is not free`);
    } finally {
      await other.stop();
    }
  });

  it("fails with the tail of etcd's output when etcd exits during start", async () => {
    const err = await startFailure({ dataDir: join(dir, "bad"), autoCompactionRetention: "not-a-duration" });
    expect(err.message).toMatch(/etcd exited during start/);
    expect(err.message).toMatch(/not-a-duration/);
  });
});
