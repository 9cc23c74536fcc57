// The storage port and its two implementations: etcd (the product) and the
// in-memory twin (unit tests). Import from here, not from the files.
export type * from "./store.js";
export { EtcdStore, createEtcdStore, mapEtcdError, prefixRangeEnd, type EtcdStoreOptions } from "./etcd-store.js";
export { MemoryStore, evaluateCompare, compareKeys, type Clock, type MemoryStoreOptions } from "./memory-store.js";
