// The drivers one agent runs at once, by name. The first is the default: a VM whose spec names
// no driver runs on it. Observation spans every driver; a VM is always handled by the driver
// that has it (a VM's driver never changes under it), so only create looks its driver up by name.
//
// Retired drivers are ones the config no longer enables that still have VMs from an earlier
// run: they are not offered (no new VMs), but their VMs stay observed and managed until
// destroyed, instead of running on unseen.
import type { Logger } from "../../common/logger.js";
import { NoidError, invalid } from "../../common/errors.js";
import type { HypervisorDriver, VmRuntime } from "./driver.js";

export class DriverSet {
  private readonly byName = new Map<string, HypervisorDriver>();
  private readonly enabled: string[];

  constructor(drivers: readonly HypervisorDriver[], retired: readonly HypervisorDriver[] = []) {
    if (drivers.length === 0) throw invalid("drivers", "at least one driver is required");
    for (const d of [...drivers, ...retired]) {
      if (this.byName.has(d.name)) throw invalid("drivers", `driver "${d.name}" is listed twice`);
      this.byName.set(d.name, d);
    }
    this.enabled = drivers.map((d) => d.name);
  }

  /** Enabled drivers in configuration order (what the host offers); the first is the default. */
  get names(): string[] {
    return [...this.enabled];
  }

  /** Drivers kept only for the VMs they still have. */
  get retired(): string[] {
    return [...this.byName.keys()].filter((n) => !this.enabled.includes(n));
  }

  get default(): HypervisorDriver {
    return this.byName.get(this.enabled[0]!)!;
  }

  get(name: string): HypervisorDriver | undefined {
    return this.byName.get(name);
  }

  /** The driver called `name` (enabled or retired), or a clear error naming what this host offers. */
  must(name: string): HypervisorDriver {
    const d = this.byName.get(name);
    if (!d) throw new NoidError("FAILED_PRECONDITION", `driver "${name}" is not enabled on this host (enabled: ${this.names.join(", ")})`);
    return d;
  }

  all(): HypervisorDriver[] {
    return [...this.byName.values()];
  }

  /** Every VM of every driver. A driver whose listing fails fails the observation: acting on half a view could destroy VMs it did not see. */
  async list(): Promise<VmRuntime[]> {
    return (await Promise.all(this.all().map((d) => d.list()))).flat();
  }

  /** Each driver adopts its own VMs; one driver failing to recover does not stop the others. */
  async recover(logger: Logger): Promise<VmRuntime[]> {
    const out: VmRuntime[] = [];
    for (const d of this.all()) {
      try {
        out.push(...(await d.recover()));
      } catch (e) {
        logger.error({ err: e, driver: d.name }, "driver recover failed");
      }
    }
    return out;
  }

  /** The driver that has VM `id`, with what it observes of it. */
  async find(id: string): Promise<{ driver: HypervisorDriver; vm: VmRuntime } | undefined> {
    for (const d of this.all()) {
      const vm = await d.inspect(id);
      if (vm) return { driver: d, vm };
    }
    return undefined;
  }
}
