// The hand-written codec of etcd's Range and Txn messages (coordinator/store/
// etcd-kv-http2.ts) against etcd's own .proto files as etcd3 ships them, read by
// protobufjs: what we encode decodes there to the same request, and what it
// encodes (etcd's answers) we decode to the same values, for any input.
import { createRequire } from "node:module";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodeRange, decodeTxn, encodeRange, encodeTxn, type KvCompare, type KvOp } from "../../coordinator/store/etcd-kv-http2.js";

const require = createRequire(import.meta.url);
const protobuf = require("protobufjs") as typeof import("protobufjs");
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => require.resolve(`etcd3/proto/${target.split("/").pop()}`);
root.loadSync("rpc.proto", { keepCase: true });
const TxnRequest = root.lookupType("etcdserverpb.TxnRequest");
const TxnResponse = root.lookupType("etcdserverpb.TxnResponse");
const RangeRequest = root.lookupType("etcdserverpb.RangeRequest");
const RangeResponse = root.lookupType("etcdserverpb.RangeResponse");

const bytes = fc.uint8Array({ minLength: 1, maxLength: 12 });
const rev = fc.oneof(fc.constantFrom(-1, 0, 1), fc.integer({ min: -1, max: 2 ** 40 }));
const compareArb: fc.Arbitrary<KvCompare> = fc.oneof(
  fc.record({ key: bytes, target: fc.constantFrom("mod" as const, "create" as const, "version" as const), op: fc.constantFrom("==" as const, "!=" as const, "<" as const, ">" as const), value: rev }),
  fc.record({ key: bytes, target: fc.constant("value" as const), op: fc.constantFrom("==" as const, "!=" as const), value: fc.uint8Array({ maxLength: 12 }) }),
);
const opArb: fc.Arbitrary<KvOp> = fc.oneof(
  fc.record({ put: fc.record({ key: bytes, value: fc.uint8Array({ maxLength: 40 }), lease: fc.option(fc.integer({ min: 1, max: 2 ** 50 }), { nil: undefined }) }, { requiredKeys: ["key", "value"] }) }),
  fc.record({ del: fc.record({ key: bytes, rangeEnd: fc.option(bytes, { nil: undefined }) }, { requiredKeys: ["key"] }) }),
);

const RESULT = { "==": 0, ">": 1, "<": 2, "!=": 3 };
const TARGET = { version: 0, create: 1, mod: 2, value: 3 };
const UNION = { version: "version", create: "create_revision", mod: "mod_revision", value: "value" } as const;
const num = (x: unknown) => Number(x ?? 0);
const buf = (x: unknown) => Buffer.from((x as Uint8Array | undefined) ?? []);

describe("etcd Range/Txn codec", () => {
  it("a TxnRequest we encode is the request etcd's .proto reads", () => {
    fc.assert(
      fc.property(fc.array(compareArb, { maxLength: 5 }), fc.array(opArb, { maxLength: 5 }), fc.array(opArb, { maxLength: 3 }), (compares, success, failure) => {
        const m = TxnRequest.toObject(TxnRequest.decode(encodeTxn(compares, success, failure)), { longs: String, defaults: true, oneofs: true }) as Record<string, any>;
        expect(m.compare).toHaveLength(compares.length);
        compares.forEach((c, i) => {
          const got = m.compare[i];
          expect(got.result).toBe(RESULT[c.op]);
          expect(got.target).toBe(TARGET[c.target]);
          expect(buf(got.key)).toEqual(Buffer.from(c.key));
          // The oneof member is set, even to zero (mod_revision 0: "the key does not exist").
          expect(got.target_union).toBe(UNION[c.target]);
          if (c.target === "value") expect(buf(got.value)).toEqual(Buffer.from(c.value as Uint8Array));
          else expect(num(got[UNION[c.target]])).toBe(c.value);
        });
        const checkOps = (got: any[], want: KvOp[]) => {
          expect(got).toHaveLength(want.length);
          want.forEach((op, i) => {
            if ("put" in op) {
              expect(got[i].request).toBe("request_put");
              expect(buf(got[i].request_put.key)).toEqual(Buffer.from(op.put.key));
              expect(buf(got[i].request_put.value)).toEqual(Buffer.from(op.put.value));
              expect(num(got[i].request_put.lease)).toBe(op.put.lease ?? 0);
            } else {
              expect(got[i].request).toBe("request_delete_range");
              expect(buf(got[i].request_delete_range.key)).toEqual(Buffer.from(op.del.key));
              expect(buf(got[i].request_delete_range.range_end)).toEqual(Buffer.from(op.del.rangeEnd ?? []));
            }
          });
        };
        checkOps(m.success, success);
        checkOps(m.failure, failure);
      }),
      { numRuns: 300 },
    );
  });

  it("a RangeRequest we encode is the request etcd's .proto reads", () => {
    fc.assert(
      fc.property(bytes, fc.option(bytes, { nil: undefined }), fc.nat({ max: 10_000 }), fc.boolean(), fc.boolean(), fc.boolean(), (key, rangeEnd, limit, keysOnly, countOnly, descending) => {
        const m = RangeRequest.toObject(RangeRequest.decode(encodeRange({ key, rangeEnd, limit, keysOnly, countOnly, descending })), { longs: String, defaults: true }) as Record<string, any>;
        expect(buf(m.key)).toEqual(Buffer.from(key));
        expect(buf(m.range_end)).toEqual(Buffer.from(rangeEnd ?? []));
        expect(num(m.limit)).toBe(limit);
        expect(m.keys_only).toBe(keysOnly);
        expect(m.count_only).toBe(countOnly);
        expect(m.sort_order).toBe(descending ? 2 : 0);
        expect(m.sort_target).toBe(0);
      }),
      { numRuns: 200 },
    );
  });

  it("decodes etcd's Txn and Range answers as etcd's .proto writes them", () => {
    const kvArb = fc.record({ key: bytes, value: fc.uint8Array({ maxLength: 40 }), create_revision: rev.map((x) => Math.max(0, x)), mod_revision: rev.map((x) => Math.max(0, x)), version: fc.nat(), lease: fc.nat() });
    fc.assert(
      fc.property(fc.boolean(), rev.map((x) => Math.max(0, x)), fc.array(kvArb, { maxLength: 6 }), fc.nat(), (succeeded, revision, kvs, count) => {
        const header = { cluster_id: 7, member_id: 9, revision, raft_term: 3 };
        expect(decodeTxn(TxnResponse.encode(TxnResponse.fromObject({ header, succeeded, responses: [{ response_put: { header } }] })).finish())).toEqual({ succeeded, revision });
        const r = decodeRange(RangeResponse.encode(RangeResponse.fromObject({ header, kvs, more: true, count })).finish());
        expect(r.revision).toBe(revision);
        expect(r.count).toBe(count);
        expect(r.kvs).toEqual(kvs.map((k) => ({ key: Buffer.from(k.key), value: Buffer.from(k.value), createRevision: k.create_revision, modRevision: k.mod_revision, version: k.version, lease: k.lease })));
      }),
      { numRuns: 200 },
    );
  });
});
