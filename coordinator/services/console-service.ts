// ConsoleService: a VM's serial console (both ways), its console log, and a host agent's
// recent log lines, each streamed through the session of the host's agent as exec is
// (AgentStreamOpen / AgentStreamInput / AgentStreamOutput). Console and logs need the VM's
// driver to have the capability (FAILED_PRECONDITION naming it otherwise); host logs are for
// admins. Attaching a console is audited (vm.console); what is typed is not recorded.
import { randomBytes } from "node:crypto";
import type { ServerDuplexStream } from "@grpc/grpc-js";
import { AgentStreamKind, type AgentStreamOutput } from "../../gen/noid/v1/agent.js";
import type { AuditEvent } from "../../gen/noid/v1/audit.js";
import type { ConsoleRequest, ConsoleResponse, ConsoleServiceServer, ConsoleStart } from "../../gen/noid/v1/console.js";
import { VmPhase, type Vm } from "../../gen/noid/v1/vm.js";
import { type ErrorCode, NoidError, invalid, notFound } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { serverStream, unary, type HandlerDeps } from "../grpc/handler.js";
import { toServiceError } from "../grpc/status.js";
import type { ExecChannel, SessionRegistry } from "../agents/registry.js";
import type { ClusterState } from "../state/cluster.js";
import type { VmRepo } from "../state/vm-repo.js";
import { missingCapability } from "../lifecycle/lifecycle.js";
import { allow, resolveVm } from "./resolve-vm.js";

export interface ConsoleServiceDeps extends HandlerDeps {
  repo: VmRepo;
  cluster: ClusterState;
  sessions: SessionRegistry;
  audit: (e: Omit<AuditEvent, "id" | "time">) => Promise<void>;
}

/** Most lines a log request may ask for. */
export /** How long HostLogs waits for the agent's whole answer (a bounded ring: it comes at once). */
const HOST_LOGS_TIMEOUT_MS = 10_000;
const MAX_TAIL = 100_000;

const phaseName = (p: VmPhase | undefined): string => (VmPhase[p ?? 0] ?? "UNKNOWN").replace("VM_PHASE_", "");
const streamId = (): string => randomBytes(8).toString("hex");

/** An agent's error end as the NoidError it stands for. */
function agentError(o: AgentStreamOutput, what: string): NoidError {
  const code = (o.errorCode || "UNAVAILABLE") as ErrorCode;
  return new NoidError(code, `${what}: ${o.error}`);
}

