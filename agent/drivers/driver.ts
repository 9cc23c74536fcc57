// The port every hypervisor driver implements. Plans branch on capabilities(),
// never on driver names; optional operations are declared with a capability flag.
import { NoidError } from "../../common/errors.js";

export interface VmNetSpec {
  /** The VM's MAC address (lower-case, colon separated). */
  mac: string;
  /** IPv4 address without prefix; empty when the network has not assigned one yet. */
  ip: string;
  /** Prefix length for `ip` (default 24). */
  prefixLen?: number;
  /** Host bridge to plug the VM's port into; absent leaves the port unattached. */
  bridge?: string;
  mtu?: number;
  /** Default route of the VM (its network's gateway); absent: no default route. */
  gateway?: string;
  /** The tenant network the VM is on (the coordinator's id); absent: none. */
  networkId?: string;
}

/** What a driver needs to create one VM. */
export interface VmCreateSpec {
  id: string;
  vcpus: number;
  memoryMb: number;
  diskGb: number;
  image: string;
  net: VmNetSpec;
  /**
   * The owner's SSH public keys (authorized_keys lines) as the coordinator snapshotted them
   * at create; each driver hands them to the guest its own way (ssh-keys.ts). Absent: none.
   */
  sshAuthorizedKeys?: string[];
}

/** "paused": in memory, frozen (pause()); resume() makes it "running" again. */
export type VmRunState = "running" | "paused" | "stopped" | "failed";

/** What a driver observes about one VM it manages. */
export interface VmRuntime {
  id: string;
  driver: string;
  state: VmRunState;
  /** Why the VM is stopped or failed, when known. */
  reason: string;
  spec: VmCreateSpec;
  /** The host-side network port (TAP or veth) name. */
  hostPort: string;
}

export interface Capabilities {
  exec: boolean;
  checkpoint: boolean;
  restore: boolean;
  /** cpu.max / memory.max are enforced. When false, `limitsReason` says why. */
  resourceLimits: boolean;
  limitsReason?: string;
  /** pause() and resume(). When false, `pauseReason` may say why. */
  pause?: boolean;
  pauseReason?: string;
  /** console(): the VM's serial console, both ways. */
  console?: boolean;
  /** logPath(): the VM's console log (serial output, init output). */
  logs?: boolean;
}

/** The capability names a host reports to the coordinator (those that are true). */
export function capabilityNames(c: Capabilities): string[] {
  const names: (keyof Capabilities)[] = ["exec", "checkpoint", "restore", "resourceLimits", "pause", "console", "logs"];
  return names.filter((n) => c[n] === true);
}

/** An attached serial console: bytes from the guest, bytes to it. */
export interface ConsoleStream {
  onData(f: (b: Buffer) => void): void;
  /** Called once when the console closed (the VM stopped, or close()). */
  onClose(f: (err?: Error) => void): void;
  write(b: Buffer): void;
  close(): void;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  timedOut?: boolean;
}

export interface SpawnExecOptions {
  /** Variables for this command only; never written to disk, argv or logs. */
  env?: Record<string, string>;
  /** Keep stdin open for write(); otherwise the command's stdin is empty. */
  stdin?: boolean;
}

/** Signals a client may send to a command it runs in a VM. */
export const EXEC_SIGNALS = ["INT", "TERM", "KILL", "HUP", "QUIT"] as const;
export type ExecSignal = (typeof EXEC_SIGNALS)[number];

/** A command running in a VM. */
export interface ExecProcess {
  onStdout(f: (b: Buffer) => void): void;
  onStderr(f: (b: Buffer) => void): void;
  write(b: Buffer): void;
  endStdin(): void;
  kill(signal: ExecSignal): void;
  /** Resolves once the command ended and its output was delivered. exitCode is 128+N for signal N. */
  readonly exited: Promise<{ exitCode: number; signal: string }>;
}

export interface ExecOptions {
  /** Variables for this command only; never written to disk, argv or logs. */
  env?: Record<string, string>;
  timeoutMs?: number;
}

export interface SaveStateOptions {
  /** The VM stays paused after the save (a migration: it must not run on and diverge). */
  keepPaused?: boolean;
}

export interface HypervisorDriver {
  readonly name: string;
  capabilities(): Capabilities;
  /** Prepares the VM (network port, cgroup, files) without starting it. Idempotent. */
  create(spec: VmCreateSpec): Promise<VmRuntime>;
  start(id: string): Promise<VmRuntime>;
  stop(id: string): Promise<VmRuntime>;
  /** Removes everything the VM has on the host. Idempotent: destroying a missing VM succeeds. */
  destroy(id: string): Promise<void>;
  /** undefined when the driver does not know the VM. */
  inspect(id: string): Promise<VmRuntime | undefined>;
  list(): Promise<VmRuntime[]>;
  /** After an agent restart: adopt VMs that still run, and clear records of ones that cannot be adopted. */
  recover(): Promise<VmRuntime[]>;
  exec?(id: string, argv: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Streaming exec: output as it comes, stdin, signals. Drivers without it get exec() (batch). */
  execStream?(id: string, argv: string[], opts?: SpawnExecOptions): Promise<ExecProcess>;
  checkpoint?(id: string, name: string): Promise<void>;
  restore?(id: string, name: string): Promise<VmRuntime>;
  /**
   * Writes the VM's state into files under `dir` (memory and disk, taken together while the
   * VM is paused); the VM runs on afterwards. The agent packs, encrypts and records them
   * (agent/checkpoint). Requires capabilities().checkpoint.
   */
  saveState?(id: string, dir: string, opts?: SaveStateOptions): Promise<StateFile[]>;
  /** Runs a VM saved with `keepPaused` on (a migration that did not happen). */
  continueSaved?(id: string): Promise<void>;
  /** Announces the VM's MAC on its network (gratuitous RARP/ARP), after it moved hosts. */
  announce?(id: string): Promise<void>;
  /**
   * Replaces the VM's state with files saveState wrote (in `dir`) and runs it. `from` is the
   * network identity the state was saved with: when it differs from the VM's own (a clone),
   * the guest is given the VM's MAC and address. Requires capabilities().restore.
   */
  loadState?(id: string, dir: string, from: VmNetSpec): Promise<VmRuntime>;
  /** Freezes a running VM in memory (vCPUs or processes); requires capabilities().pause. Idempotent. */
  pause?(id: string): Promise<VmRuntime>;
  /** Continues a paused VM; requires capabilities().pause. Idempotent. */
  resume?(id: string): Promise<VmRuntime>;
  /** Attaches to the VM's serial console; requires capabilities().console. */
  console?(id: string): Promise<ConsoleStream>;
  /** The file the VM's console output goes to; requires capabilities().logs. */
  logPath?(id: string): Promise<string>;
}

/** One file of a saved VM state: a section name and where it is. */
export interface StateFile {
  name: string;
  path: string;
}

/** The error an optional operation throws when the driver lacks the capability. */
export function unsupported(driver: string, capability: keyof Capabilities): NoidError {
  return new NoidError("FAILED_PRECONDITION", `driver ${driver} does not support ${capability}`);
}
