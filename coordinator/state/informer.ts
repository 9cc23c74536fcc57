// A local, always-current copy of one key prefix: list once, then watch from
// the list's revision. Every reader in the coordinator (scheduler, agent
// sessions, watches) uses informers instead of polling etcd.
import { EventEmitter } from "node:events";
import type { Logger } from "pino";
import type { Store, Watcher, WatchEvent } from "../store/store.js";

export interface Entry<T> {
  key: string;
  value: T;
  modRevision: number;
  createRevision: number;
}

export type Change<T> =
  | { type: "put"; entry: Entry<T>; prev?: Entry<T> }
  | { type: "delete"; key: string; prev?: Entry<T> };

export class Informer<T> {
  private readonly items = new Map<string, Entry<T>>();
  private readonly events = new EventEmitter();
  private watcher?: Watcher;
  private stopped = false;
  /** Highest revision applied to the copy. */
  revision = 0;

  constructor(
    private readonly store: Store,
    readonly prefix: string,
    private readonly decode: (bytes: Uint8Array) => T,
    private readonly logger: Logger,
  ) {
    this.events.setMaxListeners(0);
  }

  async start(): Promise<void> {
    const listed = await this.store.list(this.prefix);
    this.items.clear();
    for (const kv of listed.kvs) {
      this.items.set(kv.key, { key: kv.key, value: this.decode(kv.value), modRevision: kv.modRevision, createRevision: kv.createRevision });
    }
    this.revision = listed.revision;
    this.events.emit("resync");
    this.watcher = await this.store.watch(this.prefix, {
      fromRevision: listed.revision + 1,
      prevKv: false,
      onEvents: (evs) => this.apply(evs),
      onError: (err) => {
        if (this.stopped) return;
        this.logger.warn({ err, prefix: this.prefix }, "watch broke; listing again");
        void this.restart();
      },
    });
  }

  private async restart(): Promise<void> {
    await this.watcher?.cancel().catch(() => undefined);
    for (let delay = 200; !this.stopped; delay = Math.min(delay * 2, 5000)) {
      try {
        await this.start();
        return;
      } catch (err) {
        this.logger.warn({ err, prefix: this.prefix }, "relist failed");
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  private apply(evs: WatchEvent[]): void {
    for (const ev of evs) {
      if (ev.type === "put") {
        const entry: Entry<T> = {
          key: ev.kv.key,
          value: this.decode(ev.kv.value),
          modRevision: ev.kv.modRevision,
          createRevision: ev.kv.createRevision,
        };
        const prev = this.items.get(entry.key);
        this.items.set(entry.key, entry);
        this.revision = Math.max(this.revision, ev.kv.modRevision);
        this.events.emit("change", prev ? { type: "put", entry, prev } : { type: "put", entry });
      } else {
        const prev = this.items.get(ev.key);
        this.items.delete(ev.key);
        this.revision = Math.max(this.revision, ev.modRevision);
        this.events.emit("change", prev ? { type: "delete", key: ev.key, prev } : { type: "delete", key: ev.key });
      }
    }
    this.events.emit("applied", this.revision);
  }

  get(key: string): Entry<T> | undefined {
    return this.items.get(key);
  }

  values(): Entry<T>[] {
    return [...this.items.values()];
  }

  get size(): number {
    return this.items.size;
  }

  onChange(f: (c: Change<T>) => void): () => void {
    this.events.on("change", f);
    return () => this.events.off("change", f);
  }

  /** Called after a full (re)list replaced the copy. */
  onResync(f: () => void): () => void {
    this.events.on("resync", f);
    return () => this.events.off("resync", f);
  }

  /** Resolves once the copy has applied `revision` (read-your-writes for callers that just wrote). */
  waitFor(revision: number, timeoutMs = 5000): Promise<void> {
    return this.until(() => this.revision >= revision, timeoutMs, `reach revision ${revision}`);
  }

  /**
   * Resolves once the copy holds `key` as etcd does at `modRevision` (or
   * later), or holds no `key` when `modRevision` is undefined (etcd has none);
   * rejects after `timeoutMs`. Unlike waitFor, this ends as soon as this
   * key is caught up, whatever was written elsewhere since.
   */
  waitForKey(key: string, modRevision: number | undefined, timeoutMs = 5000): Promise<void> {
    const caught = () => (modRevision === undefined ? !this.items.has(key) : (this.items.get(key)?.modRevision ?? 0) >= modRevision);
    return this.until(caught, timeoutMs, `catch up with ${key}`);
  }

  /** Resolves once `caught()` holds, checked after every change applied and every resync; rejects after `timeoutMs`. */
  private async until(caught: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (caught()) return;
    await new Promise<void>((resolve, reject) => {
      const done = () => {
        clearTimeout(t);
        this.events.off("applied", on);
        this.events.off("resync", on);
      };
      const t = setTimeout(() => {
        done();
        reject(new Error(`informer ${this.prefix} did not ${what}`));
      }, timeoutMs);
      const on = () => {
        if (!caught()) return;
        done();
        resolve();
      };
      this.events.on("applied", on);
      this.events.on("resync", on);
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher?.cancel();
  }
}
