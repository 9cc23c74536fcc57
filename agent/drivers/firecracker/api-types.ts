// Request and response bodies of the Firecracker API. Field names are the API's own
// (snake_case, as in src/firecracker/swagger/firecracker.yaml of firecracker-microvm/firecracker,
// checked against the 1.17.0-dev swagger); only the parts this driver uses are typed.
// Optional fields are left out of a body rather than sent as null: Firecracker rejects
// fields it does not know, so what we do not set we do not send.

export interface MachineConfiguration {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
  huge_pages?: "None" | "Transparent" | "2M";
}

export interface BootSource {
  kernel_image_path: string;
  boot_args?: string;
  initrd_path?: string;
}

export interface TokenBucket {
  size: number;
  refill_time: number;
  one_time_burst?: number;
}

export interface RateLimiter {
  bandwidth?: TokenBucket;
  ops?: TokenBucket;
}

export interface Drive {
  drive_id: string;
  is_root_device: boolean;
  is_read_only?: boolean;
  path_on_host?: string;
  partuuid?: string;
  cache_type?: "Unsafe" | "Writeback";
  io_engine?: "Sync" | "Async";
  rate_limiter?: RateLimiter;
}

export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  /** Only in newer API versions (present in 1.17.0-dev, absent in 1.9.0-dev). */
  mtu?: number;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
}

export interface Vsock {
  guest_cid: number;
  uds_path: string;
}

export interface MmdsConfig {
  network_interfaces: string[];
  version?: "V1" | "V2";
  ipv4_address?: string;
}

export interface Logger {
  log_path?: string;
  level?: "Error" | "Warning" | "Info" | "Debug" | "Trace" | "Off";
  show_level?: boolean;
  show_log_origin?: boolean;
}

export interface Metrics {
  metrics_path: string;
}

export type ActionType = "InstanceStart" | "SendCtrlAltDel" | "FlushMetrics";

export interface InstanceActionInfo {
  action_type: ActionType;
}

export interface VmState {
  state: "Paused" | "Resumed";
}

export interface SnapshotCreateParams {
  snapshot_path: string;
  mem_file_path: string;
  snapshot_type?: "Full" | "Diff";
}

export interface MemoryBackend {
  backend_type: "File" | "Uffd";
  backend_path: string;
}

/** Only in newer API versions (present in 1.17.0-dev, absent in 1.9.0-dev). */
export interface NetworkOverride {
  iface_id: string;
  host_dev_name: string;
}

export interface SnapshotLoadParams {
  snapshot_path: string;
  /** Exactly one of mem_backend and the deprecated mem_file_path. */
  mem_backend?: MemoryBackend;
  mem_file_path?: string;
  track_dirty_pages?: boolean;
  resume_vm?: boolean;
  network_overrides?: NetworkOverride[];
}

export interface InstanceInfo {
  app_name: string;
  id: string;
  state: "Not started" | "Running" | "Paused";
  vmm_version: string;
}

/** The API's error body. */
export interface ApiError {
  fault_message?: string;
}

/** One API call as data: what the config builder returns and the fake records. */
export interface ApiCall {
  method: "GET" | "PUT" | "PATCH";
  path: string;
  body?: unknown;
}
