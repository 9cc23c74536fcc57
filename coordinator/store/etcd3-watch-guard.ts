// A guard around etcd3 1.1.2's watch multiplexer (WatchManager), installed
// once by etcd-store.ts. Two of its behaviours end the coordinator process
// under load (found by the benchmark: 1,000 hosts opening sessions at once,
// BENCHMARKS.md finding 5):
//
// - When its watch stream breaks (e.g. a keepalive timeout while the event
//   loop is busy) it cancels the stream and opens a new one, but the old
//   stream still delivers buffered responses (and a CANCELLED error) to the
//   same handlers. A response whose watch id the manager no longer knows makes
//   it throw ClientRuntimeError("Failed to find watcher for IWatchResponse")
//   from inside the stream's 'data' event: an uncaught exception. Worse, ids
//   restart at 0 on the new stream, so an old response can carry the id of a
//   different, newer watcher. And the old stream's CANCELLED error runs the
//   manager's error handling again, tearing down the new stream.
// - A response for a watcher it does not know (for whatever reason) throws
//   the same way.
//
// The guard: a stream the manager has cancelled is dead: its responses no
// longer reach the manager, nor its error once a newer stream replaced it; and a response for an unknown watcher is
// dropped and counted instead of thrown (watchers that were re-attached
// resume from their last revision, so nothing is lost).
import { WatchManager } from "etcd3/lib/watch.js";

interface StreamLike {
  on(event: string, fn: (...args: unknown[]) => void): StreamLike;
  cancel(): void;
}

interface ManagerInternals {
  client: { watch(): Promise<StreamLike> };
  watchers: { id: string | null }[];
  handleResponse(res: { watch_id: string }): void;
  handleCreatedResponse(res: { canceled?: boolean }): void;
  establishStream(): void;
  queue?: { queue: unknown[] };
  noidGuardedClient?: boolean;
}

export const watchGuardStats = { droppedResponses: 0, deadStreamEvents: 0 };

let installed = false;

/**
 * Wraps a watch stream: after cancel() its responses reach no listener, and
 * its error/end only while it is still the manager's current stream (the
 * manager relies on that CANCELLED error to go idle after it closed its last
 * watcher; once it has opened a new stream, the old one's error would tear
 * the new one down).
 */
export function deadAfterCancel<S extends StreamLike>(stream: S, isCurrent: () => boolean = () => false): S {
  let dead = false;
  const on = stream.on.bind(stream);
  const cancel = stream.cancel.bind(stream);
  stream.cancel = () => {
    dead = true;
    cancel();
  };
  stream.on = (event: string, fn: (...args: unknown[]) => void) =>
    on(event, (...args: unknown[]) => {
      if (dead && (event === "data" || !isCurrent())) {
        watchGuardStats.deadStreamEvents++;
        return;
      }
      fn(...args);
    });
  return stream;
}

export function installEtcdWatchGuard(): void {
  if (installed) return;
  installed = true;
  const proto = WatchManager.prototype as unknown as ManagerInternals;
  const establish = proto.establishStream;
  proto.establishStream = function (this: ManagerInternals) {
    if (!this.noidGuardedClient) {
      this.noidGuardedClient = true;
      const client = this.client;
      const watch = client.watch.bind(client);
      client.watch = () => watch().then((s) => deadAfterCancel(s, () => (this as unknown as { stream?: unknown }).stream === s));
    }
    establish.call(this);
  };
  const handleResponse = proto.handleResponse;
  proto.handleResponse = function (this: ManagerInternals, res) {
    if (!this.watchers.some((w) => w.id === res.watch_id)) {
      watchGuardStats.droppedResponses++;
      return;
    }
    handleResponse.call(this, res);
  };
  const handleCreated = proto.handleCreatedResponse;
  proto.handleCreatedResponse = function (this: ManagerInternals, res) {
    const pending = res.canceled ? this.watchers.some((w) => w.id === null) : (this.queue?.queue.length ?? 0) > 0;
    if (!pending) {
      watchGuardStats.droppedResponses++;
      return;
    }
    handleCreated.call(this, res);
  };
}
