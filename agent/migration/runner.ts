// The agent's part in moving a VM between hosts (the coordinator runs the steps, see
// coordinator/services/migration-service.ts):
//
//   source  export  pause the VM and save memory and disk into one file (the checkpoint
//                   container), keep the VM paused and out of the reconciler's hands, serve
//                   the file on the mesh to the bearer of the migration's token
//   target  import  fetch the file over the mesh (resumable), check size and SHA-256
//   (coordinator: one etcd transaction moves the VM to the target, with the migration id)
//   target          the reconciler creates the VM (same MAC and address) and, instead of
//                   booting it, restores it from the file (restoreIncoming), then announces it
//   source  finish  stop serving, delete the file; the VM, no longer assigned here, is
//                   destroyed by the reconciler (tap, overlay, its share of the host)
//   either  abort   before the switch only: the source runs the VM on, files are deleted
//
// A source never runs a VM on once it is assigned elsewhere: abort and the export's expiry
// resume it only while this host is still the one the coordinator wants it on.
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { NoidError, isNoidError, precondition } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { type AgentMigrationCommand, type AgentMigrationResult, MigrationStep } from "../../gen/noid/v1/migration.js";
import type { HypervisorDriver, StateFile } from "../drivers/driver.js";
import type { DriverSet } from "../drivers/driver-set.js";
import { digestFile, readContainer, writeContainer } from "../checkpoint/format.js";
import type { VmHold } from "../checkpoint/runner.js";
import type { DesiredVm, IncomingMigration } from "../reconcile/types.js";
import { type TransferServer, fetchFile } from "./transfer.js";

const ID = /^[0-9a-f]{8,64}$/;

export interface MigrationRunnerOptions {
  stateDir: string;
  drivers: DriverSet;
  hold: VmHold;
  /** Whether the coordinator still wants the VM on this host. */
  wants: (vmId: string) => boolean;
  /** What the coordinator wants of the VM here (its create spec), if anything. */
  desiredOf?: (vmId: string) => DesiredVm | undefined;
  server: TransferServer;
  logger: Logger;
  /** How long an export waits for its finish or abort before it ends itself (default 10 min). */
  exportTtlMs?: number;
}

interface Export {
  migrationId: string;
  file: string;
  driver: HypervisorDriver;
  release: () => void;
  timer: NodeJS.Timeout;
}

export class MigrationRunner {
  private readonly root: string;
  private readonly exports = new Map<string, Export>();
  /** VMs that moved away: their checkpoint files stay (their records name this host). */
  private readonly moved = new Set<string>();

  constructor(private readonly o: MigrationRunnerOptions) {
    this.root = join(o.stateDir, "migrations");
  }

  fileOf(vmId: string, migrationId: string): string {
    return join(this.root, vmId, `${migrationId}.ckpt`);
  }

  /** A VM exported from here (in progress or moved): its destroy keeps its checkpoint files. */
  movedAway(vmId: string): boolean {
    return this.moved.has(vmId) || this.exports.has(vmId);
  }

  run(cmd: AgentMigrationCommand, send: (r: AgentMigrationResult) => void): void {
    const base: AgentMigrationResult = { opId: cmd.opId, error: "", errorCode: "", url: "", sizeBytes: 0, sha256: "", driver: "" };
    this.step(cmd).then(
      (r) => send({ ...base, ...r }),
      (e: unknown) => {
        const error = e instanceof Error ? e.message : String(e);
        this.o.logger.warn({ vmId: cmd.vmId, migration: cmd.migrationId, step: MigrationStep[cmd.step], err: error }, "migration step failed");
        send({ ...base, error, errorCode: isNoidError(e) ? e.code : "INTERNAL" });
      },
    );
  }

