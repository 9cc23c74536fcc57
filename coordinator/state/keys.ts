// The etcd key layout (relative to the store prefix "/noid/v1/"), in one place.

export const keys = {
  vm: (id: string) => `vms/${id}`,
  vmsPrefix: "vms/",
  vmName: (owner: string, name: string) => `names/${owner}/${name}`,
  host: (id: string) => `hosts/${id}`,
  hostsPrefix: "hosts/",
  hostName: (name: string) => `hostnames/${name}`,
  alive: (id: string) => `alive/${id}`,
  alivePrefix: "alive/",
  /** -> host id: the host's address in the WireGuard mesh (create-if-absent). */
  meshIp: (ip: string) => `meships/${ip}`,
  meshIpsPrefix: "meships/",
  alloc: (hostId: string) => `alloc/${hostId}`,
  allocPrefix: "alloc/",
  assign: (hostId: string, vmId: string) => `assign/${hostId}/${vmId}`,
  assignPrefix: (hostId: string) => `assign/${hostId}/`,
  token: (sha256hex: string) => `tokens/${sha256hex}`,
  tokensPrefix: "tokens/",
  quota: (user: string) => `quota/${user}`,
  /** Cluster-wide counters (total VMs), compared like a user's quota. */
  total: "quota-total",
  /** JoinTokenRecord of a one-time agent join token, by the SHA-256 of its secret; deleted when used. */
  joinToken: (sha256hex: string) => `join-tokens/${sha256hex}`,
  joinTokensPrefix: "join-tokens/",
  /** HostCertRecord: a host certificate that is valid (issued and not revoked). */
  hostCert: (serial: string) => `host-certs/${serial}`,
  hostCertsPrefix: "host-certs/",
  /** HostCertRecord of a revoked certificate (kept until it would have expired). */
  revokedCert: (serial: string) => `revoked-certs/${serial}`,
  revokedCertsPrefix: "revoked-certs/",
  /** CheckpointRecord of VM `vmId` named `name`; removed with the VM. */
  checkpoint: (vmId: string, name: string) => `checkpoints/${vmId}/${name}`,
  checkpointsOf: (vmId: string) => `checkpoints/${vmId}/`,
  audit: (sortable: string) => `audit/${sortable}`,
  auditPrefix: "audit/",
  /** Prefix of everything a node may be told about; used by tests to scan the keyspace. */
  root: "",
} as const;

/** Last path segment of a key. */
export function lastSegment(key: string): string {
  const i = key.lastIndexOf("/");
  return i < 0 ? key : key.slice(i + 1);
}

// Tenant networks (coordinator/networks). Values are protobuf records except
// where noted as a raw id.
export const netKeys = {
  network: (id: string) => `networks/${id}`,
  networksPrefix: "networks/",
  /** -> network id (raw); unique per owner. */
  netName: (owner: string, name: string) => `netnames/${owner}/${name}`,
  netNamesPrefix: (owner: string) => `netnames/${owner}/`,
  /** TenantNetworksRecord: the owner's networks and CIDRs (overlap check). */
  netOwner: (owner: string) => `netowners/${owner}`,
  /** -> network id (raw); cluster-unique VNI, create-if-absent. */
  vni: (vni: number) => `vni/${vni}`,
  vniPrefix: "vni/",
  /** IpamStateRecord: count and round-robin cursor of one network. */
  ipamState: (networkId: string) => `ipamstate/${networkId}`,
  /** -> VM id (raw); one key per address held, create-if-absent. */
  ipam: (networkId: string, ip: string) => `ipam/${networkId}/${ip}`,
  ipamPrefix: (networkId: string) => `ipam/${networkId}/`,
  /** ReleasedAddressRecord: when the address was given back (reuse grace). */
  released: (networkId: string, ip: string) => `released/${networkId}/${ip}`,
  releasedPrefix: (networkId: string) => `released/${networkId}/`,
  /** -> VM id (raw); MACs are cluster-unique. */
  mac: (mac: string) => `macs/${mac}`,
} as const;

// Port exposure (coordinator/ports). Values are protobuf records (port.proto) except where
// noted as raw.
export const portKeys = {
  /** PortMapping; the host port is taken while the key exists. */
  port: (hostId: string, protocol: string, hostPort: number) => `ports/${hostId}/${protocol}/${hostPort}`,
  portsPrefix: "ports/",
  portsOfHost: (hostId: string) => `ports/${hostId}/`,
  /** -> hostname (raw): a port of the host's WireGuard side taken by an HTTP route. */
  meshPort: (hostId: string, port: number) => `meshports/${hostId}/${port}`,
  meshPortsOfHost: (hostId: string) => `meshports/${hostId}/`,
  /** HttpRoute, unique per hostname across the cluster. */
  route: (hostname: string) => `routes/${hostname}`,
  routesPrefix: "routes/",
  /** VmPortsRecord: every key above a VM holds (released with the VM). */
  vmPorts: (vmId: string) => `vmports/${vmId}`,
  /** PortCountRecord: the user's exposures (ports and routes), for the limit. */
  count: (user: string) => `portcount/${user}`,
  /** PortStatusRecord: what the host's agent last reported. */
  status: (hostId: string) => `portstatus/${hostId}`,
  statusPrefix: "portstatus/",
} as const;
