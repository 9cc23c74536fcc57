// A runnable tour of the SDK: create a VM, wait until it leaves PENDING (or
// 30 s), list VMs, destroy it.
//
//   NOID_SERVER=localhost:7654 NOID_TOKEN=<64 hex> [NOID_INSECURE=1 | NOID_CA_FILE=ca.pem] \
//     node dist/sdk/examples/create-and-list.js
import { connect, isNoidApiError, phaseName, phaseOf, readCaFile, VmPhase } from "../index.js";

async function main(): Promise<void> {
  const address = process.env["NOID_SERVER"] ?? "localhost:7654";
  const token = process.env["NOID_TOKEN"];
  const caFile = process.env["NOID_CA_FILE"];
  const client = connect({
    address,
    ...(token ? { token } : {}),
    insecure: process.env["NOID_INSECURE"] === "1",
    ...(caFile ? { tls: { caPem: readCaFile(caFile) } } : {}),
  });
  const name = `sdk-example-${Date.now().toString(36)}`;
  try {
    const vm = await client.createVm(name, { vcpus: 1, memoryMb: 256 });
    console.log(`created ${vm.name} (${vm.id}), phase ${phaseName(phaseOf(vm))}`);
    try {
      const settled = await client.waitForVm(name, (v) => phaseOf(v) !== VmPhase.VM_PHASE_PENDING, { timeoutMs: 30_000 });
      console.log(`${name} is ${phaseName(phaseOf(settled))} on ${settled.status?.hostName || "-"}`);
    } catch (e) {
      if (!isNoidApiError(e, "DEADLINE_EXCEEDED")) throw e;
      console.log(`${name} still PENDING after 30 s`);
    }
    for (const v of await client.listVms()) console.log(`  ${v.name}\t${phaseName(phaseOf(v))}\t${v.status?.ip ?? ""}`);
  } finally {
    await client.destroyVm(name).then(
      () => console.log(`destroyed ${name}`),
      (e: unknown) => console.error(`destroying ${name}: ${(e as Error).message}`),
    );
    client.close();
  }
}

main().catch((e: unknown) => {
  console.error(`error: ${(e as Error).message}`);
  process.exitCode = 1;
});
