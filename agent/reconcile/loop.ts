// The reconcile loop: observe -> plan -> apply -> observe again (verify) until the plan is
// empty. Applying is thin: each action is one driver call. Status transitions
// (CREATING, STOPPING, then RUNNING / STOPPED / FAILED with a reason) go to `onStatus`.
//
// Nothing is reconciled before the first desired set arrives: an agent that restarts
// adopts running VMs and must not treat them as orphans before it has heard the coordinator.
//
// Several drivers run at once (DriverSet): observation spans all of them and each action
// goes to the driver the plan names. A create, start or stop that throws, or a VM seen
// failed, is given up on under its current desired state (see plan.ts); only a destroy that
// throws is retried, with backoff.
//
// A start may take long (a QEMU guest boots for seconds under TCG, up to its boot timeout):
// it is applied in flight, not awaited by the pass, so other VMs are not held up. A VM with
// an action in flight is left out of plans until it settles; then a pass verifies it.
import { NoidError } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import type { VmStatusReport } from "../../gen/noid/v1/agent.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import type { VmRuntime } from "../drivers/driver.js";
import type { DriverSet } from "../drivers/driver-set.js";
import { type Action, plan, sameStatus } from "./plan.js";
import type { DesiredVm } from "./types.js";

export interface ReconcileLoopOptions {
  drivers: DriverSet;
  onStatus: (r: VmStatusReport) => void;
  logger: Logger;
  /** Re-observe this often even without changes, to notice VMs that died (default 10 s). */
  resyncMs?: number;
  /** Rounds of plan/apply per pass before giving up until the next pass (default 8). */
  maxRounds?: number;
  /** Retry delay after a VM's destroy failed, doubled per failure up to maxRetryMs. */
  retryMs?: number;
  maxRetryMs?: number;
  now?: () => number;
  /** Runs a VM that moved here from its migration's transferred state (absent: such a VM fails). */
  restore?: (a: Extract<Action, { kind: "restore" }>, vm: DesiredVm) => Promise<void>;
  /** Metrics hook: each pass's duration and result (undefined when it threw), each failed action. */
  observer?: { pass(ms: number, result: PassResult | undefined): void; actionFailed(action: Action["kind"]): void };
}

export interface PassResult {
  converged: boolean;
  rounds: number;
  applied: Action[];
}

interface Failure {
  count: number;
  retryAt: number;
  /** The desired state when it failed: a new desired state is retried at once. */
  desired: string;
}

export class ReconcileLoop {
  private desired: Map<string, DesiredVm> | undefined;
  /** VMs stopped by fencing (see fence.ts): planned as "stopped" until the coordinator's next snapshot. */
  private readonly fenced = new Set<string>();
  private readonly reported = new Map<string, VmStatusReport>();
  private readonly failures = new Map<string, Failure>();
  /** VMs given up on: the desired state they failed under, and why. */
  private readonly givenUp = new Map<string, { desired: string; reason: string }>();
  private running: Promise<PassResult> | undefined;
  /** Starts in flight, by VM; each kicks a pass when it settles. */
  private readonly inflight = new Map<string, Promise<void>>();
  private stopped = false;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;

