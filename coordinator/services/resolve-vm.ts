// Finding the VM a request names, as the caller may see it. Shared by every
// service that acts on one VM.
import { Role } from "../../gen/noid/v1/auth.js";
import type { Vm } from "../../gen/noid/v1/vm.js";
import { denied, notFound } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { authorize, type Action, type Principal } from "../auth/authorize.js";
import type { VmRepo } from "../state/vm-repo.js";
import { checkVmRef } from "../validate.js";

export function allow(p: Principal, action: Action, owner?: string): void {
  const v = authorize(p, action, owner);
  if (!v.allowed) throw denied(v.reason);
}

/** Only admins may name another owner; everyone else acts as themself. */
export function ownerFor(p: Principal, requested: string): string {
  if (!requested) return p.user;
  checkName("owner", requested);
  if (requested !== p.user && p.role !== Role.ROLE_ADMIN) throw denied(`only admins may act on VMs of another user`);
  return requested;
}

/** Someone else's VM is NOT_FOUND, so its existence does not leak. */
export async function resolveVm(repo: VmRepo, ref: { name: string; id: string; owner: string }, p: Principal, action: Action): Promise<Vm> {
  checkVmRef(ref);
  let vm: Vm | undefined;
  if (ref.id) {
    vm = (await repo.get(ref.id))?.vm;
    if (vm && p.role !== Role.ROLE_ADMIN && vm.owner !== p.user) vm = undefined;
  } else {
    const owner = ownerFor(p, ref.owner);
    vm = (await repo.getByName(owner, ref.name))?.vm;
  }
  if (!vm) throw notFound(`VM "${ref.name || ref.id}"`);
  allow(p, action, vm.owner);
  return vm;
}
