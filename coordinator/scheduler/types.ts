// Inputs and outputs of the pure scheduler (no I/O anywhere under scheduler/).

export interface Res {
  vcpus: number;
  memoryMb: number;
  diskGb: number;
}

export interface HostView {
  id: string;
  name: string;
  labels: Record<string, string>;
  drivers: string[];
  capacity: Res;
  allocated: Res;
  vmCount: number;
  cordoned: boolean;
  /** True when the cluster requires a passing posture (scheduler.require_posture) and this host's fails or is unknown. */
  postureBlocked?: boolean;
  /** False when the host's lease has expired. Unready hosts get nothing. */
  ready: boolean;
  /** Anti-affinity group -> number of VMs of that group on the host. */
  groups: Record<string, number>;
  /** Network id -> number of VMs of that network on the host. */
  networks: Record<string, number>;
}

export interface VmRequest {
  id: string;
  resources: Res;
  /** Required driver; "" means any. */
  driver: string;
  /** Every pair must be in the host's labels. */
  hostSelector: Record<string, string>;
  /** Host name the VM is pinned to; "" means any. */
  host: string;
  antiAffinityGroup: string;
  networkId: string;
}

export type Policy = "spread" | "binpack";

export type Decision =
  | { vmId: string; placed: true; hostId: string; score: number }
  | {
      vmId: string;
      placed: false;
      /** One line a user can act on, e.g. "no host fits: 2 cordoned, 1 lacks memory (needs 4096 MB)". */
      reason: string;
      /** How many hosts each filter removed, by filter name. */
      filtered: Record<string, number>;
    };
