// Request fuzzing derived from the API itself: the RPCs and their message
// shapes come from the proto descriptors (a FileDescriptorSet that `buf build`
// writes from proto/), the encoding from the ts-proto code in gen/ (fromJSON +
// the service definition's requestSerialize, exactly what a client sends).
// Nothing here names an RPC or a field: a new service or field is fuzzed as
// soon as it is in the .proto files.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createFileRegistry, fromBinary, ScalarType, type DescField, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import fc from "fast-check";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** One RPC as the generated code and the descriptor both know it. */
export interface FuzzRpc {
  /** "/noid.v1.VmService/CreateVm" */
  path: string;
  service: string;
  method: string;
  requestStream: boolean;
  responseStream: boolean;
  input: DescMessage;
  /** JSON (proto3 mapping) -> the bytes a ts-proto client sends. */
  encode(json: unknown): Buffer;
  decodeResponse(bytes: Buffer): unknown;
}

interface GenMethod {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize(v: unknown): Buffer;
  responseDeserialize(b: Buffer): unknown;
}
interface GenMessage {
  fromJSON(o: unknown): unknown;
}

/** The descriptors of every proto/noid/v1 file, built by buf into a temp file. */
export function loadDescriptors(): { services: DescService[]; messages: Map<string, DescMessage> } {
  const dir = mkdtempSync(join(tmpdir(), "noid-fuzz-desc-"));
  try {
    const out = join(dir, "image.binpb");
    execFileSync(join(ROOT, "node_modules", ".bin", "buf"), ["build", "-o", out], { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] });
    const reg = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(out)));
    const services: DescService[] = [];
    const messages = new Map<string, DescMessage>();
    for (const t of reg) {
      if (t.kind === "service" && t.typeName.startsWith("noid.")) services.push(t);
      if (t.kind === "message") messages.set(t.typeName, t);
    }
    return { services, messages };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Every export of every generated module under gen/noid/v1. */
async function genExports(): Promise<Map<string, unknown>> {
  const dir = join(ROOT, "gen", "noid", "v1");
  const all = new Map<string, unknown>();
  for (const f of readdirSync(dir).filter((n) => n.endsWith(".ts")).sort()) {
    const mod = (await import(pathToFileURL(join(dir, f)).href)) as Record<string, unknown>;
    for (const [k, v] of Object.entries(mod)) all.set(k, v);
  }
  return all;
}

/**
 * Every RPC of every noid service, joined to its generated grpc-js method
 * definition. Throws if the descriptors and gen/ disagree (stale build).
 */
export async function loadRpcs(): Promise<{ rpcs: FuzzRpc[]; messages: Map<string, DescMessage> }> {
  const { services, messages } = loadDescriptors();
  const gen = await genExports();
  const genMethods = new Map<string, GenMethod>();
  for (const [name, v] of gen) {
    if (!name.endsWith("Service") || typeof v !== "object" || v === null) continue;
    for (const m of Object.values(v as Record<string, unknown>)) {
      const gm = m as Partial<GenMethod>;
      if (gm && typeof gm.path === "string" && typeof gm.requestSerialize === "function") genMethods.set(gm.path, gm as GenMethod);
    }
  }
  const rpcs: FuzzRpc[] = [];
  for (const s of services) {
    for (const m of s.methods) {
      const path = `/${s.typeName}/${m.name}`;
      const gm = genMethods.get(path);
      if (!gm) throw new Error(`${path} is in proto/ but not in gen/: run npm run build`);
      const msgExport = m.input.typeName.replace(/^noid\.v1\./, "").replace(/\./g, "_");
      const msg = gen.get(msgExport) as GenMessage | undefined;
      if (!msg || typeof msg.fromJSON !== "function") throw new Error(`no generated message ${msgExport} for ${path}`);
      rpcs.push({
        path,
        service: s.typeName,
        method: m.name,
        requestStream: gm.requestStream,
        responseStream: gm.responseStream,
        input: m.input,
        encode: (json) => gm.requestSerialize(msg.fromJSON(json)),
        decodeResponse: (b) => gm.responseDeserialize(b),
      });
    }
  }
  return { rpcs, messages };
}

/** Values worth trying in string fields: near-valid names, path tricks, control characters, sizes. */
export interface StringPools {
  /** Always-current values (names and ids that exist), read at generation time. */
  live: () => string[];
  extra?: string[];
}

const NASTY_STRINGS = [
  "",
  "a",
  "default",
  "isolated",
  "sandbox",
  "qemu",
  "firecracker",
  "vm-1",
  "net-1",
  "web",
  "admin",
  "A",
  "-a",
  "a-",
  "a_b",
  "a.b",
  "a/b",
  "../../etc/passwd",
  "..",
  "/",
  "a\u0000b",
  "\n",
  " ",
  "é",
  "😀",
  "x".repeat(63),
  "x".repeat(64),
  "x".repeat(300),
  "0123456789abcdef",
  "ffffffffffffffff",
  "10.0.0.0/24",
  "10.9.0.0/16",
  "0.0.0.0/0",
  "10.1.2.3/33",
  "fd00::/64",
  "10.0.0.1",
  "256.1.1.1",
  "1h",
  "-1",
  "NaN",
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl fuzz@x",
  "ssh-rsa AAAA",
  "key=value",
  "%s%n",
  "${jndi:x}",
  "'; DROP TABLE",
  "\u202e",
];

