// Wraps service methods: authenticate, authorize the action, run, map errors,
// observe. Handlers receive a typed context and throw NoidError.
import type {
  handleUnaryCall,
  handleServerStreamingCall,
  ServerUnaryCall,
  ServerWritableStream,
  sendUnaryData,
  Metadata,
} from "@grpc/grpc-js";
import type { Logger } from "pino";
import { NoidError } from "../../common/errors.js";
import type { Principal } from "../auth/authorize.js";
import { toServiceError } from "./status.js";

export interface CallContext {
  principal: Principal;
  peer: string;
  /** Aborted when the client cancels or the deadline passes. */
  signal: AbortSignal;
}

export interface Authenticator {
  /** Resolves the bearer token in `metadata`; throws UNAUTHENTICATED. */
  authenticate(metadata: Metadata, peer: string): Promise<Principal>;
}

export interface HandlerDeps {
  auth: Authenticator;
  logger: Logger;
  /** Called once per finished call (metrics hook). */
  onCall?: (method: string, code: number, ms: number) => void;
}

function signalOf(call: { on(ev: "cancelled", f: () => void): unknown }): AbortSignal {
  const ac = new AbortController();
  call.on("cancelled", () => ac.abort());
  return ac.signal;
}

/**
 * Runs one unary call: the answer or the error mapped to a gRPC status, the call counted and
 * timed, unexpected errors logged (never the request: it may carry a password).
 */
function answer<Req, Res>(
  deps: Pick<HandlerDeps, "logger" | "onCall">,
  method: string,
  call: ServerUnaryCall<Req, Res>,
  cb: sendUnaryData<Res>,
  run: (signal: AbortSignal) => Promise<Res>,
): void {
  const t0 = performance.now();
  const signal = signalOf(call);
  void (async () => {
    try {
      const res = await run(signal);
      deps.onCall?.(method, 0, performance.now() - t0);
      cb(null, res);
    } catch (e) {
      const se = toServiceError(e);
      if (!(e instanceof NoidError) || e.code === "INTERNAL") deps.logger.error({ err: e, method }, "call failed");
      deps.onCall?.(method, se.code ?? 13, performance.now() - t0);
      cb(se, null);
    }
  })();
}

export function unary<Req, Res>(
  deps: HandlerDeps,
  method: string,
  fn: (req: Req, ctx: CallContext) => Promise<Res>,
): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) =>
    answer(deps, method, call, cb, async (signal) => {
      const principal = await deps.auth.authenticate(call.metadata, call.getPeer());
      return fn(call.request, { principal, peer: call.getPeer(), signal });
    });
}

/** What an unauthenticated handler gets: no principal. */
export interface AnonymousContext {
  peer: string;
  signal: AbortSignal;
}

/**
 * Like `unary` but without authentication: for Login only, which checks its
 * own credentials (and must rate-limit them itself; see AuthGuard). Every
 * such RPC is marked ANONYMOUS in authorize.ts's METHOD_ACTIONS.
 */
export function anonymous<Req, Res>(
  deps: Omit<HandlerDeps, "auth">,
  method: string,
  fn: (req: Req, ctx: AnonymousContext) => Promise<Res>,
): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) =>
    answer(deps, method, call, cb, (signal) => fn(call.request, { peer: call.getPeer(), signal }));
}

export function serverStream<Req, Res>(
  deps: HandlerDeps,
  method: string,
  fn: (req: Req, ctx: CallContext, send: (msg: Res) => boolean, stream: ServerWritableStream<Req, Res>) => Promise<void>,
): handleServerStreamingCall<Req, Res> {
  return (call: ServerWritableStream<Req, Res>) => {
    const t0 = performance.now();
    const signal = signalOf(call);
    void (async () => {
      try {
        const principal = await deps.auth.authenticate(call.metadata, call.getPeer());
        await fn(call.request, { principal, peer: call.getPeer(), signal }, (m) => call.write(m), call);
        deps.onCall?.(method, 0, performance.now() - t0);
        if (!signal.aborted) call.end();
      } catch (e) {
        const se = toServiceError(e);
        if (!(e instanceof NoidError) || e.code === "INTERNAL") deps.logger.error({ err: e, method }, "stream failed");
        deps.onCall?.(method, se.code ?? 13, performance.now() - t0);
        if (!signal.aborted) call.emit("error", Object.assign(new Error(se.details), se));
      }
    })();
  };
}
