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
/** The same service behind an interceptor that takes its time with some messages. */
let intercepted: grpc.Server;
let interceptedClient: InstanceType<typeof VmServiceClient>;
/** Turns of the event loop the server's last burst took to leave the stream's buffer. */
let turns = -1;

const watchVms = {
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
  } as unknown as grpc.UntypedServiceImplementation;

async function serve(options: grpc.ServerOptions): Promise<{ server: grpc.Server; client: InstanceType<typeof VmServiceClient> }> {
  const server = new grpc.Server(options);
  server.addService(VmServiceService, watchVms);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { server, client: new VmServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) };
}

beforeAll(async () => {
  installServerStreamWritev();
  ({ server, client } = await serve({}));
  // An interceptor may take its time per message: here every other message waits 5 ms.
  // Handed over all at once, the quick ones would overtake the slow ones.
  const uneven: grpc.ServerInterceptor = (_method, call) =>
    new grpc.ServerInterceptingCall(
      call,
      new grpc.ResponderBuilder()
        .withSendMessage((m, next) => {
          const n = Number(/\d+$/.exec((m as WatchVmsResponse).vm?.id ?? "")?.[0] ?? 0);
          if (n % 2 === 0) setTimeout(() => next(m), 5);
          else next(m);
        })
        .build(),
    );
  ({ server: intercepted, client: interceptedClient } = await serve({ interceptors: [uneven] }));
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
  interceptedClient?.close();
  intercepted?.forceShutdown();
});

function watch(name: string, c = client): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const got: string[] = [];
    const s = c.watchVms({ owner: "", name });
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

  it("behind an interceptor that delays some messages, still arrive complete and in order", async () => {
    expect(await watch("burst", interceptedClient)).toEqual(Array.from({ length: BURST }, (_, i) => `vm-${i}`));
  });

  it("a single message and the end of the stream still arrive", async () => {
    expect(await watch("one")).toEqual(["vm-0"]);
  });
});
