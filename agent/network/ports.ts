// The agent's exposed ports: the coordinator's PortSnapshot + this host's mesh view (each VM's
// address and network) + the network slots egress assigned (its ip rules) -> the spec of
// `ip noid_ports` (ports-ruleset.ts), applied by diff and read back after every pass. A pass
// runs on every new snapshot or mesh view and every `resyncMs`; a change found while nothing
// changed on our side is drift: repaired and reported as a security event ("port-drift").
// After each pass the controller reports which exposures are in place.
import type { Logger } from "../../common/logger.js";
import { NoidError, during } from "../../common/errors.js";
import { type Runner, run as defaultRun } from "../../common/run.js";
import type { SecurityEvent } from "../../gen/noid/v1/agent.js";
import type { PortSnapshot } from "../../gen/noid/v1/port.js";
import { RULE_PREF, slotOfTable } from "./egress-spec.js";
import { parseEgressRules } from "./egress.js";
import type { ObservedRule } from "./egress-spec.js";
import { type HostPort, PORTS_TABLE, type PortsAction, type PortsSpec, appliedPorts, describePortsAction, planPorts, portKey, portsScript } from "./ports-ruleset.js";
import type { MeshView } from "./view.js";

/** Pure: the network slot of each bridge, from our `iif vmnet<vni>` ip rules. */
export function slotsOf(rules: readonly ObservedRule[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const r of rules) {
    const m = r.iif !== undefined && r.pref === RULE_PREF ? /^vmnet(\d+)$/.exec(r.iif) : null;
    const s = slotOfTable(r.table);
    if (m && s !== undefined) out.set(Number(m[1]), s);
  }
  return out;
}

/**
 * Pure: the ports spec of this host. Exposures whose VM is not (yet) on this host's mesh view
 * or whose network has no slot yet are left out (`waiting`): they are applied on a later pass.
 */
export function portsSpecOf(
  snap: PortSnapshot,
  view: Pick<MeshView, "local" | "members" | "selfId"> | undefined,
  slots: ReadonlyMap<number, number>,
  ifs: { uplink: string; wgIfname: string },
): { spec: PortsSpec; waiting: string[] } {
  const ports: HostPort[] = [];
  const waiting: string[] = [];
  for (const p of snap.ports) {
    const a = view?.local.get(p.vmId);
    const slot = a ? slots.get(a.vni) : undefined;
    const proto = p.protocol === "udp" ? "udp" : "tcp";
    if (!a?.ip || slot === undefined) {
      waiting.push(portKey({ protocol: proto, hostPort: p.hostPort, mesh: p.mesh }));
      continue;
    }
    ports.push({ protocol: proto, hostPort: p.hostPort, vmIp: a.ip, vmPort: p.vmPort, slot, mesh: p.mesh });
  }
  const meshIp = view?.members.find((m) => m.hostId === view.selfId)?.meshIp;
  return { spec: { uplink: ifs.uplink, wgIfname: ifs.wgIfname, ...(meshIp ? { meshIp } : {}), ports }, waiting };
}

export interface PortsControllerOptions {
  wgIfname: string;
  /** The uplink (public side), resolved lazily like egress's. */
  uplink: () => Promise<string>;
  onSecurity: (e: Omit<SecurityEvent, "hostId">) => void;
  /** What is applied after each pass: exposure keys, and the last error ("" = none). */
  onApplied: (applied: string[], error: string) => void;
  logger: Logger;
  runner?: Runner;
  resyncMs?: number;
}

/** Apply-and-check rounds in one pass before it gives up (a table changed under it as it works). */
const MAX_ROUNDS = 3;

export class PortsController {
  private snapshot: PortSnapshot | undefined;
  private view: MeshView | undefined;
  /** The spec the last pass left the table at (undefined before one succeeded). */
  private lastSpec: PortsSpec | undefined;
  private lastReport = "";
  private running: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly runner: Runner;

  constructor(private readonly o: PortsControllerOptions) {
    this.runner = o.runner ?? defaultRun;
  }

