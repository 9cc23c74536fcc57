import { describe, expect, it } from "vitest";
import { actionCommands, describeAction } from "../../mesh/actions.js";
import { parseLinks } from "../../mesh/links.js";
import { FLOOD_MAC, type NetworkSpec } from "../../mesh/topology.js";
import { parseFdb, planFdb, planNetworks } from "../../mesh/vxlan.js";

// Captured (trimmed) from `bridge -j fdb show dev vx1001` and `ip -j -d addr show` in a lab host.
const FDB = `[{"mac":"e6:10:3f:88:99:e8","flags":[],"master":"vmnet1001","state":"permanent"},{"mac":"02:00:00:00:00:12","dst":"100.64.0.2","flags":["self"],"state":"static"},{"mac":"00:00:00:00:00:00","dst":"100.64.0.2","flags":["self"],"state":"permanent"},{"mac":"00:00:00:00:00:00","dst":"100.64.0.3","flags":["self"],"state":"permanent"}]`;
const LINKS = `[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"],"mtu":65536,"address":"00:00:00:00:00:00","addr_info":[]},
{"ifindex":3,"ifname":"vmnet1001","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1390,"operstate":"UP","address":"02:6e:67:00:03:e9","linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}},"addr_info":[{"family":"inet","local":"10.20.0.1","prefixlen":24,"scope":"global","label":"vmnet1001"}]},
{"ifindex":4,"ifname":"vx1001","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1390,"master":"vmnet1001","address":"e6:10:3f:88:99:e8","linkinfo":{"info_kind":"vxlan","info_data":{"id":1001,"local":"100.64.0.1","port":4789,"learning":false},"info_slave_kind":"bridge"},"addr_info":[{"family":"inet6","local":"fe80::e410:3fff:fe88:99e8","prefixlen":64}]},
{"ifindex":5,"ifname":"vx77","flags":["BROADCAST","MULTICAST"],"mtu":1390,"master":"vmnet77","linkinfo":{"info_kind":"vxlan","info_data":{"id":77,"local":"100.64.0.1","port":4789,"learning":false}},"addr_info":[]},
{"ifindex":6,"ifname":"vmnet77","flags":["BROADCAST","MULTICAST"],"mtu":1390,"linkinfo":{"info_kind":"bridge"},"addr_info":[]}]`;

const spec: NetworkSpec = {
  networkId: "a",
  vni: 1001,
  mode: "wireguard",
  vxlan: { name: "vx1001", vni: 1001, local: "100.64.0.1", port: 4789, mtu: 1390 },
  bridge: { name: "vmnet1001", mac: "02:6e:67:00:03:e9", address: "10.20.0.1/24", mtu: 1390 },
  fdb: [
    { mac: FLOOD_MAC, dst: "100.64.0.2" },
    { mac: FLOOD_MAC, dst: "100.64.0.3" },
    { mac: "02:00:00:00:00:12", dst: "100.64.0.2" },
  ],
};

describe("vxlan networks", () => {
  it("parses remote FDB entries only", () => {
    expect(parseFdb(FDB)).toEqual([
      { mac: "02:00:00:00:00:12", dst: "100.64.0.2" },
      { mac: FLOOD_MAC, dst: "100.64.0.2" },
      { mac: FLOOD_MAC, dst: "100.64.0.3" },
    ]);
    expect(parseFdb("")).toEqual([]);
  });

  it("diffs FDB: moves a MAC in place, drops stale flood entries, adds new ones", () => {
    const have = parseFdb(FDB);
    expect(planFdb("vx1001", spec.fdb, have)).toEqual([]);
    const want = [{ mac: FLOOD_MAC, dst: "100.64.0.3" }, { mac: "02:00:00:00:00:12", dst: "100.64.0.3" }];
    expect(planFdb("vx1001", want, have).map(describeAction)).toEqual([
      "fdb-del vx1001 00:00:00:00:00:00 100.64.0.2",
      "fdb-add vx1001 02:00:00:00:00:12 100.64.0.3",
    ]);
  });

  it("leaves a matching network alone and removes networks no longer wanted", () => {
    const links = parseLinks(LINKS);
    expect(links.find((l) => l.name === "vx1001")?.vxlan).toEqual({ id: 1001, local: "100.64.0.1", port: 4789, learning: false });
    expect(planNetworks([spec], links, { vx1001: parseFdb(FDB) }).map(describeAction)).toEqual(["link-del vx77", "link-del vmnet77"]);
  });

  it("builds a network from nothing, in dependency order", () => {
    const plan = planNetworks([spec], [], {});
    expect(plan.map(describeAction)).toEqual([
      "link-add-bridge vmnet1001 02:6e:67:00:03:e9 1390",
      "link-set vmnet1001 true",
      "addr-add vmnet1001 10.20.0.1/24",
      "link-add-vxlan vx1001 1001 100.64.0.1 4789 1390",
      "link-set vx1001 vmnet1001 true",
      "fdb-add vx1001 00:00:00:00:00:00 100.64.0.2",
      "fdb-add vx1001 00:00:00:00:00:00 100.64.0.3",
      "fdb-add vx1001 02:00:00:00:00:12 100.64.0.2",
    ]);
    expect(plan.flatMap(actionCommands).map((c) => c.argv.join(" "))).toContain(
      "ip link add vx1001 mtu 1390 type vxlan id 1001 local 100.64.0.1 dstport 4789 nolearning",
    );
    expect(plan.flatMap(actionCommands).map((c) => c.argv.join(" "))).toContain("bridge fdb replace 02:00:00:00:00:12 dev vx1001 dst 100.64.0.2 static");
  });

  it("recreates a VXLAN device whose local address changed, with all its entries", () => {
    const links = parseLinks(LINKS);
    const moved = { ...spec, vxlan: { ...spec.vxlan, local: "10.99.0.1" } };
    const plan = planNetworks([moved], links.filter((l) => !l.name.endsWith("77")), { vx1001: parseFdb(FDB) }).map(describeAction);
    expect(plan.slice(0, 3)).toEqual(["link-del vx1001", "link-add-vxlan vx1001 1001 10.99.0.1 4789 1390", "link-set vx1001 vmnet1001 true"]);
    expect(plan.filter((a) => a.startsWith("fdb-add"))).toHaveLength(3);
  });
});
