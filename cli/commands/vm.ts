// VM commands: create, list, info, destroy, start, stop.
import type { Command } from "commander";
import { HostLossPolicy, isSettled, phaseName, phaseOf, Role, VmEventType, VmPhase, type VmSpec, type WatchVmsResponse } from "../../sdk/index.js";
import type { App } from "../app.js";
import { parseKeyValues, parsePositiveInt, UsageError } from "../parse.js";
import type { View } from "../render.js";
import { vmView } from "../views.js";

const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** Pure: create's flags → the VmSpec to send. */
export function specFromFlags(o: CreateFlags): Partial<VmSpec> {
  const spec: Partial<VmSpec> = {
    vcpus: parsePositiveInt("--vcpus", o.vcpus),
    memoryMb: parsePositiveInt("--memory", o.memory),
    diskGb: parsePositiveInt("--disk", o.disk),
    labels: parseKeyValues("--label", o.label),
    hostSelector: parseKeyValues("--host-label", o.hostLabel),
  };
  if (o.host) spec.host = o.host;
  if (o.driver) spec.driver = o.driver;
  if (o.image) spec.image = o.image;
  if (o.network) spec.network = o.network;
  if (o.networkGroup) spec.networkGroup = o.networkGroup;
  if (o.antiAffinity) spec.antiAffinityGroup = o.antiAffinity;
  if (o.onHostLoss !== undefined || o.hostLossGrace !== undefined) {
    const policies: Record<string, HostLossPolicy> = { keep: HostLossPolicy.HOST_LOSS_POLICY_KEEP, reschedule: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE };
    const policy = o.onHostLoss === undefined ? HostLossPolicy.HOST_LOSS_POLICY_UNSPECIFIED : policies[o.onHostLoss];
    if (policy === undefined) throw new UsageError(`--on-host-loss must be keep or reschedule (got "${o.onHostLoss}")`);
    spec.hostLoss = { policy, graceSeconds: o.hostLossGrace === undefined ? 0 : parsePositiveInt("--host-loss-grace", o.hostLossGrace) };
  }
  return spec;
}

export interface CreateFlags {
  vcpus: string;
  memory: string;
  disk: string;
  host?: string;
  label: string[];
  hostLabel: string[];
  driver?: string;
  image?: string;
  network?: string;
  networkGroup?: string;
  antiAffinity?: string;
  onHostLoss?: string;
  hostLossGrace?: string;
  wait?: boolean;
  waitTimeout: string;
}

const watchView: View<WatchVmsResponse> = {
  toJSON: (ev) => ({ type: VmEventType[ev.type]?.replace(/^VM_EVENT_TYPE_/, ""), vm: ev.vm ? vmView.toJSON(ev.vm) : undefined }),
  columns: [
    { header: "EVENT", value: (ev) => VmEventType[ev.type]?.replace(/^VM_EVENT_TYPE_/, "") ?? "?" },
    ...vmView.columns.map((c) => ({ ...c, value: (ev: WatchVmsResponse, now: Date) => (ev.vm ? c.value(ev.vm, now) : "-") })),
  ],
};

/** Whose VMs `list` shows by default: an admin's own, not everybody's (the server already limits others). */
async function defaultOwner(app: App, o: { allUsers?: boolean; owner?: string }): Promise<string | undefined> {
  if (o.owner) return o.owner;
  if (o.allUsers) return undefined;
  const me = await app.client().whoAmI();
  return me.role === Role.ROLE_ADMIN ? me.user : undefined;
}

