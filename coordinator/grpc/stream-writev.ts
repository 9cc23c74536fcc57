// Server streams that hand every queued message to HTTP/2 at once.
//
// grpc-js 1.14's server streams (ServerWritableStreamImpl for server
// streaming, ServerDuplexStreamImpl for bidi) are Node Writables with only
// `_write`: a message is handed to the HTTP/2 stream when the previous one's
// write has completed, which is reported on a later turn of the event loop.
// On a busy coordinator (turns of 10-100 ms) a stream that has N messages to
// send takes N turns: a WatchVms or WatchEvents follower, an exec or console
// stream, saw a burst of changes seconds late (BENCHMARKS.md finding 12; the
// agent session protocol works around it with batches of its own).
//
// Writable calls `_writev` with everything buffered behind a write in
// progress when a class has one. Ours passes each message to the call's
// sendMessage in order, in the same turn, and completes when the last one's
// write has: HTTP/2 queues them on the stream in that order, and flow control
// still holds them back for a slow reader (the Writable buffers as before
// when the HTTP/2 stream's own buffer is full, since its write callbacks
// come late). Only for the call grpc-js makes when the server has no
// interceptors (BaseServerInterceptingCall, which serialises and writes at
// once); behind interceptors (ServerInterceptingCall) a message may be held
// while an interceptor works on it, and ones handed over together could
// overtake it, so there they go one after another as before.
import { createRequire } from "node:module";

type Callback = (err?: Error | null) => void;
interface CallLike {
  sendMessage(message: unknown, callback: Callback): void;
}
interface StreamProto {
  _writev?: (this: { call: CallLike }, chunks: { chunk: unknown }[], callback: Callback) => void;
}

const require = createRequire(import.meta.url);
const serverCall = require("@grpc/grpc-js/build/src/server-call.js") as { ServerWritableStreamImpl: { prototype: StreamProto }; ServerDuplexStreamImpl: { prototype: StreamProto } };
const interceptors = require("@grpc/grpc-js/build/src/server-interceptors.js") as { BaseServerInterceptingCall: abstract new (...a: never[]) => object };
/** The call grpc-js makes when the server has no interceptors: it serialises and writes at once. */
const writesAtOnce = (call: CallLike): boolean => call instanceof interceptors.BaseServerInterceptingCall;

const noop = () => undefined;

/** Sends `chunks` in order on `call`; `callback` once the last one is written. */
export function sendAll(call: CallLike, chunks: readonly { chunk: unknown }[], callback: Callback): void {
  if (chunks.length === 0) return callback();
  if (writesAtOnce(call)) {
    const last = chunks.length - 1;
    for (let i = 0; i < last; i++) call.sendMessage(chunks[i]!.chunk, noop);
    call.sendMessage(chunks[last]!.chunk, callback);
    return;
  }
  let i = 0;
  const next = (err?: Error | null): void => {
    if (err || i === chunks.length) return callback(err);
    call.sendMessage(chunks[i++]!.chunk, next);
  };
  next();
}

let installed = false;

/** Gives grpc-js's server stream classes a `_writev` (once per process). */
export function installServerStreamWritev(): void {
  if (installed) return;
  installed = true;
  for (const cls of [serverCall.ServerWritableStreamImpl, serverCall.ServerDuplexStreamImpl]) {
    if (cls.prototype._writev) continue; // a grpc-js that has its own
    cls.prototype._writev = function (chunks, callback) {
      sendAll(this.call, chunks, callback);
    };
  }
}
