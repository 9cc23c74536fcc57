// Host identities in etcd: one-time join tokens (join-tokens/<sha256>, used
// up atomically in a transaction), the host certificates currently valid
// (host-certs/<serial>) and the revoked ones (revoked-certs/<serial>). A
// host certificate is accepted only while its serial is in host-certs/ and
// names the same host: revoking deletes it there in the same transaction
// that records it in revoked-certs/.
import { HostCertRecord, JoinTokenRecord } from "../../gen/noid/v1/records.js";
import { NoidError, denied, invalid } from "../../common/errors.js";
import { isDnsLabel } from "../../common/names.js";
import type { Compare, Store } from "../store/store.js";
import { keys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import type { Clock } from "../state/vm-repo.js";
import { isWellFormedSecret, newSecret, sha256Hex } from "../auth/secret.js";
import type { ClusterCa, IssuedCert } from "./ca.js";
import type { Logger } from "pino";
import { WatchedCopy } from "../state/watched-copy.js";

export const MAX_JOIN_TOKEN_TTL_SECONDS = 7 * 86_400;

/** The same answer for unknown, used and expired tokens: no hint which. */
const badJoinToken = () => new NoidError("UNAUTHENTICATED", "join token is not valid (unknown, already used or expired)");

export class HostIdentities {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly ca: ClusterCa,
    /** Lifetime of a host certificate. */
    private readonly certTtlSeconds: number,
  ) {
    this.revoked = new WatchedCopy(store, keys.revokedCertsPrefix, (b) => dec(HostCertRecord, b));
  }

  /**
   * The revoked certificates, kept by a watch (startRevocationCache): every
   * heartbeat of every mTLS host checks its certificate, which was an etcd
   * read per heartbeat (500/s with 1,000 hosts). Used only while etcd
   * answers; this replica's revocations are in it before revokeHost returns.
   */
  private readonly revoked: WatchedCopy<HostCertRecord>;

  startRevocationCache(logger: Logger): Promise<void> {
    return this.revoked.start(logger);
  }

  stopRevocationCache(): Promise<void> {
    return this.revoked.stop();
  }

  async createJoinToken(o: { ttlSeconds: number; hostName: string; createdBy: string }): Promise<{ token: string; expiresAt: Date }> {
    if (!Number.isInteger(o.ttlSeconds) || o.ttlSeconds < 1 || o.ttlSeconds > MAX_JOIN_TOKEN_TTL_SECONDS) {
      throw invalid("ttl_seconds", `must be between 1 and ${MAX_JOIN_TOKEN_TTL_SECONDS}`);
    }
    if (o.hostName !== "" && !isDnsLabel(o.hostName)) throw invalid("host_name", `"${o.hostName}" is not a host name`);
    const token = newSecret();
    const now = this.clock.now();
    const expiresAt = new Date(now.getTime() + o.ttlSeconds * 1000);
    const rec: JoinTokenRecord = { expiresAt, hostName: o.hostName, createdBy: o.createdBy, createdAt: now };
    await this.store.put(keys.joinToken(sha256Hex(token)), enc(JoinTokenRecord, rec));
    return { token, expiresAt };
  }

  /**
   * Uses up a join token for host `name`: exactly one caller wins the delete
   * transaction; a used, unknown or expired token is refused the same way.
   */
  async consumeJoinToken(token: string, name: string): Promise<void> {
    if (!isWellFormedSecret(token)) throw badJoinToken();
    const key = keys.joinToken(sha256Hex(token));
    const kv = await this.store.get(key);
    if (!kv) throw badJoinToken();
    const rec = dec(JoinTokenRecord, kv.value);
    if (!rec.expiresAt || rec.expiresAt.getTime() <= this.clock.now().getTime()) {
      await this.store.txn([{ key, target: "mod", op: "==", value: kv.modRevision }], [{ type: "delete", key }]);
      throw badJoinToken();
    }
    if (rec.hostName !== "" && rec.hostName !== name) throw denied(`this join token is for host "${rec.hostName}", not "${name}"`);
    // An open token must not let a new machine take over a host that has an identity.
    if (rec.hostName === "" && (await this.hasValidCert(name))) {
      throw new NoidError(
        "ALREADY_EXISTS",
        `host "${name}" already has a valid certificate; remove it first (noidctl host remove) or use a join token bound to it (--host ${name})`,
      );
    }
    const r = await this.store.txn([{ key, target: "mod", op: "==", value: kv.modRevision }], [{ type: "delete", key }]);
    if (!r.succeeded) throw badJoinToken();
  }

  /**
   * Signs `csrPem` as host `name` and records the certificate as valid. A
   * renewal names the certificate it renews: the record is written only if
   * that one is still valid, so a renewal racing a revocation loses.
   */
  async issue(name: string, csrPem: string, renewing?: string): Promise<IssuedCert> {
    const issued = await this.ca.signHostCsr(csrPem, name, this.certTtlSeconds);
    const rec: HostCertRecord = { serial: issued.serial, hostName: name, notAfter: issued.notAfter, issuedAt: this.clock.now() };
    const r = await this.store.txn(
      renewing ? [this.stillValid(renewing)] : [],
      [{ type: "put", key: keys.hostCert(issued.serial), value: enc(HostCertRecord, rec) }],
    );
    if (!r.succeeded) throw new NoidError("UNAUTHENTICATED", "host certificate is revoked or unknown");
    return issued;
  }

  /** A transaction condition: the certificate `serial` is still valid (not revoked). */
  stillValid(serial: string): Compare {
    return { key: keys.hostCert(serial.toLowerCase()), target: "create", op: ">", value: 0 };
  }

  /** True if host `name` holds any certificate that is valid now. */
  async hasValidCert(name: string): Promise<boolean> {
    const now = this.clock.now().getTime();
    return (await this.store.list(keys.hostCertsPrefix)).kvs.some((kv) => {
      const rec = dec(HostCertRecord, kv.value);
      return rec.hostName === name && (rec.notAfter?.getTime() ?? 0) > now;
    });
  }

  /** True while the certificate with this serial is valid for host `name`. */
  async isValid(serial: string, name: string): Promise<boolean> {
    const kv = await this.store.get(keys.hostCert(serial.toLowerCase()));
    if (!kv) return false;
    const rec = dec(HostCertRecord, kv.value);
    return rec.hostName === name && (rec.notAfter?.getTime() ?? 0) > this.clock.now().getTime();
  }

  /** Revokes every certificate of host `name`; returns their serials. */
  async revokeHost(name: string): Promise<string[]> {
    const revoked: string[] = [];
    let written = 0;
    // A renewal needs a valid certificate of the host, so once a pass finds
    // none left, no new one can appear; a renewal racing a pass is caught by the next.
    for (let found = true; found; ) {
      found = false;
      for (const kv of (await this.store.list(keys.hostCertsPrefix)).kvs) {
        const rec = dec(HostCertRecord, kv.value);
        if (rec.hostName !== name) continue;
        found = true;
        const r = await this.store.txn(
          [{ key: keys.hostCert(rec.serial), target: "mod", op: "==", value: kv.modRevision }],
          [
            { type: "delete", key: keys.hostCert(rec.serial) },
            { type: "put", key: keys.revokedCert(rec.serial), value: enc(HostCertRecord, rec) },
          ],
        );
        if (r.succeeded) written = Math.max(written, r.revision);
        if (!revoked.includes(rec.serial)) revoked.push(rec.serial);
      }
    }
    if (written > 0) await this.revoked.settled(written);
    return revoked;
  }

  async isRevoked(serial: string): Promise<boolean> {
    const key = keys.revokedCert(serial.toLowerCase());
    const copy = this.revoked.trusted();
    if (copy) return copy.get(key) !== undefined;
    return (await this.store.get(key)) !== undefined;
  }

  /** Deletes expired join tokens and records of certificates past their end. */
  async sweep(): Promise<void> {
    const now = this.clock.now().getTime();
    for (const prefix of [keys.hostCertsPrefix, keys.revokedCertsPrefix]) {
      for (const kv of (await this.store.list(prefix)).kvs) {
        if ((dec(HostCertRecord, kv.value).notAfter?.getTime() ?? 0) <= now) await this.store.delete(kv.key);
      }
    }
    for (const kv of (await this.store.list(keys.joinTokensPrefix)).kvs) {
      if ((dec(JoinTokenRecord, kv.value).expiresAt?.getTime() ?? 0) <= now) await this.store.delete(kv.key);
    }
  }
}
