// The host-loss controller after a lost race plans again from what etcd holds:
// it waits for its informers to show the keys it raced on. It used to wait for
// etcd's latest revision, which no informer reaches when that write was outside
// their prefixes (an event, an audit record): on a quiet cluster it sat out
// the full timeout, 5 s, before marking a lost host or moving its VMs.
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { HostLossController } from "../../coordinator/controllers/host-loss.js";
import { ClusterState } from "../../coordinator/state/cluster.js";
import { keys } from "../../coordinator/state/keys.js";
import { MemoryStore } from "../../coordinator/store/memory-store.js";
import type { Store } from "../../coordinator/store/store.js";
import { Host } from "../../gen/noid/v1/host.js";
import { seedHosts } from "../helpers/placement.js";
import { until } from "../helpers/until.js";

const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s();
});

describe("host-loss controller after a lost race", () => {
  it("marks a lost host unreachable once its informers show what it raced on, not after a timeout", async () => {
    const mem = new MemoryStore();
    const [h] = await seedHosts(mem, 1, 4);
    await mem.delete(keys.alive(h!)); // its lease ended
    // Just before the controller's first write, someone rewrites the host record (same content)
    // and then writes a key no informer watches: the write loses, and etcd's latest revision is
    // one the informers never see.
    let raced = false;
    const store: Store = Object.assign(Object.create(mem) as Store, {
      txn: async (...a: Parameters<Store["txn"]>) => {
        if (!raced) {
          raced = true;
          await mem.put(keys.host(h!), (await mem.get(keys.host(h!)))!.value);
          await mem.put("events/elsewhere", Buffer.from("x"));
        }
        return mem.txn(...a);
      },
    });
    const cluster = new ClusterState(store, silentLogger());
    const ctl = new HostLossController({ store, cluster, defaults: { policy: "keep", graceSeconds: 60 }, logger: silentLogger(), clock: { now: () => new Date() } });
    stops.push(async () => {
      await ctl.stop();
      await cluster.stop();
    });
    await cluster.start();
    ctl.start();
    await until(async () => Host.decode((await mem.get(keys.host(h!)))!.value).unreachableSince !== undefined, "the host marked unreachable");
    expect(raced).toBe(true);
    expect(ctl.stats).toMatchObject({ conflicts: 1, staleWaits: 0 });
  });
});
