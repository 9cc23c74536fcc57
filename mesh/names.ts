// Device names of the mesh, built in one place. Linux caps interface names at 15 characters;
// VNIs are at most 24 bits (8 digits), so every name here fits.
import { invalid } from "../common/errors.js";

export const WG_IFNAME = "wg-noid";
export const VXLAN_PORT = 4789;
export const MAX_VNI = 0xffffff;

export function checkVni(vni: number): number {
  if (!Number.isInteger(vni) || vni < 1 || vni > MAX_VNI) throw invalid("vni", `${vni} is not in 1..${MAX_VNI}`);
  return vni;
}

/** The VXLAN device of a network: "vx<vni>" (<= 10 chars). */
export const vxlanName = (vni: number): string => `vx${checkVni(vni)}`;
/** The tenant bridge of a network: "vmnet<vni>" (<= 13 chars). */
export const bridgeName = (vni: number): string => `vmnet${checkVni(vni)}`;

/** Names the mesh owns: anything matching these is removed when no network wants it. */
export const isMeshVxlan = (name: string): boolean => /^vx\d+$/.test(name);
export const isMeshBridge = (name: string): boolean => /^vmnet\d+$/.test(name);

/**
 * The distributed gateway's MAC: the same on every host for one network (derived from the
 * VNI, locally administered), so whichever host answers a VM's ARP for the gateway, the
 * VM's frames to it are delivered to the bridge of the host it runs on.
 */
export function gatewayMac(vni: number): string {
  checkVni(vni);
  const b = [0x02, 0x6e, 0x67, (vni >> 16) & 0xff, (vni >> 8) & 0xff, vni & 0xff];
  return b.map((x) => x.toString(16).padStart(2, "0")).join(":");
}