  start(): void {
    this.timer = setInterval(() => void this.sync(), this.o.resyncMs ?? 10_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.running;
  }

  setSnapshot(s: PortSnapshot): void {
    this.snapshot = s;
    void this.sync();
  }

  /** The TCP ports of a VM that are exposed (its own side): a service there is declared, not a surprise. */
  exposedTcpPorts(vmId: string): number[] {
    return (this.snapshot?.ports ?? []).filter((p) => p.vmId === vmId && p.protocol === "tcp").map((p) => p.vmPort);
  }

  setView(v: MeshView): void {
    this.view = v;
    void this.sync();
  }

  /** Runs a pass (one at a time; a request during a pass runs another after it). Never throws. */
  sync(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.pass();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async list(): Promise<string | undefined> {
    const r = await this.runner(["nft", "-j", "list", "table", "ip", PORTS_TABLE], { allowFail: true });
    return r.exitCode === 0 ? r.stdout : undefined;
  }

  private async pass(): Promise<void> {
    // Before the first snapshot nothing is known: leave whatever is there (an agent restart
    // must not drop exposed connections while it reconnects).
    if (!this.snapshot || this.stopped) return;
    let applied: string[] = [];
    let error = "";
    try {
      const rules = parseEgressRules((await this.runner(["ip", "-j", "rule", "show"])).stdout);
      const uplink = await this.o.uplink();
      const { spec, waiting } = portsSpecOf(this.snapshot, this.view, slotsOf(rules), { uplink, wgIfname: this.o.wgIfname });
      // Drift: the table is not what we last left it as. Compared against the spec the last pass
      // applied, whatever this pass changes besides (a repair in the same pass as a new exposure
      // or mesh change used to go unreported), and against this pass's spec once applied: a rule
      // deleted between our listing and our check is seen there, and repaired in another round
      // (it used to fail the pass as "ports still differ", and the repair went unreported).
      const drift: PortsAction[] = [];
      let expected = this.lastSpec;
      let observed = await this.list();
      const done: PortsAction[] = [];
      for (let round = 0; ; round++) {
        if (expected) drift.push(...planPorts(expected, observed));
        const actions = planPorts(spec, observed);
        if (actions.length === 0) break;
        if (round === MAX_ROUNDS) throw new NoidError("INTERNAL", `ports still differ after apply: ${actions.map(describePortsAction).join("; ")}`);
        await this.apply(actions);
        done.push(...actions);
        observed = await this.list();
        expected = spec;
      }
      applied = appliedPorts(spec, observed);
      if (drift.length > 0) {
        const what = drift.map(describePortsAction);
        this.o.logger.warn({ repaired: what }, "port drift repaired");
        this.o.onSecurity({ vmId: "", kind: "port-drift", count: what.length, detail: `exposed ports repaired: ${what.join("; ")}`.slice(0, 1000) });
      }
      if (done.length > 0) this.o.logger.info({ actions: done.map(describePortsAction) }, "ports applied");
      this.lastSpec = spec;
      if (waiting.length > 0) this.o.logger.debug({ waiting }, "exposures wait for their VM's network");
    } catch (e) {
      error = e instanceof Error ? e.message : String(e);
      // The table may be half way between two specs: the next pass repairs it without calling it drift.
      this.lastSpec = undefined;
      this.o.logger.warn({ err: error }, "applying exposed ports failed; retrying at the next pass");
      applied = [];
    }
    const report = JSON.stringify({ applied, error });
    if (report !== this.lastReport) {
      this.lastReport = report;
      this.o.onApplied(applied, error);
    }
  }

  private async apply(actions: PortsAction[]): Promise<void> {
    try {
      await this.runner(["nft", "-f", "-"], { input: portsScript(actions) });
    } catch (e) {
      throw during(`ports: ${actions.map(describePortsAction).join("; ")}`, e);
    }
  }

  /** Forget the report so that the next pass sends it again (a new session). */
  resendReport(): void {
    this.lastReport = "";
    void this.sync();
  }
}
