// EventService: list and follow the cluster's events. Admins see all; other
// roles see only the events of their own VMs (see event-log.ts visibleTo).
import type { EventServiceServer, ListEventsRequest, WatchEventsRequest } from "../../gen/noid/v1/event.js";
import { denied, invalid } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { authorize } from "../auth/authorize.js";
import type { EventFilter, EventLog } from "../events/event-log.js";
import { serverStream, unary, type HandlerDeps } from "../grpc/handler.js";

const KIND = /^[a-z][a-z0-9_-]{0,31}(\.[a-z0-9_-]{1,32}){0,3}$/;

/** Validates the filter fields both RPCs share; throws INVALID_ARGUMENT naming the field. */
export function eventFilter(req: Pick<ListEventsRequest | WatchEventsRequest, "vm" | "host" | "kind" | "since">): EventFilter {
  if (req.vm) checkName("vm", req.vm);
  if (req.host) checkName("host", req.host);
  if (req.kind && !KIND.test(req.kind)) throw invalid("kind", `"${req.kind}" is not an event kind (e.g. vm.phase, host, security)`);
  return {
    ...(req.vm ? { vm: req.vm } : {}),
    ...(req.host ? { host: req.host } : {}),
    ...(req.kind ? { kind: req.kind } : {}),
    ...(req.since ? { since: req.since } : {}),
  };
}

export function eventService(d: HandlerDeps & { events: EventLog }): EventServiceServer {
  return {
    listEvents: unary(d, "ListEvents", async (req, ctx) => {
      const v = authorize(ctx.principal, "event.list");
      if (!v.allowed) throw denied(v.reason);
      if (req.limit > 10_000) throw invalid("limit", "must be at most 10000");
      const events = await d.events.list({ ...eventFilter(req), limit: req.limit || 100 }, ctx.principal);
      return { events };
    }),

    watchEvents: serverStream(d, "WatchEvents", async (req, ctx, send) => {
      const v = authorize(ctx.principal, "event.watch");
      if (!v.allowed) throw denied(v.reason);
      await d.events.follow(eventFilter(req), ctx.principal, (event) => send({ event }), ctx.signal);
    }),
  };
}
