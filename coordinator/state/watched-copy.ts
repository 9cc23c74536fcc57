// A watched copy of one key prefix for a hot read path (tokens per call, SSH
// keys per create, revoked certificates per heartbeat): an Informer that is
// trusted only while the store answers, plus "settled" for read-your-writes.
// Without a recent answer from etcd (no quorum, cut off) the copy may miss a
// change made on another replica, so callers read etcd instead, which then
// fails UNAVAILABLE as it would have without the copy.
import type { Logger } from "pino";
import type { Store } from "../store/store.js";
import { Informer } from "./informer.js";

/** The copy is used while the store answered a call this recently (and none failed since). */
export const COPY_TRUST_MS = 3000;

export class WatchedCopy<T> {
  private informer?: Informer<T>;

  constructor(
    private readonly store: Store,
    private readonly prefix: string,
    private readonly decode: (bytes: Uint8Array) => T,
    /** Called with the key of every change, and with undefined after a full (re)list. */
    private readonly onChanged?: (key: string | undefined) => void,
  ) {}

  async start(logger: Logger): Promise<void> {
    const c = new Informer(this.store, this.prefix, this.decode, logger);
    if (this.onChanged) {
      const f = this.onChanged;
      c.onChange((ch) => f(ch.type === "put" ? ch.entry.key : ch.key));
      c.onResync(() => f(undefined));
    }
    await c.start();
    this.informer = c;
  }

  async stop(): Promise<void> {
    const c = this.informer;
    this.informer = undefined;
    await c?.stop();
  }

  /** The copy when it may be trusted now; undefined: read the store. */
  trusted(): Informer<T> | undefined {
    return this.informer && this.store.answeredWithin?.(COPY_TRUST_MS) ? this.informer : undefined;
  }

  /** Returns once the copy holds the writes up to `revision` (bounded: etcd may be slow; the copy then catches up on its own). */
  async settled(revision: number): Promise<void> {
    await this.informer?.waitFor(revision, 2000).catch(() => undefined);
  }
}