function stringArb(pools: StringPools): fc.Arbitrary<string> {
  const fixed = [...NASTY_STRINGS, ...(pools.extra ?? [])];
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...fixed) },
    {
      weight: 8,
      arbitrary: fc.nat().map((i) => {
        const live = pools.live();
        return live.length ? live[i % live.length]! : "";
      }),
    },
    { weight: 3, arbitrary: fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,20}$/) },
    { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
    { weight: 1, arbitrary: fc.string({ maxLength: 5000 }) },
  );
}

const INT32 = fc.oneof(fc.constantFrom(0, 1, -1, 2, 31, 32, 33, 64, 128, 1024, 65535, 65536, 2 ** 31 - 1, -(2 ** 31)), fc.integer());
const UINT32 = fc.oneof(fc.constantFrom(0, 1, 2, 8, 16, 32, 64, 512, 1024, 4096, 65535, 2 ** 31, 2 ** 32 - 1), fc.nat());
// gen/ uses forceLong=number: a client cannot send more than 2^53 (the raw-bytes test sends bigger varints).
const INT64 = fc.oneof(fc.constantFrom("0", "1", "-1", "60", "3600", "86400", "9007199254740991", "-9007199254740991"), fc.maxSafeInteger().map(String));
const UINT64 = fc.oneof(fc.constantFrom("0", "1", "60", "3600", "31536000", "9007199254740991"), fc.maxSafeNat().map(String));

function scalarArb(t: ScalarType, pools: StringPools): fc.Arbitrary<unknown> {
  switch (t) {
    case ScalarType.STRING:
      return stringArb(pools);
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.BYTES:
      return fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b).toString("base64"));
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return fc.oneof(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.constantFrom(0, -1, 1e300));
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return INT32;
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return UINT32;
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return UINT64;
    default:
      return INT64;
  }
}

function enumArb(values: readonly { number: number }[]): fc.Arbitrary<number> {
  // Known values, and numbers the server has never heard of.
  return fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...values.map((v) => v.number)) }, { weight: 1, arbitrary: fc.constantFrom(-1, 99, 2 ** 31 - 1) });
}

const WKT: Record<string, () => fc.Arbitrary<unknown>> = {
  "google.protobuf.Timestamp": () =>
    fc.oneof(fc.date({ min: new Date("0001-01-01T00:00:00Z"), max: new Date("9999-12-31T23:59:59Z"), noInvalidDate: true }).map((d) => d.toISOString()), fc.constantFrom("1970-01-01T00:00:00Z")),
  "google.protobuf.Duration": () => fc.constantFrom("0s", "1s", "-1s", "3600s", "315576000000s"),
  "google.protobuf.Empty": () => fc.constant({}),
};

/**
 * An arbitrary proto3-JSON value of `desc`: every field may be absent, lists
 * and maps are short, at most one member of each oneof is set, recursion stops
 * at `depth`.
 */
export function messageArb(desc: DescMessage, pools: StringPools, depth = 4): fc.Arbitrary<Record<string, unknown>> {
  const wkt = WKT[desc.typeName];
  if (wkt) return wkt() as fc.Arbitrary<Record<string, unknown>>;
  if (depth <= 0) return fc.constant({});
  const fieldArb = (f: DescField): fc.Arbitrary<unknown> => {
    const sub = (m: DescMessage) => (WKT[m.typeName] ? WKT[m.typeName]!() : messageArb(m, pools, depth - 1));
    switch (f.fieldKind) {
      case "scalar":
        return scalarArb(f.scalar, pools);
      case "enum":
        return enumArb(f.enum.values);
      case "message":
        return sub(f.message);
      case "list": {
        const el = f.listKind === "scalar" ? scalarArb(f.scalar, pools) : f.listKind === "enum" ? enumArb(f.enum.values) : sub(f.message);
        return fc.array(el, { maxLength: 4 });
      }
      case "map": {
        const v = f.mapKind === "scalar" ? scalarArb(f.scalar, pools) : f.mapKind === "enum" ? enumArb(f.enum.values) : sub(f.message);
        const k = f.mapKey === ScalarType.STRING ? stringArb(pools) : scalarArb(f.mapKey, pools).map(String);
        return fc.array(fc.tuple(k, v), { maxLength: 4 }).map((es) => Object.fromEntries(es));
      }
    }
  };
  const plain = desc.fields.filter((f) => !f.oneof || f.oneof.fields.length === 0);
  const rec = fc.record(Object.fromEntries(plain.filter((f) => !f.oneof).map((f) => [f.jsonName, fieldArb(f)])), { requiredKeys: [] });
  const oneofs = desc.oneofs.map((o) =>
    fc.option(fc.oneof(...o.fields.map((f) => fieldArb(f).map((v) => ({ [f.jsonName]: v })))), { nil: {} as Record<string, unknown> }),
  );
  return fc.tuple(rec, ...oneofs).map(([r, ...os]) => Object.assign({}, r, ...os) as Record<string, unknown>);
}

