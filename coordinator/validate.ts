// Request validation: pure, field-naming INVALID_ARGUMENT errors, applied
// before anything touches the store.
import { invalid } from "../common/errors.js";
import { checkLabels, checkName } from "../common/names.js";
import { declaredListen } from "../common/listen-label.js";
import { HostLossPolicy, type VmSpec } from "../gen/noid/v1/vm.js";

export const DRIVERS = ["sandbox", "qemu", "firecracker"] as const;

/** A day: a VM whose host is lost longer than that is rescheduled at the latest then (with the reschedule policy). */
export const MAX_HOST_LOSS_GRACE_SECONDS = 86_400;

export const VM_DEFAULTS = { vcpus: 1, memoryMb: 512, diskGb: 1 } as const;

/** Checks a create request and fills defaults for unset (zero) sizes. */
export function normalizeVmSpec(spec: VmSpec | undefined): VmSpec {
  const s: VmSpec = {
    vcpus: spec?.vcpus || VM_DEFAULTS.vcpus,
    memoryMb: spec?.memoryMb || VM_DEFAULTS.memoryMb,
    diskGb: spec?.diskGb || VM_DEFAULTS.diskGb,
    driver: spec?.driver ?? "",
    image: spec?.image ?? "",
    labels: spec?.labels ?? {},
    hostSelector: spec?.hostSelector ?? {},
    host: spec?.host ?? "",
    antiAffinityGroup: spec?.antiAffinityGroup ?? "",
    network: spec?.network ?? "",
    networkGroup: spec?.networkGroup ?? "",
    sshAuthorizedKeys: spec?.sshAuthorizedKeys ?? [],
    hostLoss: spec?.hostLoss,
  };
  if (s.memoryMb < 32) throw invalid("spec.memory_mb", `must be at least 32 (got ${s.memoryMb})`);
  if (s.driver !== "" && !(DRIVERS as readonly string[]).includes(s.driver)) {
    throw invalid("spec.driver", `unknown driver "${s.driver}" (known: ${DRIVERS.join(", ")})`);
  }
  if (s.image !== "" && !/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(s.image)) {
    throw invalid("spec.image", `"${s.image}" is not a valid image name`);
  }
  checkLabels("spec.labels", s.labels);
  declaredListen(s.labels); // the listener detection's declaration must parse
  checkLabels("spec.host_selector", s.hostSelector);
  if (s.host !== "") checkName("spec.host", s.host);
  if (s.antiAffinityGroup !== "") checkName("spec.anti_affinity_group", s.antiAffinityGroup);
  if (s.network !== "" && s.network !== "isolated") checkName("spec.network", s.network);
  if (s.networkGroup !== "") checkName("spec.network_group", s.networkGroup);
  if (s.hostLoss) {
    if (!(s.hostLoss.policy in HostLossPolicy) || s.hostLoss.policy === HostLossPolicy.UNRECOGNIZED) {
      throw invalid("spec.host_loss.policy", `unknown policy ${s.hostLoss.policy}`);
    }
    if (s.hostLoss.graceSeconds > MAX_HOST_LOSS_GRACE_SECONDS) {
      throw invalid("spec.host_loss.grace_seconds", `must be at most ${MAX_HOST_LOSS_GRACE_SECONDS} (got ${s.hostLoss.graceSeconds})`);
    }
  }
  return s;
}

/** A VM reference names the VM by name or by id, not both, not neither. */
export function checkVmRef(ref: { name: string; id: string; owner?: string }): void {
  if (ref.name === "" && ref.id === "") throw invalid("name", "is required (or give id)");
  if (ref.name !== "" && ref.id !== "") throw invalid("name", "give name or id, not both");
  if (ref.name !== "") checkName("name", ref.name);
  if (ref.id !== "" && !/^[0-9a-f]{16}$/.test(ref.id)) throw invalid("id", `"${ref.id}" is not a VM id`);
  if (ref.owner) checkName("owner", ref.owner);
}
