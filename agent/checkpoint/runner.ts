// Runs the checkpoint commands the coordinator sends: save a VM's state into a checkpoint file
// (packed, optionally encrypted, measured) or restore one. Files live under
// <stateDir>/checkpoints/<vm id>/<checkpoint id>.ckpt; names come from ids, never from clients.
//
// A restore checks everything before touching the VM: the file's SHA-256 against the record,
// the key (an encrypted checkpoint is decrypted and authenticated into a temporary file), the
// container's structure. Only then is the VM replaced. Keys are used in memory and never logged.
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../common/logger.js";
import { NoidError, isNoidError, precondition } from "../../common/errors.js";
import type { AgentCheckpointCommand, AgentCheckpointResult } from "../../gen/noid/v1/agent.js";
import type { DriverSet } from "../drivers/driver-set.js";
import { decryptFile, digestFile, encryptFile, isEncrypted, parseKey, readContainer, writeContainer } from "./format.js";

const ID = /^[0-9a-f]{8,64}$/;

export interface VmHold {
  exclusive<T>(vmId: string, fn: () => Promise<T>, until?: "running" | "stopped" | "deleted"): Promise<T>;
}

export class CheckpointRunner {
  private readonly root: string;

  constructor(
    stateDir: string,
    private readonly drivers: DriverSet,
    private readonly hold: VmHold,
    private readonly logger: Logger,
  ) {
    this.root = join(stateDir, "checkpoints");
  }

  fileOf(vmId: string, checkpointId: string): string {
    return join(this.root, vmId, `${checkpointId}.ckpt`);
  }

  run(cmd: AgentCheckpointCommand, send: (r: AgentCheckpointResult) => void): void {
    const base = { opId: cmd.opId, error: "", errorCode: "", driver: "", sizeBytes: 0, sha256: "" };
    (cmd.restore ? this.restore(cmd) : this.save(cmd)).then(
      (r) => send({ ...base, ...r }),
      (e: unknown) => {
        const code = isNoidError(e) ? e.code : "INTERNAL";
        const error = e instanceof Error ? e.message : String(e);
        this.logger.warn({ vmId: cmd.vmId, checkpoint: cmd.checkpointId, restore: cmd.restore, err: error }, "checkpoint command failed");
        send({ ...base, error, errorCode: code });
      },
    );
  }

  /** Removes every checkpoint file of a VM (it was destroyed). */
  forget(vmId: string): void {
    if (ID.test(vmId)) rmSync(join(this.root, vmId), { recursive: true, force: true });
  }

  private async driverOf(vmId: string, capability: "checkpoint" | "restore") {
    if (!ID.test(vmId)) throw new NoidError("INVALID_ARGUMENT", `bad VM id ${JSON.stringify(vmId)}`);
    const found = await this.drivers.find(vmId);
    if (!found) throw precondition(`VM ${vmId} is not on this host`);
    const d = found.driver;
    if (!d.capabilities()[capability]) throw precondition(`driver ${d.name} does not support ${capability}`);
    if (!(capability === "checkpoint" ? d.saveState : d.loadState)) throw precondition(`driver ${d.name} does not support ${capability} through the agent yet`);
    return found;
  }

  private async save(cmd: AgentCheckpointCommand): Promise<Partial<AgentCheckpointResult>> {
    if (!ID.test(cmd.checkpointId)) throw new NoidError("INVALID_ARGUMENT", "bad checkpoint id");
    const key = cmd.key.length ? parseKey(cmd.key) : undefined;
    const { driver, vm } = await this.driverOf(cmd.vmId, "checkpoint");
    if (vm.state !== "running" && vm.state !== "paused") throw precondition(`VM ${cmd.vmId} is not running (${vm.state})`);
    const file = this.fileOf(cmd.vmId, cmd.checkpointId);
    if (existsSync(file)) throw new NoidError("ALREADY_EXISTS", `checkpoint ${cmd.checkpointId} exists on this host`);
    const work = `${file}.work`;
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true, mode: 0o700 });
    try {
      const files = await this.hold.exclusive(cmd.vmId, () => driver.saveState!(cmd.vmId, work));
      const container = join(work, "container");
      await writeContainer(container, files);
      for (const f of files) rmSync(f.path, { force: true });
      if (key) await encryptFile(container, `${file}.tmp`, key);
      else renameSync(container, `${file}.tmp`);
      renameSync(`${file}.tmp`, file);
      const dg = await digestFile(file);
      this.logger.info({ vmId: cmd.vmId, checkpoint: cmd.checkpointId, size: dg.size, encrypted: key !== undefined }, "checkpoint saved");
      return { driver: driver.name, sizeBytes: dg.size, sha256: dg.sha256 };
    } finally {
      rmSync(work, { recursive: true, force: true });
      rmSync(`${file}.tmp`, { force: true });
    }
  }

  private async restore(cmd: AgentCheckpointCommand): Promise<Partial<AgentCheckpointResult>> {
    const source = cmd.sourceVmId || cmd.vmId;
    if (!ID.test(cmd.checkpointId) || !ID.test(source)) throw new NoidError("INVALID_ARGUMENT", "bad checkpoint or VM id");
    const { driver } = await this.driverOf(cmd.vmId, "restore");
    const file = this.fileOf(source, cmd.checkpointId);
    if (!existsSync(file)) throw new NoidError("NOT_FOUND", `checkpoint file ${file} is missing on this host`);
    const work = join(this.root, cmd.vmId, `restore-${cmd.opId.replace(/[^0-9a-f]/g, "")}.work`);
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true, mode: 0o700 });
    try {
      const dg = await digestFile(file);
      if (cmd.sha256 && dg.sha256 !== cmd.sha256) {
        throw precondition(`checkpoint file ${file} does not match its record (sha256 ${dg.sha256}, recorded ${cmd.sha256}): nothing restored`);
      }
      let container = file;
      if (isEncrypted(file)) {
        if (!cmd.key.length) throw precondition("this checkpoint is encrypted: give its key (--key-file)");
        container = join(work, "container");
        await decryptFile(file, container, parseKey(cmd.key));
      }
      const sections = await readContainer(container, join(work, "state"));
      if (container !== file) rmSync(container, { force: true });
      this.logger.info({ vmId: cmd.vmId, checkpoint: cmd.checkpointId, sections }, "checkpoint verified; restoring");
      await this.hold.exclusive(
        cmd.vmId,
        () => driver.loadState!(cmd.vmId, join(work, "state"), { mac: cmd.savedMac, ip: cmd.savedIp }),
        "running",
      );
      return { driver: driver.name, sizeBytes: dg.size, sha256: dg.sha256 };
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
}
