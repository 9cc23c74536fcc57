// API tokens and login sessions in etcd: tokens/<sha256> -> TokenRecord. The
// secret is never stored. Rotation writes the new secret's record and turns
// the old one into a short-lived record (successor_id set, expires_at at the
// end of the overlap) in one transaction; after that it dies like any
// expired token and a sweep deletes it.
import type { Metadata } from "@grpc/grpc-js";
import { Role } from "../../gen/noid/v1/auth.js";
import { TokenRecord } from "../../gen/noid/v1/records.js";
import { NoidError, alreadyExists, notFound } from "../../common/errors.js";
import type { Compare, Op, Store } from "../store/store.js";
import { keys, lastSegment } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import type { Principal } from "./authorize.js";
import type { Authenticator } from "../grpc/handler.js";
import { isWellFormedSecret, newSecret, sha256Hex, tokenId } from "./secret.js";
import type { Logger } from "pino";
import { WatchedCopy } from "../state/watched-copy.js";

export interface TokenEntry {
  hash: string;
  record: TokenRecord;
  modRevision: number;
}

export interface Clock {
  now(): Date;
}

/** Why authentication failed: the counter's label. The message never says which. */
export type AuthFailureReason = "missing" | "malformed" | "unknown" | "expired" | "rate_limited" | "bad_password" | "bad_totp" | "bad_join_token" | "bad_host_cert";

/** UNAUTHENTICATED with a reason for metrics; the message is the same for unknown, expired and revoked tokens. */
export class AuthFailure extends NoidError {
  constructor(
    readonly reason: AuthFailureReason,
    message: string,
  ) {
    super("UNAUTHENTICATED", message);
  }
}

const INVALID = "invalid, expired or revoked token";

export function isExpired(r: TokenRecord, now: Date): boolean {
  return r.expiresAt !== undefined && r.expiresAt.getTime() <= now.getTime();
}