/** Every path to a leaf (or an object/array) of a JSON value. */
function paths(v: unknown, at: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = at.length ? [at] : [];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...at, i])));
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  return out;
}

function setAt(v: unknown, path: (string | number)[], value: unknown): unknown {
  if (path.length === 0) return value;
  const [head, ...rest] = path as [string | number, ...(string | number)[]];
  if (Array.isArray(v)) {
    const copy: unknown[] = [...v];
    if (rest.length === 0 && value === undefined) copy.splice(Number(head), 1);
    else copy[Number(head)] = setAt(copy[Number(head)], rest, value);
    return copy;
  }
  const copy: Record<string, unknown> = { ...(v as Record<string, unknown>) };
  if (rest.length === 0 && value === undefined) delete copy[String(head)];
  else copy[String(head)] = setAt(copy[String(head)], rest, value);
  return copy;
}

/**
 * `json` (an accepted request) with one field replaced: a nasty string, an extreme number,
 * a value of another type, or nothing. Past the checks the original passed, the next ones run.
 */
export function mutationArb(json: unknown, pools: StringPools): fc.Arbitrary<unknown> {
  const ps = paths(json);
  if (ps.length === 0) return fc.constant(json);
  const replacement = fc.oneof(
    stringArb(pools),
    fc.constantFrom(0, -1, 2 ** 31 - 1, 2 ** 32 - 1, Number.MAX_SAFE_INTEGER, "", true, [], {}, null),
    fc.constant(undefined),
  );
  return fc.tuple(fc.constantFrom(...ps), replacement).map(([p, v]) => setAt(json, p, v));
}

/** A gRPC message frame: compressed flag, big-endian length, payload. */
export function grpcFrame(payload: Buffer, opts: { compressed?: boolean; length?: number } = {}): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt8(opts.compressed ? 1 : 0, 0);
  h.writeUInt32BE(opts.length ?? payload.length, 1);
  return Buffer.concat([h, payload]);
}

/** Bodies that are not what a gRPC method expects: broken frames and broken protobuf. */
export function malformedBodies(): { what: string; body: Buffer }[] {
  const junk = Buffer.from("\xff\xff\xff\xff\x0f garbage \x00\x01", "latin1");
  return [
    { what: "empty body", body: Buffer.alloc(0) },
    { what: "truncated prefix", body: Buffer.from([0, 0, 0]) },
    { what: "length larger than body", body: grpcFrame(Buffer.from([0x0a, 0x01, 0x61]), { length: 1000 }) },
    { what: "length 4 GiB", body: grpcFrame(Buffer.from([0x0a]), { length: 0xffffffff }) },
    { what: "compressed flag without encoding", body: grpcFrame(Buffer.from([0x0a, 0x00]), { compressed: true }) },
    { what: "flag byte 7", body: Buffer.concat([Buffer.from([7, 0, 0, 0, 1]), Buffer.from([0])]) },
    { what: "invalid protobuf (bad varint)", body: grpcFrame(junk) },
    { what: "protobuf field length past end", body: grpcFrame(Buffer.from([0x0a, 0x7f, 0x61])) },
    { what: "wire type 7", body: grpcFrame(Buffer.from([0x0f, 0x01])) },
    { what: "field number 0", body: grpcFrame(Buffer.from([0x02, 0x01, 0x61])) },
    { what: "nested garbage", body: grpcFrame(Buffer.from([0x12, 0x04, 0x0a, 0x09, 0xff, 0xff])) },
    { what: "invalid UTF-8 in field 1", body: grpcFrame(Buffer.from([0x0a, 0x02, 0xc3, 0x28])) },
    { what: "two frames", body: Buffer.concat([grpcFrame(Buffer.from([0x0a, 0x01, 0x61])), grpcFrame(Buffer.from([0x0a, 0x01, 0x62]))]) },
    { what: "frame then trailing garbage", body: Buffer.concat([grpcFrame(Buffer.alloc(0)), Buffer.from([1, 2])]) },
  ];
}

/** Random frames and payloads on top of the fixed ones. */
export const randomBodyArb: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc.uint8Array({ maxLength: 200 }).map((b) => grpcFrame(Buffer.from(b))),
  fc.tuple(fc.uint8Array({ maxLength: 64 }), fc.nat(0xffffffff)).map(([b, n]) => grpcFrame(Buffer.from(b), { length: n })),
);
