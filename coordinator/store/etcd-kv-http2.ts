// etcd's KV Range and Txn calls over node:http2, with a protobuf codec for
// just the messages they use (etcdserverpb, api/etcdserverpb/rpc.proto and
// api/mvccpb/kv.proto; field numbers from those files).
//
// Why: these two calls are most of what the coordinator asks etcd, and
// through etcd3 and grpc-js a transaction cost 0.28-0.57 ms of client CPU and
// a read 0.25 ms (the retrying/load-balancing/resolving call layers,
// protobufjs objects with 64-bit numbers as strings); as one HTTP/2 stream
// with this codec, 0.13 ms each (BENCHMARKS.md, finding 14). Watches, leases and
// everything else stay on etcd3.
//
// Errors are built as grpc-js builds them and cast by etcd3's castGrpcError,
// so EtcdStore maps them exactly as before: a request that never left (no
// connection) says "No connection established", which EtcdStore may retry on
// another member; anything that may have reached etcd is not retried.
import http2 from "node:http2";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { status as grpcStatus } from "@grpc/grpc-js";
import { castGrpcError } from "etcd3";
import type { CompareOp, CompareTarget } from "./store.js";

/** A Store Compare with the key in full (prefixed, as etcd holds it). */
export interface KvCompare {
  key: Uint8Array;
  target: CompareTarget;
  op: CompareOp;
  value: number | Uint8Array;
}

export type KvOp = { put: { key: Uint8Array; value: Uint8Array; lease?: number } } | { del: { key: Uint8Array; rangeEnd?: Uint8Array } };

export interface KvRangeRequest {
  key: Uint8Array;
  rangeEnd?: Uint8Array;
  limit?: number;
  keysOnly?: boolean;
  countOnly?: boolean;
  /** Keys in descending order (etcd's sort_order DESCEND, sort_target KEY). */
  descending?: boolean;
}

export interface RawKv {
  key: Buffer;
  value: Buffer;
  createRevision: number;
  modRevision: number;
  version: number;
  lease: number;
}

// Compare.CompareResult and Compare.CompareTarget.
const RESULT: Record<CompareOp, number> = { "==": 0, ">": 1, "<": 2, "!=": 3 };
const TARGET: Record<CompareTarget, number> = { version: 0, create: 1, mod: 2, value: 3 };
// Compare's target_union field for each target.
const UNION_FIELD: Record<CompareTarget, number> = { version: 4, create: 5, mod: 6, value: 7 };

const WIRE_VARINT = 0;
const WIRE_LEN = 2;

/** Pure: a TxnRequest's bytes. */
export function encodeTxn(compares: readonly KvCompare[], success: readonly KvOp[], failure: readonly KvOp[]): Uint8Array {
  const w = new BinaryWriter();
  for (const c of compares) {
    w.tag(1, WIRE_LEN).fork();
    if (RESULT[c.op] !== 0) w.tag(1, WIRE_VARINT).int32(RESULT[c.op]);
    if (TARGET[c.target] !== 0) w.tag(2, WIRE_VARINT).int32(TARGET[c.target]);
    w.tag(3, WIRE_LEN).bytes(c.key);
    // A oneof member is written even when zero (mod_revision == 0: "the key does not exist").
    if (c.target === "value") w.tag(UNION_FIELD.value, WIRE_LEN).bytes(c.value as Uint8Array);
    else w.tag(UNION_FIELD[c.target], WIRE_VARINT).int64(c.value as number);
    w.join();
  }
  const ops = (field: number, list: readonly KvOp[]) => {
    for (const op of list) {
      w.tag(field, WIRE_LEN).fork();
      if ("put" in op) {
        w.tag(2, WIRE_LEN).fork().tag(1, WIRE_LEN).bytes(op.put.key).tag(2, WIRE_LEN).bytes(op.put.value);
        if (op.put.lease) w.tag(3, WIRE_VARINT).int64(op.put.lease);
        w.join();
      } else {
        w.tag(3, WIRE_LEN).fork().tag(1, WIRE_LEN).bytes(op.del.key);
        if (op.del.rangeEnd) w.tag(2, WIRE_LEN).bytes(op.del.rangeEnd);
        w.join();
      }
      w.join();
    }
  };
  ops(2, success);
  ops(3, failure);
  return w.finish();
}

/** Pure: a RangeRequest's bytes. */
export function encodeRange(r: KvRangeRequest): Uint8Array {
  const w = new BinaryWriter();
  w.tag(1, WIRE_LEN).bytes(r.key);
  if (r.rangeEnd) w.tag(2, WIRE_LEN).bytes(r.rangeEnd);
  if (r.limit) w.tag(3, WIRE_VARINT).int64(r.limit);
  if (r.descending) w.tag(5, WIRE_VARINT).int32(2); // sort_order DESCEND; sort_target KEY is 0
  if (r.keysOnly) w.tag(8, WIRE_VARINT).bool(true);
  if (r.countOnly) w.tag(9, WIRE_VARINT).bool(true);
  return w.finish();
}