export class TokenStore implements Authenticator {
  /**
   * The token records, kept by a watch (startCache): a call is authenticated
   * without a read from etcd. Records are hashes, never secrets. A hash the
   * copy does not hold is read from etcd (a token just made on another
   * replica); this replica's own revocations are applied to the copy before
   * they return (settled), another replica's within the watch delay. The copy
   * is used only while etcd answers (WatchedCopy).
   */
  private readonly copy: WatchedCopy<TokenRecord>;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock = { now: () => new Date() },
    /** How long a rotated-away secret keeps working. */
    private readonly overlapSeconds = 60,
  ) {
    this.copy = new WatchedCopy(store, keys.tokensPrefix, (b) => dec(TokenRecord, b));
  }

  startCache(logger: Logger): Promise<void> {
    return this.copy.start(logger);
  }

  stopCache(): Promise<void> {
    return this.copy.stop();
  }

  /** Returns once the copy holds the writes up to `revision`. */
  settled(revision: number): Promise<void> {
    return this.copy.settled(revision);
  }

  async authenticate(metadata: Metadata, _peer: string): Promise<Principal> {
    const raw = metadata.get("authorization")[0];
    if (typeof raw !== "string" || raw.length === 0) {
      throw new AuthFailure("missing", "missing authorization: send 'authorization: Bearer <token>'");
    }
    const m = /^Bearer\s+(\S+)$/i.exec(raw.trim());
    const secret = m?.[1] ?? "";
    if (!isWellFormedSecret(secret)) throw new AuthFailure("malformed", "malformed bearer token");
    // Looking the record up by the secret's hash is the comparison: etcd
    // never sees the secret and the hash is compared inside etcd's index.
    const key = keys.token(sha256Hex(secret));
    // Without a recent answer from etcd the copy may miss a revocation made elsewhere:
    // the read below then fails (UNAVAILABLE) as every call did before.
    let rec = this.copy.trusted()?.get(key)?.value;
    if (!rec) {
      const kv = await this.store.get(key);
      if (!kv) throw new AuthFailure("unknown", INVALID);
      rec = dec(TokenRecord, kv.value);
    }
    if (isExpired(rec, this.clock.now())) throw new AuthFailure("expired", INVALID);
    return { user: rec.user, role: rec.role, tokenId: rec.successorId || rec.id, tokenName: rec.name };
  }

  /** Every record, including rotated-away secrets still in their overlap. */
  async listAll(): Promise<TokenEntry[]> {
    const r = await this.store.list(keys.tokensPrefix);
    return r.kvs.map((kv) => ({ hash: lastSegment(kv.key), record: dec(TokenRecord, kv.value), modRevision: kv.modRevision }));
  }

  /** The live tokens and sessions (one entry per token, not per secret). */
  async list(): Promise<TokenEntry[]> {
    const now = this.clock.now();
    return (await this.listAll()).filter((t) => !t.record.successorId && !isExpired(t.record, now));
  }

  /** Creates a token; the name is unique. Returns the secret, once. */
  /** `extraCompares`/`extraOps` join the same transaction (login also advances the user's TOTP step). */
  async create(input: {
    name: string;
    user: string;
    role: Role;
    ttlSeconds: number;
    session?: boolean;
    extraCompares?: Compare[];
    extraOps?: Op[];
  }): Promise<{ secret: string; record: TokenRecord }> {
    const existing = await this.list();
    if (existing.some((t) => t.record.name === input.name)) throw alreadyExists(`token "${input.name}"`);
    const secret = newSecret();
    const hash = sha256Hex(secret);
    const now = this.clock.now();
    const record: TokenRecord = {
      id: tokenId(hash),
      name: input.name,
      user: input.user,
      role: input.role,
      createdAt: now,
      expiresAt: input.ttlSeconds > 0 ? new Date(now.getTime() + input.ttlSeconds * 1000) : undefined,
      session: input.session ?? false,
      successorId: "",
    };
    const r = await this.store.txn(
      [{ key: keys.token(hash), target: "create", op: "==", value: 0 }, ...(input.extraCompares ?? [])],
      [{ type: "put", key: keys.token(hash), value: enc(TokenRecord, record) }, ...(input.extraOps ?? [])],
    );
    if (!r.succeeded) throw new NoidError("CONFLICT", `creating token "${input.name}": a concurrent change; retry`);
    await this.settled(r.revision);
    return { secret, record };
  }

  async find(ref: { id?: string; name?: string }): Promise<TokenEntry> {
    const all = await this.list();
    const t = all.find((e) => (ref.id ? e.record.id === ref.id : e.record.name === ref.name));
    if (!t) throw notFound(`token "${ref.id || ref.name}"`);
    return t;
  }

  /** The records of one token: its live secret and any rotated-away one in overlap. */
  private async secretsOf(entry: TokenEntry): Promise<TokenEntry[]> {
    return (await this.listAll()).filter((t) => t.hash === entry.hash || t.record.successorId === entry.record.id);
  }

  /** Deletes the token and any rotated-away secret of it still in its overlap, at once. */
  async revoke(entry: TokenEntry, extraOps: Op[] = []): Promise<void> {
    const all = await this.secretsOf(entry);
    const r = await this.store.txn([], [...all.map((t): Op => ({ type: "delete", key: keys.token(t.hash) })), ...extraOps]);
    if (all.length > 0) await this.settled(r.revision);
  }

  /**
   * Replaces the secret, keeping name, user, role and expiry. The old secret
   * keeps working for the overlap (never past its own expiry) and then dies;
   * a secret rotated away earlier dies now.
   */
  async rotate(entry: TokenEntry, extraOps: Op[] = []): Promise<{ secret: string; record: TokenRecord; oldExpiresAt: Date }> {
    const secret = newSecret();
    const hash = sha256Hex(secret);
    const now = this.clock.now();
    const record: TokenRecord = { ...entry.record, id: tokenId(hash), createdAt: now, successorId: "" };
    const overlapEnd = new Date(now.getTime() + this.overlapSeconds * 1000);
    const oldExpiresAt = entry.record.expiresAt && entry.record.expiresAt < overlapEnd ? entry.record.expiresAt : overlapEnd;
    const old: TokenRecord = { ...entry.record, expiresAt: oldExpiresAt, successorId: record.id };
    const older = (await this.secretsOf(entry)).filter((t) => t.hash !== entry.hash);
    const r = await this.store.txn(
      [
        { key: keys.token(entry.hash), target: "mod", op: "==", value: entry.modRevision },
        { key: keys.token(hash), target: "create", op: "==", value: 0 },
      ],
      [
        ...older.map((t): Op => ({ type: "delete", key: keys.token(t.hash) })),
        this.overlapSeconds > 0 ? { type: "put", key: keys.token(entry.hash), value: enc(TokenRecord, old) } : { type: "delete", key: keys.token(entry.hash) },
        { type: "put", key: keys.token(hash), value: enc(TokenRecord, record) },
        ...extraOps,
      ],
    );
    if (!r.succeeded) throw new NoidError("CONFLICT", `token "${entry.record.name}" changed while rotating; retry`);
    await this.settled(r.revision);
    return { secret, record, oldExpiresAt: this.overlapSeconds > 0 ? oldExpiresAt : now };
  }

  /** Deletes the login sessions of `user` (after a password change or user deletion): the ops, for the caller's transaction. */
  async sessionDeletes(user: string): Promise<Op[]> {
    return (await this.listAll()).filter((t) => t.record.session && t.record.user === user).map((t): Op => ({ type: "delete", key: keys.token(t.hash) }));
  }

  /** Deletes expired records (ended sessions, secrets past their overlap). Expired ones are refused anyway; this frees the keys. */
  async sweep(): Promise<number> {
    const now = this.clock.now();
    let n = 0;
    for (const t of await this.listAll()) {
      if (!isExpired(t.record, now)) continue;
      const r = await this.store.txn([{ key: keys.token(t.hash), target: "mod", op: "==", value: t.modRevision }], [{ type: "delete", key: keys.token(t.hash) }]);
      if (r.succeeded) n++;
    }
    return n;
  }

  /** True if a live token with this secret exists (used to keep the bootstrap admin token). */
  async exists(secret: string): Promise<boolean> {
    if (!isWellFormedSecret(secret)) return false;
    const kv = await this.store.get(keys.token(sha256Hex(secret)));
    if (!kv) return false;
    const rec = dec(TokenRecord, kv.value);
    return !rec.successorId && !isExpired(rec, this.clock.now());
  }
}

export { Role };
