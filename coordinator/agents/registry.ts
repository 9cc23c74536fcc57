// The agent sessions this coordinator holds, by host id, so that requests
// that need a host (exec) can reach it through its session.
import type { AgentMigrationCommand, AgentMigrationResult } from "../../gen/noid/v1/migration.js";
import type {
  AgentCheckpointCommand,
  AgentCheckpointResult,
  AgentExecCommand,
  AgentExecInput,
  AgentExecOutput,
  AgentStreamInput,
  AgentStreamOpen,
  AgentStreamOutput,
} from "../../gen/noid/v1/agent.js";

export interface StreamHandle {
  /** Forwards console input, or closes the stream (the client went away). */
  input(kind: NonNullable<AgentStreamInput["kind"]>): void;
}

export interface ExecHandle {
  /** Stops the command (the client went away). */
  cancel(): void;
  /** Forwards stdin or a signal. */
  input(kind: NonNullable<AgentExecInput["kind"]>): void;
}

export interface ExecChannel {
  /** Sends the command; `onOutput` receives everything the agent sends back for it. */
  exec(cmd: AgentExecCommand, onOutput: (o: AgentExecOutput) => void): ExecHandle;
  /** Sends a checkpoint command; resolves with the agent's result (an error result when the session ends first). */
  checkpoint(cmd: AgentCheckpointCommand): Promise<AgentCheckpointResult>;
  /** Opens a console or log stream; `onOutput` receives its bytes and its end (an error end when the session ends first). */
  stream(open: AgentStreamOpen, onOutput: (o: AgentStreamOutput) => void): StreamHandle;
  /** Sends a migration step; resolves with the agent's result (an error result when the session ends first). */
  migration(cmd: AgentMigrationCommand): Promise<AgentMigrationResult>;
}

export class SessionRegistry {
  private readonly sessions = new Map<string, ExecChannel>();

  set(hostId: string, s: ExecChannel): void {
    this.sessions.set(hostId, s);
  }

  /** Removes the entry only if it is still this session (a newer one may have replaced it). */
  delete(hostId: string, s: ExecChannel): void {
    if (this.sessions.get(hostId) === s) this.sessions.delete(hostId);
  }

  get(hostId: string): ExecChannel | undefined {
    return this.sessions.get(hostId);
  }
}