function headerRevision(b: Uint8Array): number {
  const r = new BinaryReader(b);
  let revision = 0;
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 3) revision = Number(r.int64());
    else r.skip(wt);
  }
  return revision;
}

function decodeKv(b: Uint8Array): RawKv {
  const r = new BinaryReader(b);
  const kv: RawKv = { key: Buffer.alloc(0), value: Buffer.alloc(0), createRevision: 0, modRevision: 0, version: 0, lease: 0 };
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 1) kv.key = Buffer.from(r.bytes());
    else if (f === 2) kv.createRevision = Number(r.int64());
    else if (f === 3) kv.modRevision = Number(r.int64());
    else if (f === 4) kv.version = Number(r.int64());
    else if (f === 5) kv.value = Buffer.from(r.bytes());
    else if (f === 6) kv.lease = Number(r.int64());
    else r.skip(wt);
  }
  return kv;
}

/** Pure: a TxnResponse's outcome (the responses of its ops are not used). */
export function decodeTxn(b: Uint8Array): { succeeded: boolean; revision: number } {
  const r = new BinaryReader(b);
  let succeeded = false;
  let revision = 0;
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 1) revision = headerRevision(r.bytes());
    else if (f === 2) succeeded = r.bool();
    else r.skip(wt);
  }
  return { succeeded, revision };
}

/** Pure: a RangeResponse. */
export function decodeRange(b: Uint8Array): { revision: number; kvs: RawKv[]; count: number } {
  const r = new BinaryReader(b);
  const out = { revision: 0, kvs: [] as RawKv[], count: 0 };
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 1) out.revision = headerRevision(r.bytes());
    else if (f === 2) out.kvs.push(decodeKv(r.bytes()));
    else if (f === 4) out.count = Number(r.int64());
    else r.skip(wt);
  }
  return out;
}

/** The error grpc-js would give for this status, cast to etcd3's typed errors as etcd3 casts its own. */
export function grpcError(code: number, details: string): Error {
  const e = Object.assign(new Error(`${code} ${grpcStatus[code] ?? "UNKNOWN"}: ${details}`), { code, details });
  return castGrpcError(e);
}

/** grpc-timeout header: at most 8 digits, in milliseconds. */
function grpcTimeout(ms: number): string {
  return `${Math.min(99_999_999, Math.max(1, Math.ceil(ms)))}m`;
}

interface Conn {
  session: http2.ClientHttp2Session;
  connected: boolean;
  /** When this connection last delivered a response (ms, Date.now). */
  lastAnswer: number;
}

export interface EtcdKvClientOptions {
  endpoints: string[];
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
}

/**
 * Range and Txn on etcd, one HTTP/2 connection per member, used one member at
 * a time: the next member after a connection to this one fails or closes.
 */
/**
 * The error of a call that ended without a gRPC status. Reset before any
 * answer (etcd shutting down resets its streams with CANCEL): the call did
 * not get through, as a lost connection (UNAVAILABLE: it was INTERNAL, and
 * the store test's etcd restarts saw it now and then). An HTTP status that
 * gRPC's HTTP mapping reads as "try again" (429, 502-504: a proxy, a member
 * going away) is UNAVAILABLE too; any other answer without a status is
 * broken (INTERNAL).
 */
function noStatus(httpStatus: number | undefined, rstCode: number | undefined): Error {
  if (httpStatus === undefined) return grpcError(14, `etcd reset the stream before answering (code ${rstCode ?? "none"})`);
  if (httpStatus === 200) return grpcError(13, "etcd answered without a grpc-status");
  // As gRPC maps HTTP: these say "try again"; anything else is a broken answer to us.
  const code = [429, 502, 503, 504].includes(httpStatus) ? 14 : 13;
  return grpcError(code, `etcd answered HTTP ${httpStatus} without a grpc-status`);
}

export class EtcdKvClient {
  private readonly conns = new Map<number, Conn>();
  private current = 0;
  private closed = false;

  constructor(private readonly o: EtcdKvClientOptions) {
    if (o.endpoints.length === 0) throw new Error("EtcdKvClient: no endpoints");
  }

  async txn(compares: readonly KvCompare[], success: readonly KvOp[], failure: readonly KvOp[], deadline: Date): Promise<{ succeeded: boolean; revision: number }> {
    return decodeTxn(await this.unary("/etcdserverpb.KV/Txn", encodeTxn(compares, success, failure), deadline));
  }