export function consoleService(d: ConsoleServiceDeps): ConsoleServiceServer {
  /** The VM's host session, once the VM is where `capability` can be used. */
  function channelFor(vm: Vm, capability: "console" | "logs", needRunning: boolean): ExecChannel {
    const st = vm.status;
    if (!st?.hostId) throw new NoidError("FAILED_PRECONDITION", `VM "${vm.name}" is not placed on a host (${phaseName(st?.phase)})`);
    const why = missingCapability(vm, d.cluster.hostById(st.hostId), capability);
    if (why) throw new NoidError("FAILED_PRECONDITION", `${capability} of VM "${vm.name}": ${why}`);
    if (needRunning && st.phase !== VmPhase.VM_PHASE_RUNNING && st.phase !== VmPhase.VM_PHASE_PAUSED) {
      throw new NoidError("FAILED_PRECONDITION", `VM "${vm.name}" is not running (${phaseName(st.phase)})`);
    }
    const ch = d.sessions.get(st.hostId);
    if (!ch) throw new NoidError("UNAVAILABLE", `host ${st.hostName} of VM "${vm.name}" is not connected`);
    return ch;
  }

  return {
    console(call: ServerDuplexStream<ConsoleRequest, ConsoleResponse>) {
      let finished = false;
      let close: (() => void) | undefined;
      let input: ((b: Buffer) => void) | undefined;
      const early: Buffer[] = [];
      const finish = (err?: unknown) => {
        if (finished) return;
        finished = true;
        close?.();
        if (err) call.emit("error", Object.assign(new Error("console failed"), toServiceError(err)));
        else call.end();
      };
      call.on("cancelled", () => {
        finished = true;
        close?.();
      });
      call.on("error", () => close?.());

      const start = async (s: ConsoleStart) => {
        const principal = await d.auth.authenticate(call.metadata, call.getPeer());
        const vm = await resolveVm(d.repo, { name: s.name, id: s.id, owner: s.owner }, principal, "vm.console");
        const ch = channelFor(vm, "console", true);
        await d.audit({ event: "vm.console", user: principal.user, vm: vm.name, host: vm.status!.hostName, success: true, detail: "", peer: call.getPeer() });
        // The client went away (or detached) while this was checked: open nothing.
        if (finished) return;
        const id = streamId();
        const h = ch.stream({ streamId: id, kind: AgentStreamKind.AGENT_STREAM_KIND_CONSOLE, vmId: vm.id, tail: 0, follow: false }, (o) => {
          if (finished) return;
          if (o.data.length) call.write({ output: Buffer.from(o.data) });
          if (o.end) finish(o.error ? agentError(o, `console of VM "${vm.name}"`) : undefined);
        });
        close = () => h.input({ $case: "close", value: true });
        input = (b) => h.input({ $case: "data", value: b });
        for (const b of early.splice(0)) input(b);
      };

      let started = false;
      // Authentication and the VM lookup of the start message; the end of the client's side
      // waits for it, so a refused start ends with its status, never OK.
      let starting: Promise<void> | undefined;
      call.on("data", (m: ConsoleRequest) => {
        const k = m.kind;
        if (!started) {
          started = true;
          if (k?.$case !== "start") return finish(invalid("kind", "the first message must be start"));
          starting = start(k.value).catch((e: unknown) => finish(e));
          return;
        }
        if (finished || !k) return;
        if (k.$case !== "input") return finish(invalid("kind", "start may be sent only once"));
        if (k.value.length > 64 * 1024) return finish(invalid("input", "at most 64 KiB per message"));
        if (input) input(Buffer.from(k.value));
        else if (early.length < 256) early.push(Buffer.from(k.value));
      });
      // The client closed its side (detached): the console is closed too.
      call.on("end", () => {
        if (!started) finish(invalid("kind", "the stream ended before start"));
        else void (starting ?? Promise.resolve()).then(() => finish());
      });
    },

    vmLogs: serverStream(d, "VmLogs", async (req, ctx, send) => {
      const vm = await resolveVm(d.repo, req, ctx.principal, "vm.logs");
      if (req.tail > MAX_TAIL) throw invalid("tail", `must be at most ${MAX_TAIL}`);
      const ch = channelFor(vm, "logs", false);
      await new Promise<void>((resolve, reject) => {
        const h = ch.stream({ streamId: streamId(), kind: AgentStreamKind.AGENT_STREAM_KIND_VM_LOGS, vmId: vm.id, tail: req.tail, follow: req.follow }, (o) => {
          if (o.data.length && !ctx.signal.aborted) send({ data: Buffer.from(o.data) });
          if (o.end) (o.error ? reject(agentError(o, `logs of VM "${vm.name}"`)) : resolve());
        });
        ctx.signal.addEventListener(
          "abort",
          () => {
            h.input({ $case: "close", value: true });
            resolve();
          },
          { once: true },
        );
      });
    }),

    hostLogs: unary(d, "HostLogs", async (req, ctx) => {
      allow(ctx.principal, "host.logs");
      checkName("host", req.host);
      if (req.tail > MAX_TAIL) throw invalid("tail", `must be at most ${MAX_TAIL}`);
      const host = d.cluster.hostByName(req.host);
      if (!host) throw notFound(`host "${req.host}"`);
      const ch = d.sessions.get(host.id);
      if (!ch) throw new NoidError("UNAVAILABLE", `host ${host.name} is not connected to this coordinator`);
      const chunks: Buffer[] = [];
      await new Promise<void>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        let ended = false;
        const h = ch.stream({ streamId: streamId(), kind: AgentStreamKind.AGENT_STREAM_KIND_HOST_LOGS, vmId: "", tail: req.tail, follow: false }, (o) => {
          if (o.data.length) chunks.push(Buffer.from(o.data));
          if (o.end) {
            ended = true;
            clearTimeout(timer);
            if (o.error) reject(agentError(o, `logs of host ${host.name}`));
            else resolve();
          }
        });
        // An agent that never answers (one without log streams, or stuck) is an answer too.
        if (ended) return;
        timer = setTimeout(() => {
          h.input({ $case: "close", value: true });
          reject(new NoidError("UNAVAILABLE", `host ${host.name}'s agent did not send its logs within ${HOST_LOGS_TIMEOUT_MS / 1000} s`));
        }, HOST_LOGS_TIMEOUT_MS);
        ctx.signal.addEventListener("abort", () => (clearTimeout(timer), h.input({ $case: "close", value: true })), { once: true });
      });
      const lines = Buffer.concat(chunks).toString("utf8").split("\n").filter((l) => l !== "");
      return { lines };
    }),
  };
}
