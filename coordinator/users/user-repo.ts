// Users and their SSH keys in etcd. Every change is one transaction with its
// audit event (linked into the audit chain by the store) and, where a change
// ends sessions, the deletes of those sessions.
import { SshKeyRecord, UserRecord } from "../../gen/noid/v1/records.js";
import { NoidError, alreadyExists, notFound } from "../../common/errors.js";
import type { Op, Store } from "../store/store.js";
import { dec, enc } from "../state/codec.js";
import { auditPut, type AuditInput } from "../audit-log.js";

export const userKeys = {
  user: (name: string) => `users/${name}`,
  usersPrefix: "users/",
  /** SshKeyRecord; id = sha256 hex of the key blob. */
  sshKey: (user: string, id: string) => `sshkeys/${user}/${id}`,
  sshKeysPrefix: (user: string) => `sshkeys/${user}/`,
} as const;

export interface Clock {
  now(): Date;
}

export interface StoredUser {
  record: UserRecord;
  modRevision: number;
}

/** Bounds what one user can make the coordinator store and hand to VMs. */
export const MAX_SSH_KEYS = 32;

export type AuditFields = Pick<AuditInput, "user" | "peer" | "detail" | "event">;

export class UserRepo {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  private audit(a: AuditFields): Op {
    return auditPut({ ...a, vm: "", host: "", success: true }, this.clock.now());
  }

  async get(name: string): Promise<StoredUser | undefined> {
    const kv = await this.store.get(userKeys.user(name));
    return kv ? { record: dec(UserRecord, kv.value), modRevision: kv.modRevision } : undefined;
  }

  async list(): Promise<UserRecord[]> {
    const r = await this.store.list(userKeys.usersPrefix);
    return r.kvs.map((kv) => dec(UserRecord, kv.value));
  }

  async create(record: UserRecord, audit: AuditFields): Promise<void> {
    const key = userKeys.user(record.name);
    const r = await this.store.txn([{ key, target: "create", op: "==", value: 0 }], [{ type: "put", key, value: enc(UserRecord, record) }, this.audit(audit)]);
    if (!r.succeeded) throw alreadyExists(`user "${record.name}"`);
  }

  /** Writes `next` if the record is still the one read; CONFLICT otherwise (the caller read stale data). */
  async update(cur: StoredUser, next: UserRecord, audit: AuditFields | undefined, extraOps: Op[] = []): Promise<void> {
    const key = userKeys.user(cur.record.name);
    const r = await this.store.txn(
      [{ key, target: "mod", op: "==", value: cur.modRevision }],
      [{ type: "put", key, value: enc(UserRecord, next) }, ...extraOps, ...(audit ? [this.audit(audit)] : [])],
    );
    if (!r.succeeded) throw new NoidError("CONFLICT", `user "${cur.record.name}" changed concurrently; retry`);
  }

  async delete(cur: StoredUser, audit: AuditFields, extraOps: Op[] = []): Promise<void> {
    const key = userKeys.user(cur.record.name);
    const r = await this.store.txn(
      [{ key, target: "mod", op: "==", value: cur.modRevision }],
      [{ type: "delete", key }, { type: "deletePrefix", prefix: userKeys.sshKeysPrefix(cur.record.name) }, ...extraOps, this.audit(audit)],
    );
    if (!r.succeeded) throw new NoidError("CONFLICT", `user "${cur.record.name}" changed concurrently; retry`);
  }

  async listSshKeys(user: string): Promise<SshKeyRecord[]> {
    const r = await this.store.list(userKeys.sshKeysPrefix(user));
    return r.kvs.map((kv) => dec(SshKeyRecord, kv.value)).sort((a, b) => (a.addedAt?.getTime() ?? 0) - (b.addedAt?.getTime() ?? 0));
  }

  /** Adds a key once; the count limit is checked against what was read (a race may add one extra, which is harmless). */
  async addSshKey(user: string, id: string, rec: SshKeyRecord, audit: AuditFields): Promise<void> {
    const existing = await this.store.list(userKeys.sshKeysPrefix(user));
    if (existing.kvs.length >= MAX_SSH_KEYS) throw new NoidError("RESOURCE_EXHAUSTED", `user ${user} already has ${MAX_SSH_KEYS} SSH keys (the limit)`);
    const key = userKeys.sshKey(user, id);
    const r = await this.store.txn([{ key, target: "create", op: "==", value: 0 }], [{ type: "put", key, value: enc(SshKeyRecord, rec) }, this.audit(audit)]);
    if (!r.succeeded) throw alreadyExists(`SSH key ${rec.fingerprint} of user ${user}`);
  }

  async removeSshKey(user: string, id: string, fingerprint: string, audit: AuditFields): Promise<void> {
    const key = userKeys.sshKey(user, id);
    const r = await this.store.txn([{ key, target: "create", op: ">", value: 0 }], [{ type: "delete", key }, this.audit(audit)]);
    if (!r.succeeded) throw notFound(`SSH key ${fingerprint} of user ${user}`);
  }
}
