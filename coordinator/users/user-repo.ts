// Users and their SSH keys in etcd. Every change is one transaction with its
// audit event (linked into the audit chain by the store) and, where a change
// ends sessions, the deletes of those sessions.
import { SshKeyRecord, UserRecord } from "../../gen/noid/v1/records.js";
import { NoidError, alreadyExists, notFound } from "../../common/errors.js";
import type { Op, Store } from "../store/store.js";
import { dec, enc } from "../state/codec.js";
import { auditPut, type AuditInput } from "../audit-log.js";
import { SecretBox } from "./secret-box.js";
import type { Logger } from "pino";
import { WatchedCopy } from "../state/watched-copy.js";

const byAdded = (a: SshKeyRecord, b: SshKeyRecord) => (a.addedAt?.getTime() ?? 0) - (b.addedAt?.getTime() ?? 0);

export const userKeys = {
  user: (name: string) => `users/${name}`,
  usersPrefix: "users/",
  /** SshKeyRecord; id = sha256 hex of the key blob. */
  sshKey: (user: string, id: string) => `sshkeys/${user}/${id}`,
  sshKeysPrefix: (user: string) => `sshkeys/${user}/`,
  sshKeysAll: "sshkeys/",
} as const;

export interface Clock {
  now(): Date;
}

export interface StoredUser {
  record: UserRecord;
  modRevision: number;
  /**
   * Why the record's TOTP secrets could not be opened (another replica's key): the record
   * then carries none, so it must not be written back (that would drop 2FA). Login checks it
   * after the password, so it tells nothing to someone who does not know the password.
   */
  sealError?: NoidError;
}

/** Bounds what one user can make the coordinator store and hand to VMs. */
export const MAX_SSH_KEYS = 32;

export type AuditFields = Pick<AuditInput, "user" | "peer" | "detail" | "event">;

/**
 * Records in memory carry TOTP secrets in plaintext; in etcd they are sealed
 * (secret-box.ts). Every write goes through encode(); get() opens what it reads
 * and reseals a record still holding a plaintext secret (from before
 * encryption) on the spot.
 */
