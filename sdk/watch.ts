// Server streams as async iterables: the stream opens when iteration starts,
// is cancelled when the consumer stops early or the signal aborts, and an
// abort ends the iteration quietly instead of surfacing CANCELLED.
import type { ClientReadableStream } from "@grpc/grpc-js";
import { toApiError } from "./errors.js";

export async function* iterateStream<T>(
  open: () => ClientReadableStream<T>,
  what: string,
  signal?: AbortSignal,
): AsyncGenerator<T, void, undefined> {
  if (signal?.aborted) return;
  const call = open();
  const onAbort = (): void => call.cancel();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for await (const msg of call) yield msg as T;
  } catch (e) {
    if (signal?.aborted) return;
    throw toApiError(e, "read", what);
  } finally {
    signal?.removeEventListener("abort", onAbort);
    // A consumer that broke out of its loop leaves the call open; close it.
    call.cancel();
  }
}