export function registerVmCommands(program: Command, app: App): void {
  program
    .command("create")
    .description("create a VM")
    .argument("<name>", "VM name (lower-case letters, digits, '-')")
    .option("--vcpus <n>", "virtual CPUs", "1")
    .option("--memory <mb>", "memory in MiB", "512")
    .option("--disk <gb>", "disk in GiB", "1")
    .option("--host <host>", "pin to this host")
    .option("--label <k=v>", "label on the VM (repeatable)", collect, [])
    .option("--host-label <k=v>", "only hosts with this label (repeatable)", collect, [])
    .option("--driver <driver>", "sandbox, qemu or firecracker")
    .option("--image <image>", "base image (default: the host's)")
    .option("--network <network>", "tenant network (default: yours)")
    .option("--network-group <group>", "only reach VMs of this group")
    .option("--anti-affinity <group>", "spread VMs of this group over distinct hosts")
    .option("--on-host-loss <policy>", "keep (stay UNKNOWN until the host returns) or reschedule (elsewhere after the grace); default: the cluster's")
    .option("--host-loss-grace <seconds>", "seconds a lost host waits before rescheduling (default: the cluster's)")
    .option("--wait", "wait until the VM is RUNNING, STOPPED or FAILED")
    .option("--wait-timeout <seconds>", "how long --wait waits", "300")
    .addHelpText(
      "after",
      `
Examples:
  noidctl create web
  noidctl create db --vcpus 2 --memory 2048 --label tier=db --host-label zone=a --wait
  noidctl create api --network-group production --anti-affinity api`,
    )
    .action(async (name: string, o: CreateFlags) => {
      const client = app.client();
      const vm = await client.createVm(name, specFromFlags(o));
      if (!o.wait) {
        // The leader usually places a VM in its create: say where.
        const on = vm.status?.hostName ? ` on ${vm.status.hostName}` : "";
        app.printResult(`vm/${vm.name} created${on} (${phaseName(phaseOf(vm))})`, vmView, vm);
        return;
      }
      app.note(`vm/${vm.name} created, waiting for it to start...`);
      let last = phaseOf(vm);
      const settled = await client.waitForVm(name, (v) => isSettled(v), {
        timeoutMs: parsePositiveInt("--wait-timeout", o.waitTimeout) * 1000,
        ...(app.signal ? { signal: app.signal } : {}),
        onEvent: (ev) => {
          const p = ev.vm ? phaseOf(ev.vm) : last;
          if (p !== last) app.note(`  ${phaseName(p)}${ev.vm?.status?.reason ? `: ${ev.vm.status.reason}` : ""}`);
          last = p;
        },
      });
      if (phaseOf(settled) === VmPhase.VM_PHASE_FAILED) {
        throw new Error(`vm/${name} failed: ${settled.status?.reason || "no reason given"}`);
      }
      app.printResult(`vm/${name} ${phaseName(phaseOf(settled))} on ${settled.status?.hostName || "-"} ip ${settled.status?.ip || "-"}`, vmView, settled);
    });

  program
    .command("list")
    .alias("ls")
    .description("list VMs (yours by default)")
    .option("-A, --all-users", "VMs of every user (admins)")
    .option("--owner <user>", "VMs of this user (admins)")
    .option("--host <host>", "only VMs on this host")
    .option("-w, --watch", "after the list, stream changes until Ctrl-C")
    .addHelpText(
      "after",
      `
Examples:
  noidctl list
  noidctl list --all-users -o wide
  noidctl list --host hv-1 -o json
  noidctl list --watch`,
    )
    .action(async (o: { allUsers?: boolean; owner?: string; host?: string; watch?: boolean }) => {
      if (o.allUsers && o.owner) throw new UsageError("--all-users and --owner exclude each other");
      const client = app.client();
      const owner = await defaultOwner(app, o);
      if (!o.watch) {
        const vms = await client.listVms({ ...(owner ? { owner } : {}), ...(o.host ? { host: o.host } : {}) });
        app.printList(vmView, [...vms].sort((a, b) => a.name.localeCompare(b.name) || a.owner.localeCompare(b.owner)));
        return;
      }
      // The watch starts with one SNAPSHOT event per VM, so it is the list too.
      let first = true;
      for await (const ev of client.watchVms({ ...(owner ? { owner } : {}), ...(app.signal ? { signal: app.signal } : {}) })) {
        if (o.host && ev.vm?.status?.hostName !== o.host) continue;
        app.printStreamItem(watchView, ev, first);
        first = false;
      }
    });

  program
    .command("info")
    .alias("get")
    .description("show one VM")
    .argument("<name>", "VM name")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText("after", "\nExamples:\n  noidctl info web\n  noidctl info web -o yaml")
    .action(async (name: string, o: { owner?: string }) => {
      app.printOne(vmView, await app.client().getVm(name, o.owner ? { owner: o.owner } : {}));
    });

  registerVmActions(program, app, [
    ["destroy", "destroy a VM and free its resources", "destroyVm", "destroying"],
    ["start", "start a stopped VM", "startVm", "starting"],
    ["stop", "stop a running VM (keeps its disk)", "stopVm", "stopping"],
  ]);
}

/** The SDK methods that act on one VM by name and return it. */
type VmAction = "destroyVm" | "startVm" | "stopVm" | "pauseVm" | "resumeVm" | "restartVm";

/** `noidctl <cmd> NAME [--owner U]` for each [cmd, description, SDK method, "-ing" word]: prints the VM's phase after the call. */
export function registerVmActions(program: Command, app: App, ops: ReadonlyArray<readonly [string, string, VmAction, string]>): void {
  for (const [cmd, description, method, doing] of ops) {
    program
      .command(cmd)
      .description(description)
      .argument("<name>", "VM name")
      .option("--owner <user>", "another user's VM (admins)")
      .addHelpText("after", `\nExamples:\n  noidctl ${cmd} web\n  noidctl ${cmd} web --owner alice`)
      .action(async (name: string, o: { owner?: string }) => {
        const vm = await app.client()[method](name, o.owner ? { owner: o.owner } : {});
        app.printResult(`vm/${vm.name} ${doing} (${phaseName(phaseOf(vm))})`, vmView, vm);
      });
  }
}
