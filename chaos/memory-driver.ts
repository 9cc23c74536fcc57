// The chaos suite's hypervisor: VMs are records, not processes, kept in a JSON
// file so that they outlive a SIGKILLed agent like real VMs do (the restarted
// agent adopts them through recover()). Every change is reported, so the suite
// knows at each moment which VMs "run" on which host.
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import type { Capabilities, HypervisorDriver, VmCreateSpec, VmRuntime } from "../agent/drivers/driver.js";

interface Rec {
  spec: VmCreateSpec;
  state: "running" | "stopped";
}

export class MemoryDriver implements HypervisorDriver {
  private vms = new Map<string, Rec>();

  constructor(
    /** The name the host registers (one the coordinator knows). */
    readonly name: string,
    private readonly file: string,
    private readonly onChange: (running: string[]) => void,
  ) {}

  capabilities(): Capabilities {
    return { exec: false, checkpoint: false, restore: false, resourceLimits: false, limitsReason: "chaos memory driver" };
  }

  private save(): void {
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify([...this.vms.entries()]));
    renameSync(tmp, this.file);
    this.onChange(this.running());
  }

  running(): string[] {
    return [...this.vms.entries()].filter(([, r]) => r.state === "running").map(([id]) => id).sort();
  }

  private rt(id: string, r: Rec): VmRuntime {
    return { id, driver: this.name, state: r.state, reason: "", spec: r.spec, hostPort: "" };
  }

  async create(spec: VmCreateSpec): Promise<VmRuntime> {
    const r = this.vms.get(spec.id) ?? { spec, state: "stopped" as const };
    this.vms.set(spec.id, r);
    this.save();
    return this.rt(spec.id, r);
  }

  private must(id: string): Rec {
    const r = this.vms.get(id);
    if (!r) throw new Error(`no VM ${id}`);
    return r;
  }

  async start(id: string): Promise<VmRuntime> {
    const r = this.must(id);
    r.state = "running";
    this.save();
    return this.rt(id, r);
  }

  async stop(id: string): Promise<VmRuntime> {
    const r = this.must(id);
    r.state = "stopped";
    this.save();
    return this.rt(id, r);
  }

  async destroy(id: string): Promise<void> {
    if (this.vms.delete(id)) this.save();
  }

  async inspect(id: string): Promise<VmRuntime | undefined> {
    const r = this.vms.get(id);
    return r ? this.rt(id, r) : undefined;
  }

  async list(): Promise<VmRuntime[]> {
    return [...this.vms.entries()].map(([id, r]) => this.rt(id, r));
  }

  async recover(): Promise<VmRuntime[]> {
    if (existsSync(this.file)) this.vms = new Map(JSON.parse(readFileSync(this.file, "utf8")) as [string, Rec][]);
    this.onChange(this.running());
    return this.list();
  }
}
