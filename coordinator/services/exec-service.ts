// ExecService: runs a command in a VM through its host's agent session.
// The environment given with a command is passed through and never stored
// or logged (the audit event names the variables, not their values).
import { randomBytes } from "node:crypto";
import type { ServerDuplexStream } from "@grpc/grpc-js";
import type { AuditEvent } from "../../gen/noid/v1/audit.js";
import type { ExecRequest, ExecResponse, ExecServiceServer, ExecStart } from "../../gen/noid/v1/exec.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import { NoidError, invalid, precondition } from "../../common/errors.js";
import type { HandlerDeps } from "../grpc/handler.js";
import { toServiceError } from "../grpc/status.js";
import type { ExecHandle, SessionRegistry } from "../agents/registry.js";
import type { AgentExecInput } from "../../gen/noid/v1/agent.js";
import type { VmRepo } from "../state/vm-repo.js";
import { resolveVm } from "./resolve-vm.js";

export interface ExecServiceDeps extends HandlerDeps {
  repo: VmRepo;
  sessions: SessionRegistry;
  audit: (e: Omit<AuditEvent, "id" | "time">) => Promise<void>;
}

export const EXEC_DEFAULT_TIMEOUT_S = 300;
export const EXEC_MAX_TIMEOUT_S = 3600;
export const EXEC_SIGNAL_NAMES = ["INT", "TERM", "KILL", "HUP", "QUIT"] as const;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

/** Pure validation of an exec request. */
export function checkExecStart(s: ExecStart): void {
  if (s.argv.length === 0) throw invalid("start.argv", "a command is required");
  if (s.argv.length > 1024) throw invalid("start.argv", "at most 1024 arguments");
  if (s.argv.some((a) => a.length > 65536)) throw invalid("start.argv", "an argument is longer than 64 KiB");
  if ((s.argv[0] ?? "") === "") throw invalid("start.argv", "the command must not be empty");
  for (const [k, v] of Object.entries(s.env)) {
    if (!ENV_NAME.test(k)) throw invalid("start.env", `"${k}" is not a valid variable name`);
    if (v.length > 65536) throw invalid("start.env", `the value of ${k} is longer than 64 KiB`);
  }
  if (s.timeoutSeconds > EXEC_MAX_TIMEOUT_S) throw invalid("start.timeout_seconds", `must be at most ${EXEC_MAX_TIMEOUT_S}`);
}

export function execService(d: ExecServiceDeps): ExecServiceServer {
  return {
    exec(call: ServerDuplexStream<ExecRequest, ExecResponse>) {
      let finished = false;
      let cancelAgent: (() => void) | undefined;
      let handle: ExecHandle | undefined;
      // stdin/signals sent before the command reached its host are forwarded once it has.
      const early: NonNullable<AgentExecInput["kind"]>[] = [];
      let earlyBytes = 0;
      let timer: NodeJS.Timeout | undefined;
      const finish = (err?: unknown) => {
        if (finished) return;
        finished = true;
        if (timer) clearTimeout(timer);
        if (err) call.emit("error", Object.assign(new Error("exec failed"), toServiceError(err)));
        else call.end();
      };
      call.on("cancelled", () => {
        cancelAgent?.();
        finished = true;
        if (timer) clearTimeout(timer);
      });
      call.on("error", () => cancelAgent?.());

      const start = async (s: ExecStart) => {
        const principal = await d.auth.authenticate(call.metadata, call.getPeer());
        const vm = await resolveVm(d.repo, { name: s.name, id: s.id, owner: s.owner }, principal, "vm.exec");
        checkExecStart(s);
        if (vm.status?.phase !== VmPhase.VM_PHASE_RUNNING) {
          throw precondition(`VM "${vm.name}" is not running (${VmPhase[vm.status?.phase ?? 0]?.replace("VM_PHASE_", "") ?? "unknown"})`);
        }
        const channel = d.sessions.get(vm.status.hostId);
        if (!channel) throw new NoidError("UNAVAILABLE", `host ${vm.status.hostName} of VM "${vm.name}" is not connected`);
        const timeout = s.timeoutSeconds || EXEC_DEFAULT_TIMEOUT_S;
        await d.audit({
          event: "vm.exec",
          user: principal.user,
          vm: vm.name,
          host: vm.status.hostName,
          success: true,
          detail: `${s.argv.join(" ").slice(0, 512)}${Object.keys(s.env).length ? ` (env: ${Object.keys(s.env).join(", ")})` : ""}`,
          peer: call.getPeer(),
        });
        // The agent enforces the timeout; this guard ends the call if the agent never answers.
        timer = setTimeout(() => {
          cancelAgent?.();
          finish(new NoidError("DEADLINE_EXCEEDED", `exec in VM "${vm.name}" did not finish within ${timeout} s`));
        }, (timeout + 15) * 1000);
        const h = channel.exec(
          { execId: randomBytes(8).toString("hex"), vmId: vm.id, argv: s.argv, env: s.env, timeoutSeconds: timeout, stdin: s.stdin },
          (o) => {
            if (finished) return;
            if (o.error) return finish(new NoidError("UNAVAILABLE", `exec in VM "${vm.name}": ${o.error}`));
            if (!o.output) return;
            call.write(o.output);
            if (o.output.kind?.$case === "exit") finish();
          },
        );
        cancelAgent = h.cancel;
        handle = h;
        for (const k of early.splice(0)) h.input(k);
      };

      let started = false;
      let startMsg: ExecStart | undefined;
      call.on("data", (m: ExecRequest) => {
        const k = m.kind;
        if (!started) {
          started = true;
          if (k?.$case !== "start") return finish(invalid("kind", "the first message must be start"));
          startMsg = k.value;
          start(k.value).catch((e: unknown) => finish(e));
          return;
        }
        if (finished || !k) return;
        let fwd: NonNullable<AgentExecInput["kind"]>;
        if (k.$case === "signal") {
          if (!(EXEC_SIGNAL_NAMES as readonly string[]).includes(k.value)) {
            cancelAgent?.();
            return finish(invalid("signal", `"${k.value}" is not one of ${EXEC_SIGNAL_NAMES.join(", ")}`));
          }
          fwd = { $case: "signal", value: k.value };
        } else if (k.$case === "stdin") {
          if (!startMsg?.stdin) {
            cancelAgent?.();
            return finish(invalid("stdin", "the exec was started without stdin (set start.stdin)"));
          }
          fwd = { $case: "stdin", value: k.value };
        } else if (k.$case === "stdinEof") {
          fwd = { $case: "stdinEof", value: true };
        } else return finish(invalid("kind", "start may be sent only once"));
        if (handle) handle.input(fwd);
        else {
          earlyBytes += fwd.$case === "stdin" ? fwd.value.length : 0;
          if (earlyBytes > 1 << 20) {
            cancelAgent?.();
            return finish(new NoidError("RESOURCE_EXHAUSTED", "more than 1 MiB of stdin before the command started"));
          }
          early.push(fwd);
        }
      });
      call.on("end", () => {
        if (!started) finish(invalid("kind", "the stream ended before start"));
      });
    },
  };
}
