// A server stream with many messages queued hands them all to HTTP/2 in one
// go (coordinator/grpc/stream-writev.ts), instead of one per event-loop turn:
// on a busy coordinator a WatchVms follower saw a burst seconds late. Real
// grpc-js server and client over loopback; what is counted is event-loop
// turns, not time.
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Vm, VmEventType, VmServiceClient, VmServiceService, type WatchVmsRequest, type WatchVmsResponse } from "../../gen/noid/v1/vm.js";
import { installServerStreamWritev } from "../../coordinator/grpc/stream-writev.js";

const BURST = 200;
let server: grpc.Server;
let client: InstanceType<typeof VmServiceClient>;
/** Turns of the event loop the server's last burst took to leave the stream's buffer. */
let turns = -1;

beforeAll(async () => {
  installServerStreamWritev();
  server = new grpc.Server();
  server.addService(VmServiceService, {
    watchVms: (call: grpc.ServerWritableStream<WatchVmsRequest, WatchVmsResponse>) => {
      const n = call.request.name === "one" ? 1 : BURST;
      for (let i = 0; i < n; i++) call.write({ type: VmEventType.VM_EVENT_TYPE_PUT, vm: Vm.fromPartial({ id: `vm-${i}`, name: `n${i}` }) });
      let t = 0;
      const tick = () => {
        if (call.writableLength === 0) {
          turns = t;
          call.end();
        } else {
          t++;
          setImmediate(tick);
        }
      };
      tick();
    },
  } as unknown as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  client = new VmServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
});

function watch(name: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const got: string[] = [];
    const s = client.watchVms({ owner: "", name });
    s.on("data", (m: WatchVmsResponse) => got.push(m.vm?.id ?? "?"));
    s.on("error", reject);
    s.on("end", () => resolve(got));
  });
}

describe("server streams with queued messages", () => {
  it("hand a burst to HTTP/2 within a few turns of the event loop, in order, complete", async () => {
    const got = await watch("burst");
    expect(got).toEqual(Array.from({ length: BURST }, (_, i) => `vm-${i}`));
    // One message per completed write would take about one turn per message.
    expect(turns).toBeGreaterThanOrEqual(0);
    expect(turns).toBeLessThan(10);
  });

  it("a single message and the end of the stream still arrive", async () => {
    expect(await watch("one")).toEqual(["vm-0"]);
  });
});