  private step(cmd: AgentMigrationCommand): Promise<Partial<AgentMigrationResult>> {
    if (!ID.test(cmd.vmId) || !ID.test(cmd.migrationId)) return Promise.reject(new NoidError("INVALID_ARGUMENT", "bad VM or migration id"));
    switch (cmd.step) {
      case MigrationStep.MIGRATION_STEP_EXPORT:
        return this.export(cmd);
      case MigrationStep.MIGRATION_STEP_IMPORT:
        return this.import(cmd);
      case MigrationStep.MIGRATION_STEP_FINISH:
        return Promise.resolve(this.finish(cmd.vmId, cmd.migrationId));
      case MigrationStep.MIGRATION_STEP_ABORT:
        return this.abort(cmd.vmId, cmd.migrationId);
      default:
        return Promise.reject(new NoidError("INVALID_ARGUMENT", `unknown migration step ${cmd.step}`));
    }
  }

  private async export(cmd: AgentMigrationCommand): Promise<Partial<AgentMigrationResult>> {
    const { vmId, migrationId } = cmd;
    const found = await this.o.drivers.find(vmId);
    if (!found) throw precondition(`VM ${vmId} is not on this host`);
    const d = found.driver;
    const caps = d.capabilities();
    if (!caps.checkpoint || !caps.restore) throw precondition(`driver ${d.name} does not support checkpoint and restore, which migration needs`);
    if (!d.saveState || !d.continueSaved) throw precondition(`driver ${d.name} cannot keep a VM paused for a migration`);
    if (found.vm.state !== "running") throw precondition(`VM ${vmId} is not running (${found.vm.state})`);
    if (this.exports.has(vmId)) throw precondition(`VM ${vmId} is already being migrated`);
    const file = this.fileOf(vmId, migrationId);
    const work = `${file}.work`;
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true, mode: 0o700 });

    // The VM is held out of the reconciler's hands from the save until finish or abort.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let onSaved!: (f: StateFile[]) => void;
    let onFailed!: (e: unknown) => void;
    const saved = new Promise<StateFile[]>((res, rej) => ((onSaved = res), (onFailed = rej)));
    void this.o.hold
      .exclusive(vmId, async () => {
        try {
          onSaved(await d.saveState!(vmId, work, { keepPaused: true }));
        } catch (e) {
          onFailed(e);
          return;
        }
        await released;
      })
      .catch((e: unknown) => onFailed(e));
    let files: StateFile[];
    try {
      files = await saved; // a failed save left the VM running
    } catch (e) {
      release();
      rmSync(work, { recursive: true, force: true });
      throw e;
    }
    try {
      const container = join(work, "container");
      await writeContainer(container, files);
      renameSync(container, file);
      const dg = await digestFile(file);
      const ttl = this.o.exportTtlMs ?? 10 * 60_000;
      const url = await this.o.server.offer(migrationId, file, cmd.token, ttl);
      const timer = setTimeout(() => void this.expire(vmId, migrationId), ttl);
      timer.unref();
      this.exports.set(vmId, { migrationId, file, driver: d, release, timer });
      this.o.logger.info({ vmId, migration: migrationId, size: dg.size }, "VM paused and its state served for a migration");
      return { url, sizeBytes: dg.size, sha256: dg.sha256, driver: d.name };
    } catch (e) {
      await d.continueSaved(vmId).catch(() => undefined);
      release();
      rmSync(file, { force: true });
      throw e;
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }

  private async import(cmd: AgentMigrationCommand): Promise<Partial<AgentMigrationResult>> {
    const url = new URL(cmd.url);
    if (url.protocol !== "http:" || url.pathname !== `/migrations/${cmd.migrationId}`) throw new NoidError("INVALID_ARGUMENT", "bad migration URL");
    if (!/^[0-9a-f]{64}$/.test(cmd.sha256)) throw new NoidError("INVALID_ARGUMENT", "bad migration checksum");
    const file = this.fileOf(cmd.vmId, cmd.migrationId);
    mkdirSync(join(this.root, cmd.vmId), { recursive: true, mode: 0o700 });
    await fetchFile(cmd.url, cmd.token, file, { size: Number(cmd.sizeBytes), sha256: cmd.sha256, logger: this.o.logger });
    this.o.logger.info({ vmId: cmd.vmId, migration: cmd.migrationId, size: Number(cmd.sizeBytes) }, "migration state received and checked");
    return { sizeBytes: cmd.sizeBytes, sha256: cmd.sha256 };
  }

  /** Source: the VM moved. */
  private finish(vmId: string, migrationId: string): Partial<AgentMigrationResult> {
    const ex = this.exports.get(vmId);
    if (ex?.migrationId !== migrationId) return {};
    this.end(vmId, ex);
    this.moved.add(vmId);
    this.o.logger.info({ vmId, migration: migrationId }, "VM moved away; its state file is deleted");
    return {};
  }

  /** Either side, before the switch: the source runs the VM on; both delete their files. */
  private async abort(vmId: string, migrationId: string): Promise<Partial<AgentMigrationResult>> {
    const ex = this.exports.get(vmId);
    // Target side: whatever was fetched.
    const staged = this.fileOf(vmId, migrationId);
    rmSync(staged, { force: true });
    rmSync(`${staged}.part`, { force: true });
    if (ex?.migrationId !== migrationId) return {};
    // After a failed target the coordinator gives the VM back to this host first; its word
    // may reach this agent's reconciler a moment after this command.
    for (let i = 0; i < 50 && !this.o.wants(vmId); i++) await new Promise((r) => setTimeout(r, 200));
    try {
      if (!this.o.wants(vmId)) throw precondition(`VM ${vmId} is no longer assigned to this host: not resuming it here`);
      // If it was assigned elsewhere for a while, this host may have dropped its network
      // (bridge, guards): create again (idempotent) puts its port back before it runs on.
      const d = this.o.desiredOf?.(vmId);
      if (d) await ex.driver.create(d.spec);
    } finally {
      this.end(vmId, ex);
    }
    await ex.driver.continueSaved!(vmId);
    this.o.logger.info({ vmId, migration: migrationId }, "migration aborted; the VM runs on here");
    return {};
  }

  /** Nobody ended the export: resume the VM if it is still ours, else it moved. */
  private async expire(vmId: string, migrationId: string): Promise<void> {
    const ex = this.exports.get(vmId);
    if (ex?.migrationId !== migrationId) return;
    if (this.o.wants(vmId)) await this.abort(vmId, migrationId).catch((e: unknown) => this.o.logger.warn({ vmId, err: e }, "resuming after an expired migration failed"));
    else this.finish(vmId, migrationId);
  }

  private end(vmId: string, ex: Export): void {
    clearTimeout(ex.timer);
    this.exports.delete(vmId);
    this.o.server.withdraw(ex.migrationId);
    rmSync(ex.file, { force: true });
    ex.release();
  }

  /**
   * Target, from the reconciler: runs the VM (created here, stopped) from the migration's
   * file, checked against the checksum the coordinator recorded, with its own MAC and address
   * (the same as on the source). The file is deleted once the VM runs.
   */
  async restoreIncoming(vm: DesiredVm, driver: HypervisorDriver, incoming: IncomingMigration): Promise<void> {
    if (!ID.test(incoming.migrationId)) throw new NoidError("INVALID_ARGUMENT", "bad migration id");
    if (!driver.loadState) throw precondition(`driver ${driver.name} does not support restore`);
    const file = this.fileOf(vm.id, incoming.migrationId);
    if (!existsSync(file)) throw precondition(`the state of migration ${incoming.migrationId} is not on this host`);
    const work = `${file}.restore`;
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true, mode: 0o700 });
    try {
      const dg = await digestFile(file);
      if (incoming.sha256 && dg.sha256 !== incoming.sha256) throw precondition(`the state of migration ${incoming.migrationId} does not match its checksum`);
      await readContainer(file, join(work, "state"));
      await driver.loadState(vm.id, join(work, "state"), { mac: vm.spec.net.mac, ip: vm.spec.net.ip });
      this.o.logger.info({ vmId: vm.id, migration: incoming.migrationId }, "migrated VM runs here");
    } finally {
      // Used once: the VM runs from it, or failed here (and goes back to its source).
      rmSync(file, { force: true });
      rmSync(work, { recursive: true, force: true });
    }
  }

  /** Everything of a VM's migrations on this host (it was destroyed). */
  forget(vmId: string): void {
    if (ID.test(vmId) && !this.exports.has(vmId)) rmSync(join(this.root, vmId), { recursive: true, force: true });
  }
}
