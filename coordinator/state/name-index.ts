// Which VM names exist, from the VMs informer (ClusterState.vms): the create
// group commit (VmRepo) reads from etcd only the names this index knows, and
// lets the transaction's "name absent" compare guard the rest. The index may
// lag etcd either way; neither way weakens anything: a name it does not know
// yet fails the transaction (the group is decided again, names read from
// etcd), a name it still knows is read from etcd before it is refused.
import type { Vm } from "../../gen/noid/v1/vm.js";
import type { Change, Informer } from "./informer.js";
import type { VmNameIndex } from "./vm-repo.js";

export class InformerNameIndex implements VmNameIndex {
  /** "owner/name" -> how many VM records carry it (1, or more only for a moment while ids change). */
  private readonly names = new Map<string, number>();
  private readonly offs: (() => void)[];

  constructor(private readonly vms: Informer<Vm>) {
    this.rebuild();
    this.offs = [vms.onChange((c) => this.apply(c)), vms.onResync(() => this.rebuild())];
  }

  has(owner: string, name: string): boolean {
    return this.names.has(`${owner}/${name}`);
  }

  stop(): void {
    for (const off of this.offs) off();
  }

  private rebuild(): void {
    this.names.clear();
    for (const e of this.vms.values()) this.add(e.value, 1);
  }

  private apply(c: Change<Vm>): void {
    if (c.prev) this.add(c.prev.value, -1);
    if (c.type === "put") this.add(c.entry.value, 1);
  }

  private add(vm: Vm, n: 1 | -1): void {
    const k = `${vm.owner}/${vm.name}`;
    const v = (this.names.get(k) ?? 0) + n;
    if (v > 0) this.names.set(k, v);
    else this.names.delete(k);
  }
}
