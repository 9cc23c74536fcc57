// Puts VMs on their tenant network, around any hypervisor driver: before a VM on a network
// is created, its network must be on this host (the mesh controller applied a snapshot that
// has the VM: bridge vmnet<vni>, VXLAN, FDB), and the VM's port joins that bridge with the
// network's MTU, address and default route via the distributed gateway. Before a VM starts,
// the guards of its port are in place, so a VM never sends an unguarded frame.
import { NoidError } from "../../common/errors.js";
import type { Capabilities, ExecOptions, ExecResult, HypervisorDriver, VmCreateSpec, VmRuntime } from "../drivers/driver.js";
import type { MeshController } from "./controller.js";
import type { VmAttachment } from "./view.js";

/** The create spec of a VM on its network (pure). */
export function attachedSpec(spec: VmCreateSpec, a: VmAttachment): VmCreateSpec {
  return {
    ...spec,
    net: {
      ...spec.net,
      mac: a.mac || spec.net.mac,
      ip: a.ip || spec.net.ip,
      prefixLen: a.prefixLen,
      bridge: a.bridge,
      mtu: a.mtu,
      gateway: a.gateway,
      networkId: a.networkId,
    },
  };
}

export class NetworkedDriver implements HypervisorDriver {
  readonly name: string;
  exec?: (id: string, argv: string[], opts?: ExecOptions) => Promise<ExecResult>;
  execStream?: HypervisorDriver["execStream"];
  saveState?: HypervisorDriver["saveState"];
  loadState?: HypervisorDriver["loadState"];
  continueSaved?: HypervisorDriver["continueSaved"];
  announce?: HypervisorDriver["announce"];
  checkpoint?: (id: string, name: string) => Promise<void>;
  restore?: (id: string, name: string) => Promise<VmRuntime>;
  pause?: HypervisorDriver["pause"];
  resume?: HypervisorDriver["resume"];
  console?: HypervisorDriver["console"];
  logPath?: HypervisorDriver["logPath"];

  constructor(
    private readonly inner: HypervisorDriver,
    private readonly mesh: Pick<MeshController, "attachment" | "syncGuards" | "guarded">,
    private readonly opts: { waitMs?: number } = {},
  ) {
    this.name = inner.name;
    if (inner.exec) this.exec = (id, argv, o) => inner.exec!(id, argv, o);
    if (inner.execStream) this.execStream = (id, argv, o) => inner.execStream!(id, argv, o);
    if (inner.saveState) this.saveState = (id, dir, o) => inner.saveState!(id, dir, o);
    if (inner.continueSaved) this.continueSaved = (id) => inner.continueSaved!(id);
    if (inner.announce) this.announce = (id) => inner.announce!(id);
    // A restored VM starts running like a started one: its port guards first.
    if (inner.loadState)
      this.loadState = async (id, dir, from) => {
        if (!this.mesh.guarded(id)) await this.mesh.syncGuards();
        if (!this.mesh.guarded(id)) throw new NoidError("UNAVAILABLE", `restoring VM ${id}: its port guards are not in place yet`);
        return inner.loadState!(id, dir, from);
      };
    if (inner.checkpoint) this.checkpoint = (id, n) => inner.checkpoint!(id, n);
    if (inner.restore) this.restore = (id, n) => inner.restore!(id, n);
    if (inner.pause) this.pause = (id) => inner.pause!(id);
    if (inner.resume) this.resume = (id) => inner.resume!(id);
    if (inner.console) this.console = (id) => inner.console!(id);
    if (inner.logPath) this.logPath = (id) => inner.logPath!(id);
  }

  capabilities(): Capabilities {
    return this.inner.capabilities();
  }

  async create(spec: VmCreateSpec): Promise<VmRuntime> {
    if (!spec.net.networkId) return this.inner.create(spec);
    let a: VmAttachment;
    try {
      a = await this.mesh.attachment(spec.id, this.opts.waitMs ?? 15_000);
    } catch (e) {
      throw new NoidError("UNAVAILABLE", e instanceof Error ? e.message : String(e));
    }
    const rt = await this.inner.create(attachedSpec(spec, a));
    // The port exists now: guard it before anything can start on it.
    await this.mesh.syncGuards();
    return rt;
  }

  async start(id: string): Promise<VmRuntime> {
    if (!this.mesh.guarded(id)) await this.mesh.syncGuards();
    if (!this.mesh.guarded(id)) throw new NoidError("UNAVAILABLE", `starting VM ${id}: its port guards are not in place yet`);
    return this.inner.start(id);
  }

  stop(id: string): Promise<VmRuntime> {
    return this.inner.stop(id);
  }

  destroy(id: string): Promise<void> {
    return this.inner.destroy(id);
  }

  inspect(id: string): Promise<VmRuntime | undefined> {
    return this.inner.inspect(id);
  }

  list(): Promise<VmRuntime[]> {
    return this.inner.list();
  }

  recover(): Promise<VmRuntime[]> {
    return this.inner.recover();
  }
}
