import { describe, expect, it } from "vitest";
import { dhcpConf } from "../../agent/network/dhcp.js";

const net = { vni: 4096, cidr: "10.0.0.0/24", gateway: "10.0.0.1", mtu: 1390, vms: [{ mac: "02:AA:00:00:00:02", ip: "10.0.0.3" }, { mac: "02:aa:00:00:00:01", ip: "10.0.0.2" }] };

describe("DHCP on tenant bridges", () => {
  it("serves only static reservations on its own bridge, with the gateway and the network MTU, and no DNS", () => {
    const c = dhcpConf(net, "/state/dhcp");
    expect(c).toContain("interface=vmnet4096\nbind-interfaces\n");
    expect(c).toContain("dhcp-range=10.0.0.0,static,255.255.255.0,1h");
    expect(c).toContain("dhcp-host=02:aa:00:00:00:01,10.0.0.2\ndhcp-host=02:aa:00:00:00:02,10.0.0.3\n");
    expect(c).toContain("dhcp-option=option:router,10.0.0.1");
    expect(c).toContain("dhcp-option=option:mtu,1390");
    expect(c).toContain("port=0");
    // Requests flood over the mesh to other hosts' servers: they must stay silent, not NAK.
    expect(c).not.toContain("dhcp-authoritative");
    expect(c).toContain("dhcp-ignore=tag:!known");
  });
  it("renders the same VMs the same way whatever their order, so nothing restarts for nothing", () => {
    expect(dhcpConf({ ...net, vms: [...net.vms].reverse() }, "/d")).toBe(dhcpConf(net, "/d"));
  });
});
