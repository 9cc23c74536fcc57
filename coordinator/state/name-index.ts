// Which VM names exist, from the VMs informer (ClusterState.vms): the create
// group commit (VmRepo) reads from etcd only the names this index knows, and
// lets the transaction's "name absent" compare guard the rest. The index may
// lag etcd either way; neither way weakens anything: a name it does not know
// yet fails the transaction (the group is decided again, names read from
// etcd), a name it still knows is read from etcd before it is refused.
// Lookups by name (VmRepo.getByName) take the id it knows as a guess to
// check against the VM record read from etcd, saving the name key's read.
import type { Vm } from "../../gen/noid/v1/vm.js";
import type { Change, Informer } from "./informer.js";
import type { VmNameIndex } from "./vm-repo.js";

export class InformerNameIndex implements VmNameIndex {
  /** "owner/name" -> ids of the VM records that carry it (one, or more only for a moment while ids change), latest last. */
  private readonly names = new Map<string, string[]>();
  private readonly offs: (() => void)[];

  constructor(private readonly vms: Informer<Vm>) {
    this.rebuild();
    this.offs = [vms.onChange((c) => this.apply(c)), vms.onResync(() => this.rebuild())];
  }

  has(owner: string, name: string): boolean {
    return this.names.has(`${owner}/${name}`);
  }

  idOf(owner: string, name: string): string | undefined {
    return this.names.get(`${owner}/${name}`)?.at(-1);
  }

  stop(): void {
    for (const off of this.offs) off();
  }

  private rebuild(): void {
    this.names.clear();
    for (const e of this.vms.values()) this.add(e.value);
  }

  private apply(c: Change<Vm>): void {
    if (c.prev) this.remove(c.prev.value);
    if (c.type === "put") this.add(c.entry.value);
  }

  private add(vm: Vm): void {
    const k = `${vm.owner}/${vm.name}`;
    const ids = this.names.get(k);
    if (ids) ids.push(vm.id);
    else this.names.set(k, [vm.id]);
  }

  private remove(vm: Vm): void {
    const k = `${vm.owner}/${vm.name}`;
    const ids = this.names.get(k);
    if (!ids) return;
    const at = ids.indexOf(vm.id);
    if (at >= 0) ids.splice(at, 1);
    if (ids.length === 0) this.names.delete(k);
  }
}