export class UserRepo {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly box: SecretBox,
  ) {
    this.keyCopy = new WatchedCopy(store, userKeys.sshKeysAll, (b) => dec(SshKeyRecord, b), (key) => {
      if (key === undefined) this.keysOf.clear();
      else this.keysOf.delete(key.split("/")[1] ?? "");
    });
  }

  private audit(a: AuditFields): Op {
    return auditPut({ ...a, vm: "", host: "", success: true }, this.clock.now());
  }

  /** The bytes stored for `record`: its TOTP secrets sealed, bound to the user and the field. */
  encode(record: UserRecord): Uint8Array {
    return enc(UserRecord, {
      ...record,
      totpSecret: this.box.seal(record.totpSecret, `users/${record.name}/totp_secret`),
      totpPendingSecret: this.box.seal(record.totpPendingSecret, `users/${record.name}/totp_pending_secret`),
    });
  }

  private decode(bytes: Uint8Array): { record: UserRecord; plaintextAtRest: boolean; sealError?: NoidError } {
    const r = dec(UserRecord, bytes);
    const plain = [r.totpSecret, r.totpPendingSecret].some((s) => s !== "" && !SecretBox.isSealed(s));
    try {
      return {
        record: {
          ...r,
          totpSecret: this.box.open(r.totpSecret, `users/${r.name}/totp_secret`),
          totpPendingSecret: this.box.open(r.totpPendingSecret, `users/${r.name}/totp_pending_secret`),
        },
        plaintextAtRest: plain,
      };
    } catch (e) {
      const err = e instanceof NoidError ? e : new NoidError("INTERNAL", `opening the TOTP secret of ${r.name}`, { cause: e });
      return { record: { ...r, totpSecret: "", totpPendingSecret: "" }, plaintextAtRest: false, sealError: err };
    }
  }

  async get(name: string): Promise<StoredUser | undefined> {
    const key = userKeys.user(name);
    const kv = await this.store.get(key);
    if (!kv) return undefined;
    const { record, plaintextAtRest, sealError } = this.decode(kv.value);
    if (sealError) return { record, modRevision: kv.modRevision, sealError };
    if (!plaintextAtRest) return { record, modRevision: kv.modRevision };
    // Migrate: seal the plaintext secret now, if nobody changed the record meanwhile.
    const r = await this.store.txn([{ key, target: "mod", op: "==", value: kv.modRevision }], [{ type: "put", key, value: this.encode(record) }]);
    if (!r.succeeded) return this.get(name);
    return { record, modRevision: r.revision };
  }

  async list(): Promise<UserRecord[]> {
    const r = await this.store.list(userKeys.usersPrefix);
    return r.kvs.map((kv) => this.decode(kv.value).record);
  }

  async create(record: UserRecord, audit: AuditFields): Promise<void> {
    const key = userKeys.user(record.name);
    const r = await this.store.txn([{ key, target: "create", op: "==", value: 0 }], [{ type: "put", key, value: this.encode(record) }, this.audit(audit)]);
    if (!r.succeeded) throw alreadyExists(`user "${record.name}"`);
  }

  /** Writes `next` if the record is still the one read; CONFLICT otherwise (the caller read stale data). */
  async update(cur: StoredUser, next: UserRecord, audit: AuditFields | undefined, extraOps: Op[] = []): Promise<number> {
    if (cur.sealError) throw cur.sealError;
    const key = userKeys.user(cur.record.name);
    const r = await this.store.txn(
      [{ key, target: "mod", op: "==", value: cur.modRevision }],
      [{ type: "put", key, value: this.encode(next) }, ...extraOps, ...(audit ? [this.audit(audit)] : [])],
    );
    if (!r.succeeded) throw new NoidError("CONFLICT", `user "${cur.record.name}" changed concurrently; retry`);
    return r.revision;
  }

  /** Returns the revision written. */
  async delete(cur: StoredUser, audit: AuditFields, extraOps: Op[] = []): Promise<number> {
    const key = userKeys.user(cur.record.name);
    const r = await this.store.txn(
      [{ key, target: "mod", op: "==", value: cur.modRevision }],
      [{ type: "delete", key }, { type: "deletePrefix", prefix: userKeys.sshKeysPrefix(cur.record.name) }, ...extraOps, this.audit(audit)],
    );
    if (!r.succeeded) throw new NoidError("CONFLICT", `user "${cur.record.name}" changed concurrently; retry`);
    return r.revision;
  }

  /** The SSH key records, kept by a watch (startSshKeyCache); this repository's own writes are in it before they return. */
  private readonly keyCopy: WatchedCopy<SshKeyRecord>;
  /** Per user: the public keys in the order added, from the copy (dropped when one of theirs changes). */
  private readonly keysOf = new Map<string, string[]>();

  startSshKeyCache(logger: Logger): Promise<void> {
    return this.keyCopy.start(logger);
  }

  stopSshKeyCache(): Promise<void> {
    return this.keyCopy.stop();
  }

  /** The public keys of `user`, oldest first (from the copy while it may be trusted). */
  async sshKeysFor(user: string): Promise<string[]> {
    const c = this.keyCopy.trusted();
    if (!c) return (await this.listSshKeys(user)).map((k) => k.publicKey);
    let got = this.keysOf.get(user);
    if (!got) {
      const prefix = userKeys.sshKeysPrefix(user);
      got = c
        .values()
        .filter((e) => e.key.startsWith(prefix))
        .map((e) => e.value)
        .sort(byAdded)
        .map((k) => k.publicKey);
      this.keysOf.set(user, got);
    }
    return [...got];
  }

  async listSshKeys(user: string): Promise<SshKeyRecord[]> {
    const r = await this.store.list(userKeys.sshKeysPrefix(user));
    return r.kvs.map((kv) => dec(SshKeyRecord, kv.value)).sort(byAdded);
  }

  /** Adds a key once; the count limit is checked against what was read (a race may add one extra, which is harmless). */
  async addSshKey(user: string, id: string, rec: SshKeyRecord, audit: AuditFields): Promise<void> {
    const existing = await this.store.list(userKeys.sshKeysPrefix(user));
    if (existing.kvs.length >= MAX_SSH_KEYS) throw new NoidError("RESOURCE_EXHAUSTED", `user ${user} already has ${MAX_SSH_KEYS} SSH keys (the limit)`);
    const key = userKeys.sshKey(user, id);
    const r = await this.store.txn([{ key, target: "create", op: "==", value: 0 }], [{ type: "put", key, value: enc(SshKeyRecord, rec) }, this.audit(audit)]);
    if (!r.succeeded) throw alreadyExists(`SSH key ${rec.fingerprint} of user ${user}`);
    await this.keyCopy.settled(r.revision);
  }

  async removeSshKey(user: string, id: string, fingerprint: string, audit: AuditFields): Promise<void> {
    const key = userKeys.sshKey(user, id);
    const r = await this.store.txn([{ key, target: "create", op: ">", value: 0 }], [{ type: "delete", key }, this.audit(audit)]);
    if (!r.succeeded) throw notFound(`SSH key ${fingerprint} of user ${user}`);
    await this.keyCopy.settled(r.revision);
  }
}
