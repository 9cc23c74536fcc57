// The storage port. The etcd implementation (etcd-store.ts) is the product;
// the in-memory twin (memory-store.ts) passes the same contract suite
// (test/contract/store-contract.ts) and serves fast unit tests.
//
// Keys are plain strings; every implementation is given a prefix (e.g. "/noid/v1/")
// at construction and callers use keys relative to it.

export interface KeyValue {
  key: string;
  value: Uint8Array;
  /** Revision of the last change to this key. */
  modRevision: number;
  /** Revision at which this key was created. */
  createRevision: number;
  /** Number of changes since creation (1 after the first put). */
  version: number;
  /** Lease id the key is bound to, or 0. */
  lease: number;
}

/** etcd refuses a transaction with more compares, or more operations in either branch (its default --max-txn-ops). */
export const ETCD_MAX_TXN_OPS = 128;

export type CompareTarget = "mod" | "create" | "version" | "value";
export type CompareOp = "==" | "!=" | "<" | ">";

/**
 * One condition of a transaction. For "create"/"mod"/"version" the value is a
 * number (a key that does not exist has all three equal to 0); for "value", bytes.
 */
export type Compare =
  | { key: string; target: "mod" | "create" | "version"; op: CompareOp; value: number }
  | { key: string; target: "value"; op: CompareOp; value: Uint8Array };

export type Op =
  | { type: "put"; key: string; value: Uint8Array; lease?: number }
  | { type: "delete"; key: string }
  | { type: "deletePrefix"; prefix: string };

export interface TxnResult {
  succeeded: boolean;
  /** Store revision after the transaction (or at which it was evaluated). */
  revision: number;
}

export interface ListOptions {
  /** At most this many keys (the first ones in key order); 0 or absent: all. */
  limit?: number;
  /** Keys and revisions only: every value is empty (a trim or a count need no values). */
  keysOnly?: boolean;
  /** Last key first (with `limit`: the last ones). */
  newestFirst?: boolean;
  /** Only keys before this one (relative, exclusive): the next page after a page ending at it, with `newestFirst`. */
  before?: string;
}

export interface ListResult {
  kvs: KeyValue[];
  /** Keys under the prefix (before `before`), all of them even when `limit` returned fewer. */
  count: number;
  /** Store revision the list was read at; watch from revision + 1 to see every later change. */
  revision: number;
}

export type WatchEvent =
  | { type: "put"; kv: KeyValue; prev?: KeyValue }
  | { type: "delete"; key: string; modRevision: number; prev?: KeyValue };

export interface Watcher {
  /** Stops the watch; no handler call happens after it resolves. */
  cancel(): Promise<void>;
}

export interface WatchOptions {
  /** First revision to deliver (inclusive). Omit for "changes from now on". */
  fromRevision?: number;
  /** Include the previous key-value in events (needed to know what a delete removed). */
  prevKv?: boolean;
  /** Called for each batch of events, in revision order. Awaited before the next batch. */
  onEvents: (events: WatchEvent[]) => void | Promise<void>;
  /** Called if the watch breaks for good (e.g. the start revision was compacted). */
  onError?: (err: Error) => void;
}

export interface Lease {
  readonly id: number;
  /** Renews once; throws NoidError NOT_FOUND if the lease has expired. */
  keepAliveOnce(): Promise<void>;
  revoke(): Promise<void>;
}

export interface Store {
  get(key: string): Promise<KeyValue | undefined>;
  /** Every key starting with `prefix`, sorted by key. */
  list(prefix: string, opts?: ListOptions): Promise<ListResult>;
  /** Atomic: if every compare holds, run `success`, else run `failure` (default none). */
  txn(compares: Compare[], success: Op[], failure?: Op[]): Promise<TxnResult>;
  /** Unconditional single put; returns the new revision. */
  put(key: string, value: Uint8Array, opts?: { lease?: number }): Promise<number>;
  delete(key: string): Promise<number>;
  watch(prefix: string, opts: WatchOptions): Promise<Watcher>;
  /**
   * A lease that lives while it is renewed. `dedicated`: its renewals never queue
   * behind other leases' (etcd: a stream of its own per renewal instead of the shared
   * keepalive stream) — for the leader's lease, which must not expire because a
   * thousand hosts' heartbeats are being renewed at the same time.
   */
  grantLease(ttlSeconds: number, opts?: { dedicated?: boolean }): Promise<Lease>;
  /** Looks up a lease by id (e.g. after a coordinator restart); undefined if gone. */
  leaseTimeToLive(id: number): Promise<number | undefined>;
  /** Drops history before `revision` (etcd compaction); no-op in memory. */
  compact(revision: number): Promise<void>;
  /** Current store revision. */
  revision(): Promise<number>;
  /**
   * True when the store answered a call within the last `ms` and no call has
   * failed for want of it since: caches kept by a watch may then be trusted
   * for a read (tokens). Absent: never known, read the store.
   */
  answeredWithin?(ms: number): boolean;
  close(): Promise<void>;
}
