// A typed client for the Firecracker API: HTTP/1.1 with JSON bodies over the unix socket
// Firecracker listens on (--api-sock). One request per connection, no keep-alive: the API
// server is single-threaded and a call is rare, so there is nothing to gain from pooling.
import { request } from "node:http";
import { NoidError } from "../../../common/errors.js";
import type {
  ApiCall,
  BootSource,
  Drive,
  InstanceActionInfo,
  InstanceInfo,
  Logger,
  MachineConfiguration,
  Metrics,
  MmdsConfig,
  NetworkInterface,
  SnapshotCreateParams,
  SnapshotLoadParams,
  VmState,
  Vsock,
} from "./api-types.js";

/** A call the API answered with an error status; `faultMessage` is Firecracker's own words. */
export class FirecrackerApiError extends NoidError {
  constructor(
    readonly call: string,
    readonly status: number,
    readonly faultMessage: string,
  ) {
    // 4xx is Firecracker refusing the request in its current state or for its input.
    super(status >= 400 && status < 500 ? "FAILED_PRECONDITION" : "INTERNAL", `firecracker ${call}: ${status}: ${faultMessage}`);
  }
}

export interface ApiOptions {
  /** Per request (default 10 s); snapshot calls may take long on big guests. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;

export class FirecrackerApi {
  constructor(
    readonly socketPath: string,
    private readonly opts: ApiOptions = {},
  ) {}

  /** Sends one call; resolves with the parsed JSON body (undefined for 204). */
  send<T = undefined>(call: ApiCall, timeoutMs = this.opts.timeoutMs ?? DEFAULT_TIMEOUT_MS): Promise<T> {
    const what = `${call.method} ${call.path}`;
    const payload = call.body === undefined ? undefined : JSON.stringify(call.body);
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          method: call.method,
          path: call.path,
          headers: {
            Accept: "application/json",
            ...(payload !== undefined
              ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) }
              : {}),
          },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            const status = res.statusCode ?? 0;
            let parsed: unknown;
            try {
              parsed = text.length ? JSON.parse(text) : undefined;
            } catch {
              parsed = undefined;
            }
            if (status >= 200 && status < 300) return resolve(parsed as T);
            const fault =
              parsed && typeof parsed === "object" && typeof (parsed as { fault_message?: unknown }).fault_message === "string"
                ? (parsed as { fault_message: string }).fault_message
                : text || "no error message";
            reject(new FirecrackerApiError(what, status, fault));
          });
          res.on("error", (e) => reject(new NoidError("UNAVAILABLE", `firecracker ${what}: ${e.message}`, { cause: e })));
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on("error", (e) =>
        reject(new NoidError("UNAVAILABLE", `firecracker ${what} via ${this.socketPath}: ${e.message}`, { cause: e })),
      );
      req.end(payload);
    });
  }

  describe(): Promise<InstanceInfo> {
    return this.send<InstanceInfo>({ method: "GET", path: "/" });
  }
  putMachineConfig(body: MachineConfiguration): Promise<void> {
    return this.send({ method: "PUT", path: "/machine-config", body });
  }
  putBootSource(body: BootSource): Promise<void> {
    return this.send({ method: "PUT", path: "/boot-source", body });
  }
  putDrive(body: Drive): Promise<void> {
    return this.send({ method: "PUT", path: `/drives/${encodeURIComponent(body.drive_id)}`, body });
  }
  putNetworkInterface(body: NetworkInterface): Promise<void> {
    return this.send({ method: "PUT", path: `/network-interfaces/${encodeURIComponent(body.iface_id)}`, body });
  }
  putVsock(body: Vsock): Promise<void> {
    return this.send({ method: "PUT", path: "/vsock", body });
  }
  putMmdsConfig(body: MmdsConfig): Promise<void> {
    return this.send({ method: "PUT", path: "/mmds/config", body });
  }
  putMmds(contents: Record<string, unknown>): Promise<void> {
    return this.send({ method: "PUT", path: "/mmds", body: contents });
  }
  putLogger(body: Logger): Promise<void> {
    return this.send({ method: "PUT", path: "/logger", body });
  }
  putMetrics(body: Metrics): Promise<void> {
    return this.send({ method: "PUT", path: "/metrics", body });
  }
  action(action_type: InstanceActionInfo["action_type"]): Promise<void> {
    return this.send({ method: "PUT", path: "/actions", body: { action_type } satisfies InstanceActionInfo });
  }
  setVmState(state: VmState["state"]): Promise<void> {
    return this.send({ method: "PATCH", path: "/vm", body: { state } satisfies VmState });
  }
  createSnapshot(body: SnapshotCreateParams, timeoutMs?: number): Promise<void> {
    return this.send({ method: "PUT", path: "/snapshot/create", body }, timeoutMs);
  }
  loadSnapshot(body: SnapshotLoadParams, timeoutMs?: number): Promise<void> {
    return this.send({ method: "PUT", path: "/snapshot/load", body }, timeoutMs);
  }
}