  constructor(private readonly opts: ReconcileLoopOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** Adopts VMs left by a previous agent run, then reconciles on every change and every resync. */
  async start(): Promise<VmRuntime[]> {
    const adopted = await this.opts.drivers.recover(this.opts.logger);
    this.opts.logger.info({ adopted: adopted.map((v) => `${v.id}:${v.state}`) }, "recovered VMs");
    this.timer = setInterval(() => this.kick(), this.opts.resyncMs ?? 10_000);
    this.timer.unref();
    return adopted;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.again = false;
    await this.running?.catch(() => undefined);
    await Promise.allSettled([...this.inflight.values()]);
  }

  /** Replaces the whole desired set (a snapshot from the coordinator). */
  setDesired(vms: readonly DesiredVm[]): void {
    this.desired = new Map(vms.map((v) => [v.id, v]));
    // A snapshot comes right after the coordinator renewed this host's lease: what it lists is still ours.
    this.fenced.clear();
    this.kick();
  }

  upsert(vm: DesiredVm): void {
    (this.desired ??= new Map()).set(vm.id, vm);
    this.kick();
  }

  /** The VM is no longer assigned here: it becomes an orphan and is destroyed. */
  remove(vmId: string): void {
    this.desired?.delete(vmId);
    // The coordinator unassigns a FAILED VM; if it comes back, it is tried afresh.
    this.givenUp.delete(vmId);
    this.kick();
  }

  /** The desired set as last received (empty before the first snapshot). */
  desiredVms(): DesiredVm[] {
    return [...(this.desired?.values() ?? [])];
  }

  /** Stops these VMs (and keeps them stopped) until the next snapshot; kicks a pass when that is news. */
  fence(vmIds: readonly string[]): void {
    const news = vmIds.filter((id) => !this.fenced.has(id));
    if (news.length === 0) return;
    for (const id of news) this.fenced.add(id);
    this.opts.logger.warn({ vms: news }, "fencing: lease not renewed within the VMs' host-loss grace; stopping them");
    this.kick();
  }

  /** VMs currently fenced. */
  fencedVms(): string[] {
    return [...this.fenced];
  }

  /** Whether the coordinator wants the VM on this host (it has not moved away or been removed). */
  wants(vmId: string): boolean {
    return this.desired?.has(vmId) ?? false;
  }

  /** What the coordinator wants of the VM here, if anything. */
  desiredOf(vmId: string): DesiredVm | undefined {
    return this.desired?.get(vmId);
  }

  /** What the coordinator wants for VM `vmId` on this host, if it is assigned here. */
  desiredVm(vmId: string): DesiredVm | undefined {
    return this.desired?.get(vmId);
  }

  /** The last status sent for every VM, to resend after a reconnect. */
  lastReports(): VmStatusReport[] {
    return [...this.reported.values()];
  }

  /** Requests a pass; passes never overlap, and changes during one cause another. */
  kick(): void {
    if (this.desired === undefined || this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    const t0 = performance.now();
    const observed = this.pass().then(
      (r) => (this.opts.observer?.pass(performance.now() - t0, r), r),
      (e: unknown) => {
        this.opts.observer?.pass(performance.now() - t0, undefined);
        throw e;
      },
    );
    this.running = observed.finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
    this.running.catch((e: unknown) => this.opts.logger.error({ err: e }, "reconcile pass failed"));
  }

  /**
   * Runs `fn` with the VM out of the reconciler's hands (checkpoint, restore), once whatever
   * the reconciler is doing settled. With `until`, the VM stays out of its hands after `fn`
   * until the coordinator's desired state for it is `until` (it sets it after hearing the
   * result) or `holdMs` passed: a restored VM must not be stopped by a desired state that
   * predates the restore.
   */
  async exclusive<T>(vmId: string, fn: () => Promise<T>, until?: DesiredVm["state"], holdMs = 30_000): Promise<T> {
    for (;;) {
      if (this.running) await this.running.catch(() => undefined);
      else if (this.inflight.has(vmId)) await this.inflight.get(vmId)!.catch(() => undefined);
      else break;
    }
    let release!: () => void;
    this.inFlight(vmId, new Promise<void>((r) => (release = r)));
    try {
      const r = await fn();
      if (until) {
        const end = this.now() + holdMs;
        void (async () => {
          while (!this.stopped && this.now() < end && this.desired?.get(vmId)?.state !== until) await new Promise((w) => setTimeout(w, 100));
          // The desired state the VM was given up on before the restore no longer holds.
          this.givenUp.delete(vmId);
          release();
        })();
      } else release();
      return r;
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Resolves when no pass is running or queued and nothing is in flight (for tests and shutdown). */
  async idle(): Promise<void> {
    for (;;) {
      if (this.running) await this.running.catch(() => undefined);
      else if (this.inflight.size > 0) await Promise.allSettled([...this.inflight.values()]);
      else return;
    }
  }

  /** One pass: rounds of observe -> plan -> apply until the plan is empty. */
  async pass(): Promise<PassResult> {
    const applied: Action[] = [];
    const maxRounds = this.opts.maxRounds ?? 8;
    for (let round = 1; round <= maxRounds; round++) {
      const desired = [...(this.desired?.values() ?? [])].map((d) => (this.fenced.has(d.id) && d.state === "running" ? { ...d, state: "stopped" as const } : d));
      const observed = await this.opts.drivers.list();
      const canPause = (name: string) => this.opts.drivers.get(name)?.capabilities().pause === true;
      const actions = plan(desired, observed, this.reported, { drivers: this.opts.drivers.names, failed: this.failedNow(), canPause }).filter((a) =>
        this.mayAct(a.vmId),
      );
      if (actions.length === 0) {
        this.prune(desired, observed);
        return { converged: true, rounds: round - 1, applied };
      }
      const byId = new Map(observed.map((o) => [o.id, o]));
      for (const a of actions) {
        applied.push(a);
        if (a.kind === "start" || a.kind === "restore") this.inFlight(a.vmId, this.apply(a, byId.get(a.vmId)));
        else await this.apply(a, byId.get(a.vmId));
      }
    }
    return { converged: false, rounds: maxRounds, applied };
  }

  /** Given-up VMs whose desired state is still the one they failed under; a new desired state is tried again. */
  private failedNow(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [id, g] of this.givenUp) {
      if ((this.desired?.get(id)?.state ?? "absent") === g.desired) out.set(id, g.reason);
      else this.givenUp.delete(id);
    }
    return out;
  }

  private giveUp(vmId: string, reason: string): void {
    this.givenUp.set(vmId, { desired: this.desired?.get(vmId)?.state ?? "absent", reason });
  }

  private inFlight(vmId: string, p: Promise<void>): void {
    const tracked = p.finally(() => {
      this.inflight.delete(vmId);
      this.kick();
    });
    this.inflight.set(vmId, tracked);
  }

  private mayAct(vmId: string): boolean {
    if (this.inflight.has(vmId)) return false;
    const f = this.failures.get(vmId);
    if (!f) return true;
    const d = this.desired?.get(vmId);
    if ((d?.state ?? "absent") !== f.desired) {
      this.failures.delete(vmId);
      return true;
    }
    return this.now() >= f.retryAt;
  }

  private send(status: VmStatusReport): void {
    if (sameStatus(this.reported.get(status.vmId), status)) return;
    this.reported.set(status.vmId, status);
    this.opts.onStatus(status);
  }

  private transition(vmId: string, phase: VmPhase, o: VmRuntime | undefined, reason = ""): void {
    const d = this.desired?.get(vmId);
    const net = o?.spec.net ?? d?.spec.net;
    this.send({ vmId, phase, reason, ip: net?.ip ?? "", mac: net?.mac ?? "", destroyed: false });
  }

  private async apply(a: Action, o: VmRuntime | undefined): Promise<void> {
    const log = this.opts.logger.child({ vm: a.vmId, action: a.kind, ...(a.kind !== "report" ? { driver: a.driver } : {}) });
    try {
      const d = a.kind === "report" ? undefined : this.opts.drivers.must(a.driver);
      switch (a.kind) {
        case "create":
          this.transition(a.vmId, VmPhase.VM_PHASE_CREATING, undefined);
          await d!.create(a.spec);
          break;
        case "start":
          await d!.start(a.vmId);
          break;
        case "restore": {
          const vm = this.desired?.get(a.vmId);
          if (!this.opts.restore || !vm) throw new NoidError("FAILED_PRECONDITION", "this agent cannot restore a migrated VM");
          await this.opts.restore(a, vm);
          break;
        }
        case "stop":
          this.transition(a.vmId, VmPhase.VM_PHASE_STOPPING, o);
          await d!.stop(a.vmId);
          break;
        case "pause":
          if (!d!.pause) throw new NoidError("FAILED_PRECONDITION", `driver ${d!.name} does not support pause`);
          await d!.pause(a.vmId);
          break;
        case "resume":
          if (!d!.resume) throw new NoidError("FAILED_PRECONDITION", `driver ${d!.name} does not support pause`);
          await d!.resume(a.vmId);
          break;
        case "destroy":
          if (a.reason === "failed") {
            // Said first: the coordinator releases the VM's place as soon as it hears it.
            this.giveUp(a.vmId, a.observedReason ?? "");
            this.transition(a.vmId, VmPhase.VM_PHASE_FAILED, o, a.observedReason ?? "");
          }
          await d!.destroy(a.vmId);
          if (a.reason !== "failed") {
            this.send({ vmId: a.vmId, phase: VmPhase.VM_PHASE_STOPPED, reason: "", ip: "", mac: "", destroyed: true });
          }
          break;
        case "report":
          this.send(a.status);
          break;
      }
      if (a.kind !== "report") log.debug("applied");
    } catch (e) {
      const reason = e instanceof Error ? e.message : String(e);
      log.warn({ err: e }, "action failed");
      this.opts.observer?.actionFailed(a.kind);
      // UNAVAILABLE: something the VM needs is not ready yet (its network's mesh view, a
      // driver's daemon). Retried with backoff; the VM keeps its phase and its host.
      const transient = e instanceof NoidError && e.code === "UNAVAILABLE";
      if (transient && (a.kind === "create" || a.kind === "start" || a.kind === "restore")) {
        this.backOff(a.vmId);
        return;
      }
      // A pause or resume that failed leaves the VM as it was (running or paused), never
      // destroyed: it is reported with the reason and tried again later.
      if (a.kind === "pause" || a.kind === "resume") {
        this.backOff(a.vmId);
        const phase = o?.state === "paused" ? VmPhase.VM_PHASE_PAUSED : VmPhase.VM_PHASE_RUNNING;
        this.transition(a.vmId, phase, o, `${a.kind}: ${reason}`);
        return;
      }
      if (a.kind === "create" || a.kind === "start" || a.kind === "restore" || a.kind === "stop") {
        const why = `${a.kind}: ${reason}`;
        this.giveUp(a.vmId, why);
        this.transition(a.vmId, VmPhase.VM_PHASE_FAILED, o, why);
        return;
      }
      this.backOff(a.vmId);
      const why = a.kind === "destroy" && a.reason === "failed" ? `${a.observedReason ?? ""}; cleaning up: ${reason}` : `${a.kind}: ${reason}`;
      this.transition(a.vmId, VmPhase.VM_PHASE_FAILED, o, why);
    }
  }

  /** The VM's next attempt waits: retryMs doubled per failure in a row, capped at maxRetryMs. */
  private backOff(vmId: string): void {
    const count = (this.failures.get(vmId)?.count ?? 0) + 1;
    const delay = Math.min((this.opts.retryMs ?? 1000) * 2 ** (count - 1), this.opts.maxRetryMs ?? 60_000);
    this.failures.set(vmId, { count, retryAt: this.now() + delay, desired: this.desired?.get(vmId)?.state ?? "absent" });
  }

  /** Forgets VMs that are gone and settled, so memory does not grow with every VM ever seen. */
  private prune(desired: DesiredVm[], observed: VmRuntime[]): void {
    const seen = new Set(observed.map((o) => o.id));
    for (const d of desired) {
      if (d.state === "deleted" && !seen.has(d.id) && this.reported.get(d.id)?.destroyed) {
        this.desired?.delete(d.id);
        this.reported.delete(d.id);
        this.failures.delete(d.id);
        this.givenUp.delete(d.id);
      }
    }
    for (const id of [...this.reported.keys()]) {
      if (!this.desired?.has(id) && !seen.has(id)) {
        this.reported.delete(id);
        this.failures.delete(id);
      }
    }
    for (const id of [...this.givenUp.keys()]) if (!this.desired?.has(id) && !seen.has(id)) this.givenUp.delete(id);
    // A VM that reached its desired state has no failure to back off from any more.
    for (const id of [...this.failures.keys()]) if (this.now() >= (this.failures.get(id)?.retryAt ?? 0)) this.failures.delete(id);
  }
}
