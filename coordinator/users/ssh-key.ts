// SSH public keys as in authorized_keys: "<type> <base64 blob> [comment]".
// Pure parsing: the blob must decode, name the same type as the text, and
// carry a well-formed key (ed25519: 32 bytes; RSA: >= 2048-bit modulus;
// ECDSA: the curve its type names). Fingerprints as OpenSSH prints them.
import { createHash } from "node:crypto";
import { invalid } from "../../common/errors.js";

export const SSH_KEY_TYPES = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"] as const;
export type SshKeyType = (typeof SSH_KEY_TYPES)[number];

export interface ParsedSshKey {
  type: SshKeyType;
  /** The base64 blob exactly as given. */
  blob: string;
  comment: string;
  /** "SHA256:<base64, no padding>" as `ssh-keygen -lf` shows it. */
  fingerprint: string;
  /** sha256 of the blob in hex: a key-safe id for etcd. */
  id: string;
  /** Normalized single line: type, blob, comment. */
  line: string;
}

const MAX_LINE = 16 * 1024;
const COMMENT = /^[\x20-\x7e]{0,256}$/;

/** Reads SSH wire-format strings (uint32 length + bytes) from a blob. */
class Wire {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  string(): Buffer | undefined {
    if (this.off + 4 > this.buf.length) return undefined;
    const n = this.buf.readUInt32BE(this.off);
    if (this.off + 4 + n > this.buf.length) return undefined;
    const s = this.buf.subarray(this.off + 4, this.off + 4 + n);
    this.off += 4 + n;
    return s;
  }
  get done(): boolean {
    return this.off === this.buf.length;
  }
}

function mpintBits(b: Buffer): number {
  let i = 0;
  while (i < b.length && b[i] === 0) i++;
  if (i === b.length) return 0;
  return (b.length - i - 1) * 8 + (32 - Math.clz32(b[i]!));
}

/** Why the blob is not a key of `type`, or undefined if it is one. */
function blobProblem(type: SshKeyType, blob: Buffer): string | undefined {
  const w = new Wire(blob);
  const inner = w.string()?.toString("latin1");
  if (inner !== type) return `the key data is for "${inner ?? "?"}", not "${type}"`;
  if (type === "ssh-ed25519") {
    const k = w.string();
    if (!k || k.length !== 32) return "an ssh-ed25519 key must be 32 bytes";
  } else if (type === "ssh-rsa") {
    const e = w.string();
    const n = w.string();
    if (!e || !n || e.length === 0) return "malformed ssh-rsa key";
    const bits = mpintBits(n);
    if (bits < 2048) return `RSA keys must have at least 2048 bits (this one has ${bits})`;
  } else {
    const curve = w.string()?.toString("latin1");
    const q = w.string();
    if (curve !== type.slice("ecdsa-sha2-".length)) return `the key's curve "${curve ?? "?"}" does not match its type`;
    if (!q || q.length < 33 || q[0] !== 0x04) return "malformed ECDSA point (expected an uncompressed point)";
  }
  if (!w.done) return "trailing data after the key";
  return undefined;
}

/** Parses one authorized_keys line; throws INVALID_ARGUMENT naming `field`. */
export function parseSshKey(field: string, text: string): ParsedSshKey {
  const t = text.trim();
  if (t === "") throw invalid(field, "is required");
  if (t.length > MAX_LINE || /[\r\n]/.test(t)) throw invalid(field, "must be one line of at most 16 KiB");
  const [type, blob, ...rest] = t.split(/\s+/);
  if (!SSH_KEY_TYPES.includes(type as SshKeyType)) {
    throw invalid(field, `unsupported key type "${(type ?? "").slice(0, 40)}": use ${SSH_KEY_TYPES.join(", ")}`);
  }
  if (!blob || !/^[A-Za-z0-9+/]+={0,2}$/.test(blob)) throw invalid(field, "the key data is not base64");
  const bytes = Buffer.from(blob, "base64");
  const problem = blobProblem(type as SshKeyType, bytes);
  if (problem) throw invalid(field, problem);
  const comment = rest.join(" ");
  if (!COMMENT.test(comment)) throw invalid(field, "the comment must be printable ASCII, at most 256 characters");
  const digest = createHash("sha256").update(bytes).digest();
  return {
    type: type as SshKeyType,
    blob,
    comment,
    fingerprint: `SHA256:${digest.toString("base64").replace(/=+$/, "")}`,
    id: digest.toString("hex"),
    line: comment ? `${type} ${blob} ${comment}` : `${type} ${blob}`,
  };
}

/** "SHA256:abc..." -> the hex id used in etcd keys; undefined if malformed. */
export function fingerprintId(fp: string): string | undefined {
  const m = /^SHA256:([A-Za-z0-9+/]{43})$/.exec(fp.trim());
  if (!m) return undefined;
  return Buffer.from(m[1]! + "=", "base64").toString("hex");
}