  async range(req: KvRangeRequest, deadline: Date): Promise<{ revision: number; kvs: RawKv[]; count: number }> {
    return decodeRange(await this.unary("/etcdserverpb.KV/Range", encodeRange(req), deadline));
  }

  close(): void {
    this.closed = true;
    for (const c of this.conns.values()) c.session.destroy();
    this.conns.clear();
  }

  private conn(): Conn {
    const index = this.current;
    const have = this.conns.get(index);
    if (have && !have.session.closed && !have.session.destroyed) return have;
    const tls = this.o.tls;
    const endpoint = this.o.endpoints[index]!;
    const url = /^[a-z]+:\/\//i.test(endpoint) ? endpoint : `${tls ? "https" : "http"}://${endpoint}`;
    const session = http2.connect(url, {
      ...(tls?.ca ? { ca: tls.ca } : {}),
      ...(tls?.cert ? { cert: tls.cert } : {}),
      ...(tls?.key ? { key: tls.key } : {}),
      // Large ranges (a relist of every VM) should not wait on flow control.
      settings: { initialWindowSize: 16 * 1024 * 1024 },
    });
    const conn: Conn = { session, connected: false, lastAnswer: 0 };
    session.on("connect", () => {
      conn.connected = true;
      session.setLocalWindowSize(64 * 1024 * 1024);
    });
    const gone = () => {
      if (this.conns.get(index) === conn) {
        this.conns.delete(index);
        // Try the next member from now on (one member: the same one, reconnected).
        if (this.current === index) this.current = (index + 1) % this.o.endpoints.length;
      }
    };
    session.on("error", gone);
    session.on("close", gone);
    session.on("goaway", gone);
    this.conns.set(index, conn);
    return conn;
  }

  private unary(path: string, body: Uint8Array, deadline: Date): Promise<Buffer> {
    if (this.closed) return Promise.reject(grpcError(14, "No connection established: client closed"));
    const conn = this.conn();
    const started = Date.now();
    const frame = Buffer.allocUnsafe(5 + body.length);
    frame[0] = 0;
    frame.writeUInt32BE(body.length, 1);
    frame.set(body, 5);
    return new Promise<Buffer>((resolve, reject) => {
      let done = false;
      const finish = (err: Error | undefined, data?: Buffer) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(data!);
      };
      const left = deadline.getTime() - Date.now();
      let stream: http2.ClientHttp2Stream;
      try {
        stream = conn.session.request({
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc",
          te: "trailers",
          "grpc-timeout": grpcTimeout(left),
          // Refuse at once when the member has no leader (as EtcdStore's interceptor asks of etcd3's calls).
          hasleader: "true",
        });
      } catch (e) {
        finish(grpcError(14, `No connection established: ${(e as Error).message}`));
        return;
      }
      const timer = setTimeout(() => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        // A connection that has not answered anything since this call began may be dead
        // without having said so (no FIN): the next call opens a new one.
        if (conn.lastAnswer < started) conn.session.destroy();
        finish(grpcError(4, `Deadline exceeded after ${Date.now() - started} ms`));
      }, Math.max(1, left));
      const chunks: Buffer[] = [];
      let status: number | undefined;
      let message = "";
      let httpStatus: number | undefined;
      stream.on("response", (h) => (httpStatus = Number(h[":status"])));
      const onHeaders = (h: http2.IncomingHttpHeaders) => {
        if (h["grpc-status"] !== undefined) {
          status = Number(h["grpc-status"]);
          message = String(h["grpc-message"] ?? "");
          try {
            message = decodeURIComponent(message);
          } catch {
            // Not percent-encoded as gRPC says it should be: shown as sent.
          }
        }
      };
      stream.on("response", onHeaders); // trailers-only responses carry the status here
      stream.on("trailers", onHeaders);
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        conn.lastAnswer = Date.now();
        if (status === undefined) return finish(noStatus(httpStatus, stream.rstCode));
        if (status !== 0) return finish(grpcError(status, message));
        const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
        if (all.length < 5) return finish(grpcError(13, "etcd answered OK without a message"));
        if (all[0] !== 0) return finish(grpcError(13, "etcd answered with a compressed message"));
        finish(undefined, all.subarray(5, 5 + all.readUInt32BE(1)));
      });
      stream.on("error", (e: Error) => {
        // Not connected yet: the request never left this process, another member may take it.
        finish(grpcError(14, conn.connected ? `connection to etcd failed: ${e.message}` : `No connection established: ${e.message}`));
      });
      stream.on("close", () => {
        if (!done) finish(grpcError(14, conn.connected ? `etcd closed the stream (code ${stream.rstCode})` : "No connection established: stream closed before connecting"));
      });
      stream.end(frame);
    });
  }
}
