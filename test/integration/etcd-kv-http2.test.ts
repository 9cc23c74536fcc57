// EtcdKvClient's transport against a local HTTP/2 server that misbehaves the
// ways a member can: no answer (deadline; the dead connection is replaced), a
// refusal with a status and a message not percent-encoded as gRPC asks, an
// answer without a status, a stream reset unanswered, an HTTP error status. Each call ends with an error etcd3 would have
// given, and the process does not crash.
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { GRPCDeadlineExceededError } from "etcd3";
import { EtcdKvClient } from "../../coordinator/store/etcd-kv-http2.js";
import { mapEtcdError } from "../../coordinator/store/etcd-store.js";

const closers: (() => void)[] = [];
afterEach(() => closers.splice(0).forEach((f) => f()));

async function server(onStream: (s: http2.ServerHttp2Stream, n: number) => void): Promise<{ url: string; sessions: () => number }> {
  let n = 0;
  let sessions = 0;
  const srv = http2.createServer();
  srv.on("session", () => sessions++);
  srv.on("stream", (s) => onStream(s, n++));
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  closers.push(() => srv.close());
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, sessions: () => sessions };
}

function client(url: string): EtcdKvClient {
  const c = new EtcdKvClient({ endpoints: [url] });
  closers.push(() => c.close());
  return c;
}

const soon = (ms: number) => new Date(Date.now() + ms);

describe("EtcdKvClient transport", () => {
  it("ends an unanswered call at its deadline and opens a new connection for the next", async () => {
    const s = await server(() => undefined); // reads the request, never answers
    const c = client(s.url);
    const t = Date.now();
    const err = await c.range({ key: Buffer.from("k") }, soon(300)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GRPCDeadlineExceededError);
    expect(Date.now() - t).toBeLessThan(2000);
    expect(mapEtcdError("get k", err).code).toBe("UNAVAILABLE");
    await c.range({ key: Buffer.from("k") }, soon(200)).catch(() => undefined);
    expect(s.sessions()).toBe(2);
  });

  it("passes etcd's status and message on, even a message not percent-encoded", async () => {
    const s = await server((st) => {
      st.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      st.on("wantTrailers", () => st.sendTrailers({ "grpc-status": "3", "grpc-message": "etcdserver: duplicate key given in txn request %E0%A4%A" }));
      st.end();
    });
    const err = await client(s.url).txn([], [], [], soon(2000)).catch((e: unknown) => e);
    const mapped = mapEtcdError("txn", err);
    expect(mapped.code).toBe("INVALID_ARGUMENT");
    expect(mapped.message).toContain("duplicate key given in txn request %E0%A4%A");
  });

  it("refuses an answer without a gRPC status", async () => {
    const s = await server((st) => {
      st.respond({ ":status": 200, "content-type": "application/grpc" });
      st.end(Buffer.from([0, 0, 0, 0, 0]));
    });
    const err = await client(s.url).txn([], [], [], soon(2000)).catch((e: unknown) => e);
    expect(mapEtcdError("txn", err).code).toBe("INTERNAL");
    expect(String((err as Error).message)).toMatch(/without a grpc-status/);
  });

  it("a stream reset before any answer (etcd shutting down) is UNAVAILABLE, as a lost connection", async () => {
    const s = await server((st) => st.close(http2.constants.NGHTTP2_CANCEL));
    const err = await client(s.url).range({ key: Buffer.from("k") }, soon(2000)).catch((e: unknown) => e);
    const mapped = mapEtcdError("get k", err);
    expect(mapped.code).toBe("UNAVAILABLE");
    expect(mapped.message).toMatch(/^etcd unavailable: get k: .*reset the stream before answering/);
  });

  it("an HTTP error without a gRPC status: 503 is UNAVAILABLE (try again), 403 a broken answer (INTERNAL)", async () => {
    for (const [http, want] of [
      [503, "UNAVAILABLE"],
      [403, "INTERNAL"],
    ] as const) {
      const s = await server((st) => {
        st.respond({ ":status": http });
        st.end("no");
      });
      const err = await client(s.url).range({ key: Buffer.from("k") }, soon(2000)).catch((e: unknown) => e);
      expect(mapEtcdError("get k", err).code).toBe(want);
      expect(String((err as Error).message)).toContain(`HTTP ${http} without a grpc-status`);
    }
  });
});
