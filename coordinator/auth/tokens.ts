// API tokens in etcd: tokens/<sha256> -> TokenRecord. The secret is never stored.
import type { Metadata } from "@grpc/grpc-js";
import { Role } from "../../gen/noid/v1/auth.js";
import { TokenRecord } from "../../gen/noid/v1/records.js";
import { NoidError, alreadyExists, notFound } from "../../common/errors.js";
import type { Store } from "../store/store.js";
import { keys, lastSegment } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import type { Principal } from "./authorize.js";
import type { Authenticator } from "../grpc/handler.js";
import { isWellFormedSecret, newSecret, sha256Hex, tokenId } from "./secret.js";

export interface TokenEntry {
  hash: string;
  record: TokenRecord;
  modRevision: number;
}

export interface Clock {
  now(): Date;
}

export class TokenStore implements Authenticator {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock = { now: () => new Date() },
  ) {}

  async authenticate(metadata: Metadata, _peer: string): Promise<Principal> {
    const raw = metadata.get("authorization")[0];
    if (typeof raw !== "string" || raw.length === 0) {
      throw new NoidError("UNAUTHENTICATED", "missing authorization: send 'authorization: Bearer <token>'");
    }
    const m = /^Bearer\s+(\S+)$/i.exec(raw.trim());
    const secret = m?.[1] ?? "";
    if (!isWellFormedSecret(secret)) throw new NoidError("UNAUTHENTICATED", "malformed bearer token");
    // Looking the record up by the secret's hash is the comparison: etcd
    // never sees the secret and the hash is compared inside etcd's index.
    const kv = await this.store.get(keys.token(sha256Hex(secret)));
    if (!kv) throw new NoidError("UNAUTHENTICATED", "invalid or revoked token");
    const rec = dec(TokenRecord, kv.value);
    if (rec.expiresAt && rec.expiresAt.getTime() <= this.clock.now().getTime()) {
      throw new NoidError("UNAUTHENTICATED", `token ${rec.name} has expired`);
    }
    return { user: rec.user, role: rec.role, tokenId: rec.id, tokenName: rec.name };
  }

  async list(): Promise<TokenEntry[]> {
    const r = await this.store.list(keys.tokensPrefix);
    return r.kvs.map((kv) => ({ hash: lastSegment(kv.key), record: dec(TokenRecord, kv.value), modRevision: kv.modRevision }));
  }

  /** Creates a token; the name is unique. Returns the secret, once. */
  async create(input: { name: string; user: string; role: Role; ttlSeconds: number }): Promise<{ secret: string; record: TokenRecord }> {
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
    };
    const r = await this.store.txn(
      [{ key: keys.token(hash), target: "create", op: "==", value: 0 }],
      [{ type: "put", key: keys.token(hash), value: enc(TokenRecord, record) }],
    );
    if (!r.succeeded) throw new NoidError("INTERNAL", "token hash collision");
    return { secret, record };
  }

  async find(ref: { id?: string; name?: string }): Promise<TokenEntry> {
    const all = await this.list();
    const t = all.find((e) => (ref.id ? e.record.id === ref.id : e.record.name === ref.name));
    if (!t) throw notFound(`token "${ref.id || ref.name}"`);
    return t;
  }

  async revoke(entry: TokenEntry): Promise<void> {
    await this.store.delete(keys.token(entry.hash));
  }

  /** Replaces the secret, keeping name, user, role and expiry; the old secret stops working at once. */
  async rotate(entry: TokenEntry): Promise<{ secret: string; record: TokenRecord }> {
    const secret = newSecret();
    const hash = sha256Hex(secret);
    const record: TokenRecord = { ...entry.record, id: tokenId(hash), createdAt: this.clock.now() };
    const r = await this.store.txn(
      [
        { key: keys.token(entry.hash), target: "mod", op: "==", value: entry.modRevision },
        { key: keys.token(hash), target: "create", op: "==", value: 0 },
      ],
      [
        { type: "delete", key: keys.token(entry.hash) },
        { type: "put", key: keys.token(hash), value: enc(TokenRecord, record) },
      ],
    );
    if (!r.succeeded) throw new NoidError("CONFLICT", `token "${entry.record.name}" changed while rotating; retry`);
    return { secret, record };
  }

  /** True if a token with this secret exists (used to keep the bootstrap admin token). */
  async exists(secret: string): Promise<boolean> {
    if (!isWellFormedSecret(secret)) return false;
    return (await this.store.get(keys.token(sha256Hex(secret)))) !== undefined;
  }
}

export { Role };
